"""What checking each view as it is read costs on the CPU: the stored-CRC comparison and the finiteness check
``TeacherCache.read`` runs (``cache.reader.check_view``), against reading the same view from a local Zarr cache
through zarr-python and with the reader's direct positional reads (``cache.direct``).

Views of a COCO-size image (800x1088 padded, P3-P7, 256 channels) and of the demo's 192 px images, in fp16 and
int8. Each is written to a one-bucket Zarr cache with the writer's layout (one chunk per view, shards of 8),
then read view by view with the check and with it switched off. Example:

    python3 bench/read_check.py --out docs/results/read_check_$(date +%F).json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_name

SHAPES = {"coco_800x1088": [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)],
          "demo_192": [(24, 24), (12, 12), (6, 6), (3, 3), (2, 2)]}


def _write(root: Path, sizes, dtype: str, views: int):
    """A Zarr group with per-level features, scales (int8), masks and the writer's checksums; returns the
    arrays per level and the checksum table."""
    import zarr

    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.shard_writer import view_crc

    g = zarr.open_group(str(root), mode="w")
    levels, crcs = [], np.zeros((views, 2 * len(sizes)), dtype=np.uint32)
    gen = torch.Generator().manual_seed(0)
    for lv, (h, w) in enumerate(sizes):
        enc = FeatureEncoding(dtype)
        data, scale = enc.encode(torch.randn(views, 256, h, w, generator=gen))
        data, mask = enc.to_numpy(data), torch.rand(views, h, w, generator=gen).half().numpy()
        scale = None if scale is None else scale.numpy()
        f = g.create_array(f"P{lv}/features", shape=data.shape, chunks=(1, *data.shape[1:]),
                           shards=(8, *data.shape[1:]), dtype=data.dtype, compressors=None)
        f[...] = data
        m = g.create_array(f"P{lv}/mask", shape=mask.shape, chunks=(1, h, w), shards=(8, h, w), dtype=mask.dtype,
                           compressors=None)
        m[...] = mask
        s = None
        if scale is not None:
            s = g.create_array(f"P{lv}/scale", shape=scale.shape, chunks=(1, 256), shards=(8, 256),
                               dtype=scale.dtype, compressors=None)
            s[...] = scale
        for k in range(views):
            crcs[k, 2 * lv] = view_crc(data[k], None if scale is None else scale[k])
            crcs[k, 2 * lv + 1] = view_crc(mask[k])
        levels.append((f, s, m))
    return levels, crcs


def _time_reads(levels, crcs, dtype: str, check: bool, views: int, repeats: int) -> float:
    """Mean ms per view to read all its arrays (and check them when ``check``)."""
    from frs_cli.cache.checksum import view_crc
    from frs_cli.cache.encoding import FeatureEncoding, finite

    enc = FeatureEncoding(dtype)
    t = time.perf_counter()
    for _ in range(repeats):
        for k in range(views):
            for lv, (f, s, m) in enumerate(levels):
                feats, mask = np.ascontiguousarray(f[k]), np.ascontiguousarray(m[k])
                scale = None if s is None else np.ascontiguousarray(s[k])
                if check:  # what check_view does
                    assert view_crc(feats, scale) == crcs[k, 2 * lv] and view_crc(mask) == crcs[k, 2 * lv + 1]
                    assert enc.finite(feats) and all(finite(a) for a in (scale, mask) if a is not None)
    return (time.perf_counter() - t) / (repeats * views) * 1e3


def _time_check_alone(levels, crcs, dtype: str, views: int, repeats: int) -> float:
    """Mean ms per view for the check alone, on arrays already in memory."""
    from frs_cli.cache.checksum import view_crc
    from frs_cli.cache.encoding import FeatureEncoding, finite

    enc = FeatureEncoding(dtype)
    held = [[(np.ascontiguousarray(f[k]), None if s is None else np.ascontiguousarray(s[k]),
              np.ascontiguousarray(m[k])) for f, s, m in levels] for k in range(views)]
    t = time.perf_counter()
    for _ in range(repeats):
        for k in range(views):
            for lv, (feats, scale, mask) in enumerate(held[k]):
                assert view_crc(feats, scale) == crcs[k, 2 * lv] and view_crc(mask) == crcs[k, 2 * lv + 1]
                assert enc.finite(feats) and all(finite(a) for a in (scale, mask) if a is not None)
    return (time.perf_counter() - t) / (repeats * views) * 1e3


def _direct(root: Path, levels: int, scaled: bool) -> list[tuple]:
    """The arrays ``_write`` wrote, opened for direct reads."""
    from frs_cli.cache.direct import DirectArray

    return [(DirectArray.open(root / f"P{lv}/features"), DirectArray.open(root / f"P{lv}/scale") if scaled else None,
             DirectArray.open(root / f"P{lv}/mask")) for lv in range(levels)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in one DataLoader worker
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizes in SHAPES.items():
            for dtype in ("float16", "int8"):
                root = Path(tmp) / f"{name}_{dtype}.zarr"
                levels, crcs = _write(root, sizes, dtype, args.views)
                direct = _direct(root, len(sizes), dtype == "int8")
                view_bytes = sum(f[0].nbytes + m[0].nbytes + (0 if s is None else s[0].nbytes) for f, s, m in levels)
                _time_reads(levels, crcs, dtype, False, args.views, 1)  # warm the page cache
                plain = _time_reads(levels, crcs, dtype, False, args.views, args.repeats)
                checked = _time_reads(levels, crcs, dtype, True, args.views, args.repeats)
                alone = _time_check_alone(levels, crcs, dtype, args.views, args.repeats)
                direct_read = _time_reads(direct, crcs, dtype, False, args.views, args.repeats)
                direct_checked = _time_reads(direct, crcs, dtype, True, args.views, args.repeats)
                rows.append({"view": name, "dtype": dtype, "view_MB": view_bytes / 1e6, "read_ms": plain,
                             "read_and_check_ms": checked, "check_alone_ms": alone,
                             "direct_read_ms": direct_read, "direct_read_and_check_ms": direct_checked,
                             "check_GB_per_s": view_bytes / 1e6 / alone if alone else None})
                print(json.dumps(rows[-1]))
    from frs_cli.cache.checksum import IMPLEMENTATION

    result = {"machine": f"{cpu_name()}, {os.cpu_count()} cores (shared), one thread", "crc32": IMPLEMENTATION,
              "date": time.strftime("%Y-%m-%d"), "command": "python3 bench/read_check.py --out " + args.out,
              "views": args.views, "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
