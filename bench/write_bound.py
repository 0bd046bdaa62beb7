"""What teacher-cache must write per second to run at a fraction of pure inference, beside what the disk gives.

    python3 bench/write_bound.py --padded 800,1088 --rates DIR_OR_JSON --disk STEP_JSON [--library L] [--out OUT.json]

Bytes per view are the cache's own layout at one padded size (``--padded``): per FPN level (``--strides``, RetinaNet's
P3-P7 by default) the stored features (``FeatureEncoding.stored_channels`` x grid, the encoding's bytes per value),
their float32 per-channel scales when the encoding is scaled, and the float16 mask; ``tests/test_write_speed.py``
checks the figure against the bytes a written cache holds. ``--rates``: ``bench/teacher_cache_rate.py`` results (a
file, or every ``tcr_*.json`` of a folder): each teacher's median pure-inference rate and measured write rates.
``--disk``: a ``bench/cached_step.py`` result, whose ``disk.write_mb_s`` is the disk's sequential write with fsync.

A cache larger than the page cache can absorb (COCO: about 236 000 views) is written at most at the disk's rate,
so ``disk_views_s = disk MB/s / MB per view`` caps teacher-cache whatever the software does; ``need_mb_s`` is what
``--fraction`` (0.9) of inference needs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.data.geometry import level_grid_size


def mb_per_view(padded: tuple[int, int], dtype: str, channels: int = 256, strides=(8, 16, 32, 64, 128)) -> float:
    """MB (1e6 bytes) one view occupies in a cache of ``dtype`` at ``padded`` (features, scales, masks)."""
    enc = FeatureEncoding(dtype)
    nbytes = 0
    for s in strides:
        h, w = level_grid_size(padded, int(s).bit_length() - 1)  # strides are powers of two
        nbytes += enc.stored_channels(channels) * h * w * np.dtype(enc.numpy_dtype).itemsize
        nbytes += 4 * channels if enc.scaled else 0
        nbytes += 2 * h * w
    return nbytes / 1e6


def load_rates(source: Path, library: str = "") -> dict[str, dict]:
    """Per teacher: median inference img/s and, per dtype, the median measured write views/s over the results
    (in a folder of ``bench/library_ab.py`` turns, only ``tcr_*_<library>.json`` when ``library`` is given)."""
    files = sorted(source.glob(f"tcr_*_{library}.json" if library else "tcr_*.json")) if source.is_dir() else [source]
    if not files:
        raise SystemExit(f"write_bound: expected teacher_cache_rate results (tcr_*.json) in {source}, found none")
    inference: dict[str, list[float]] = {}
    writes: dict[tuple[str, str], list[float]] = {}
    for f in files:
        for teacher, t in json.loads(f.read_text())["teachers"].items():
            inference.setdefault(teacher, []).append(t["inference_img_s"])
            for dtype, variants in t["caches"].items():
                writes.setdefault((teacher, dtype), []).extend(r["views_s"] for r in variants.values())
    return {teacher: {"inference_img_s": statistics.median(rates),
                      "write_views_s": {d: statistics.median(v) for (t, d), v in writes.items() if t == teacher}}
            for teacher, rates in inference.items()}


def bounds(padded, rates: dict, disk_mb_s: float, dtypes, fraction: float = 0.9) -> list[dict]:
    rows = []
    for teacher, r in rates.items():
        for dtype in dtypes:
            mb = mb_per_view(padded, dtype)
            disk_views = disk_mb_s / mb
            measured = r["write_views_s"].get(dtype)
            rows.append({"teacher": teacher, "dtype": dtype, "mb_per_view": mb, "inference_img_s": r["inference_img_s"],
                         "need_mb_s": fraction * r["inference_img_s"] * mb, "disk_write_mb_s": disk_mb_s,
                         "disk_views_s": disk_views, "disk_over_inference": disk_views / r["inference_img_s"],
                         "disk_allows_target": disk_views >= fraction * r["inference_img_s"],
                         "measured_views_s": measured,
                         "measured_mb_s": None if measured is None else measured * mb})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--padded", required=True, help="padded image size H,W")
    ap.add_argument("--rates", type=Path, required=True)
    ap.add_argument("--disk", type=Path, required=True)
    ap.add_argument("--library", default="", help="in a folder of A/B turns, only this version's results")
    ap.add_argument("--dtypes", default="int8,int5,float16")
    ap.add_argument("--fraction", type=float, default=0.9)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    padded = tuple(int(x) for x in args.padded.split(","))
    disk = json.loads(args.disk.read_text())["disk"]["write_mb_s"]
    rows = bounds(padded, load_rates(args.rates, args.library), disk, args.dtypes.split(","), args.fraction)
    if args.out:
        args.out.write_text(json.dumps({"padded": padded, "fraction": args.fraction, "rates": str(args.rates),
                                        "library": args.library, "disk": str(args.disk), "rows": rows}, indent=1))
    print(f"| teacher | dtype | MB per view at {padded[0]}x{padded[1]} | inference img/s | MB/s for {args.fraction}x "
          "inference | disk write MB/s | views/s the disk allows (/ inference) | measured views/s (MB/s), page cache |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        measured = "–" if r["measured_views_s"] is None else f"{r['measured_views_s']:.0f} ({r['measured_mb_s']:.0f})"
        print(f"| {r['teacher']} | {r['dtype']} | {r['mb_per_view']:.2f} | {r['inference_img_s']:.0f} | "
              f"{r['need_mb_s']:.0f} | {r['disk_write_mb_s']:.0f} | {r['disk_views_s']:.0f} "
              f"({r['disk_over_inference']:.2f}) | {measured} |")


if __name__ == "__main__":
    main()
