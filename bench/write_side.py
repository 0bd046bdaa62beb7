"""What one teacher-cache writer process can write, and what several write together, without a teacher.

A batch of COCO-sized views in the cache's own layout (P3-P7 of a padded 800x1088 image, 256 channels, int8
features with float32 scales, or packed int5, float16 masks) lies in a shared-memory slot as the writer
processes receive it. Each mode writes ``--batches`` such batches per process, in ``P`` processes at once
(``--processes``), into a fresh folder under ``--work``, and reports the MB/s of them all together:

- ``write_rows``: ``frs_cli.cache.shard_writer.write_rows`` into a zarr group laid out as a cache bucket (one
  shard per batch per array, the per-view checksums and done flags): what a writer process does per batch, with
  its arrays opened and zarr set up as the ``frs_cli`` on the path does it;
- ``zarr``: the same zarr shard writes without the checksums;
- ``crc``: the per-view checksums alone (``view_crc``, ``checksum.IMPLEMENTATION`` says which CRC-32);
- ``writev_shm``: each array's bytes written from the slot to one file with ``os.writev`` (the disk's and the
  page cache's share, no encoding);
- ``writev_private``: the same from a private copy of the batch (whether the slot's pages are the slow part);
- ``writev_pinned``: ``writev_shm`` with the slot registered with CUDA as page-locked memory by the parent, as
  teacher-cache registers its slots on a GPU (skipped without CUDA).

Between modes the files are deleted (their pages are dropped unwritten). CPU only; on the GPU machine about
a minute at the defaults:

    python3 bench/write_side.py --work /tmp/write_side --out write_side.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

GRIDS = [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]  # P3-P7 of 800x1088
NAMES = ["P3", "P4", "P5", "P6", "P7"]
MODES = ("write_rows", "zarr", "crc", "writev_shm", "writev_private", "writev_pinned")


def layout(dtype: str, batch: int):
    """The slot layout of one batch (``shard_writer.Layout``) and the stored features' dtype and channels."""
    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.shard_writer import Layout, batch_dtypes

    enc = FeatureEncoding(dtype)
    c = enc.stored_channels(256)
    dts = batch_dtypes(len(GRIDS), enc.numpy_dtype, enc.scaled)
    shapes = []
    for h, w in GRIDS:
        shapes.append((batch, c, h, w))
        if enc.scaled:
            shapes.append((batch, 256))
    shapes += [(batch, h, w) for h, w in GRIDS]
    return Layout.of(list(zip(shapes, dts)), enc.scaled), enc, c


def make_bucket(path: Path, enc, c: int, rows: int, batch: int):
    """A zarr group holding one cache bucket's arrays as the writer creates them (shards of ``batch`` views)."""
    import zarr

    from frs_cli.cache.store import codec

    keys = {"name": "default", "separator": "."}
    root = zarr.open_group(str(path), mode="w")
    g = root.require_group("buckets").require_group("b")
    for name, (h, w) in zip(NAMES, GRIDS):
        lg = g.require_group(name)
        lg.create_array("features", shape=(rows, c, h, w), chunks=(1, c, h, w), shards=(batch, c, h, w),
                        dtype=enc.numpy_dtype, compressors=codec("none"), fill_value=0, chunk_key_encoding=keys)
        if enc.scaled:
            lg.create_array("scale", shape=(rows, 256), chunks=(1, 256), shards=(batch, 256), dtype="float32",
                            compressors=None, fill_value=0, chunk_key_encoding=keys)
        lg.create_array("mask", shape=(rows, h, w), chunks=(1, h, w), shards=(batch, h, w), dtype="float16",
                        compressors=None, fill_value=0, chunk_key_encoding=keys)
    g.create_array("done", shape=(rows,), chunks=(batch,), dtype="uint8", compressors=None, fill_value=0,
                   chunk_key_encoding=keys)
    g.create_array("crc", shape=(rows, 2 * len(GRIDS)), chunks=(batch, 2 * len(GRIDS)), dtype="uint32",
                   compressors=None, fill_value=0, chunk_key_encoding=keys)


def _worker(mode: str, dtype: str, batch: int, batches: int, first: int, work: str, shm_name: str, start, out):
    import zarr

    from frs_cli.cache.checksum import view_crc
    from frs_cli.cache.shard_writer import split_batch, write_rows

    try:  # as this version of the writer process opens its arrays and sets zarr up
        from frs_cli.cache.shard_writer import WRITE_CONFIG, OpenArrays
    except ImportError:  # a version before them
        WRITE_CONFIG, OpenArrays = {"async.concurrency": 64}, lambda root: root

    lay, enc, _ = layout(dtype, batch)
    shm = shared_memory.SharedMemory(name=shm_name)
    arrays = lay.views(shm.buf)
    if mode == "writev_private":
        arrays = [a.copy() for a in arrays]
    feats, scales, masks = split_batch(arrays, len(GRIDS), enc.scaled)
    root = OpenArrays(zarr.open_group(work, mode="r+")) if mode in ("write_rows", "zarr") else None
    folder = Path(work) / f"raw_{first}"
    folder.mkdir(parents=True, exist_ok=True)
    start.wait()
    t0 = time.perf_counter()
    with zarr.config.set(WRITE_CONFIG):
        for k in range(batches):
            rows = list(range((first + k) * batch, (first + k + 1) * batch))
            if mode == "write_rows":
                write_rows(root, "b", rows, NAMES, feats, scales, masks)
            elif mode == "zarr":
                for name, f, sc, m in zip(NAMES, feats, scales, masks):
                    root[f"buckets/b/{name}/features"][rows[0]:rows[-1] + 1] = f
                    if sc is not None:
                        root[f"buckets/b/{name}/scale"][rows[0]:rows[-1] + 1] = sc
                    root[f"buckets/b/{name}/mask"][rows[0]:rows[-1] + 1] = m
            elif mode == "crc":
                for f, sc, m in zip(feats, scales, masks):
                    for j in range(batch):
                        view_crc(f[j], None if sc is None else sc[j])
                        view_crc(m[j])
            else:
                for i, a in enumerate(arrays):
                    fd = os.open(folder / f"{k}_{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                    try:
                        view = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
                        while view.nbytes:
                            view = view[os.writev(fd, [view]):]
                    finally:
                        os.close(fd)
    out.put(time.perf_counter() - t0)
    del arrays, feats, scales, masks
    shm.close()


def run(mode: str, dtype: str, processes: int, batch: int, batches: int, work: Path) -> dict:
    """``processes`` processes each writing ``batches`` batches in ``mode`` at once: the MB/s of them all."""
    lay, enc, c = layout(dtype, batch)
    shutil.rmtree(work, ignore_errors=True)
    make_bucket(work, enc, c, processes * batches * batch, batch)
    shm = shared_memory.SharedMemory(create=True, size=lay.nbytes)
    rng = np.random.default_rng(0)
    np.frombuffer(shm.buf, dtype=np.uint8)[:] = rng.integers(0, 256, lay.nbytes, dtype=np.uint8)
    pinned = None
    if mode == "writev_pinned":
        import torch

        pinned = torch.frombuffer(shm.buf, dtype=torch.uint8)
        assert torch.cuda.cudart().cudaHostRegister(pinned.data_ptr(), pinned.numel(), 0) == 0, "cudaHostRegister"
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(mode, dtype, batch, batches, i * batches, str(work), shm.name,
                                               start, out)) for i in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    seconds = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    if pinned is not None:
        import torch

        torch.cuda.cudart().cudaHostUnregister(pinned.data_ptr())
        del pinned
    shm.close()
    shm.unlink()
    shutil.rmtree(work, ignore_errors=True)
    mb = processes * batches * lay.nbytes / 1e6
    return {"mode": mode, "dtype": dtype, "processes": processes, "batch": batch, "batches_per_process": batches,
            "mb": mb, "wall_s": wall, "mb_s": mb / wall, "views_s": processes * batches * batch / wall,
            "per_process_mb_s": [batches * lay.nbytes / 1e6 / s for s in seconds]}


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON with one row per mode, dtype and process count")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--dtypes", default="int8,int5")
    p.add_argument("--processes", default="1,4,8")
    p.add_argument("--batch", type=int, default=8, help="views per batch (the cache's batch_size)")
    p.add_argument("--batches", type=int, default=12, help="batches per process")
    args = p.parse_args()
    from frs_cli.cache.checksum import IMPLEMENTATION

    rows = []
    for dtype in args.dtypes.split(","):
        for n in (int(x) for x in args.processes.split(",")):
            for mode in args.modes.split(","):
                if mode == "writev_pinned" and not _cuda():
                    continue
                row = run(mode, dtype, n, args.batch, args.batches, args.work)
                row["crc32"] = IMPLEMENTATION
                rows.append(row)
                print(f"{dtype:7s} {mode:15s} x{n}: {row['mb_s']:7.0f} MB/s  {row['views_s']:6.0f} views/s", flush=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
