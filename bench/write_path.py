"""What the teacher-cache write path costs without a teacher: CRC-32, zarr shard writes, plain file writes.

One batch of COCO-sized views (P3-P7 of a padded 800x1088 image, 256 channels, fp16) is checksummed and
written several times into ``--work``: through zarr with one shard per batch (the cache layout), with one
chunk per view, and as plain files. Prints MB/s for each; the plain file write is the disk's ceiling. CPU only.

    python3 bench/write_path.py --work /tmp/write_path
"""

from __future__ import annotations

import argparse
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import zarr

SIZES = [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]  # P3-P7 of 800x1088


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--batch", type=int, default=8, help="views per shard (the cache's batch_size)")
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args()
    b, n = args.batch, args.batch * args.batches
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((b, 256, h, w)).astype(np.float16) for h, w in SIZES]
    mb = args.batches * sum(f.nbytes for f in feats) / 1e6
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    t = time.perf_counter()
    for _ in range(args.batches):
        for f in feats:
            for j in range(b):
                zlib.crc32(np.ascontiguousarray(f[j]).tobytes())
    print(f"{mb:.0f} MB of fp16 features; CRC-32: {mb / (time.perf_counter() - t):.0f} MB/s")

    keys = {"name": "default", "separator": "."}
    for name, shards in (("zarr, one shard per batch", True), ("zarr, one chunk per view", False)):
        g = zarr.open_group(str(args.work / name.replace(" ", "_").replace(",", "")), mode="w")
        arrays = [g.create_array(f"P{3 + i}", shape=(n, 256, h, w), chunks=(1, 256, h, w),
                                 shards=(b, 256, h, w) if shards else None, dtype="float16", compressors=None,
                                 fill_value=0, chunk_key_encoding=keys) for i, (h, w) in enumerate(SIZES)]
        with zarr.config.set({"async.concurrency": 64}):  # as the writer sets it
            t = time.perf_counter()
            for k in range(args.batches):
                for arr, f in zip(arrays, feats):
                    arr[k * b:(k + 1) * b] = f
            print(f"{name}: {mb / (time.perf_counter() - t):.0f} MB/s")

    t = time.perf_counter()
    for k in range(args.batches):
        for i, f in enumerate(feats):
            (args.work / f"raw_{k}_{i}").write_bytes(f.tobytes())
    print(f"plain file writes: {mb / (time.perf_counter() - t):.0f} MB/s")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
