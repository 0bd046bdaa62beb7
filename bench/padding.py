"""The student's padding with and without batches of one canvas (``train.group_by_canvas``), on the CPU in seconds.

Generates an aspect-jittered synthetic set (images of size x size, size x 3/4 size and 3/4 size x size) and, for
each geometry and batch size, builds the trainer's batches of several epochs twice: plain (the switch off) and
grouped by canvas (on). No image is decoded: a batch's padding follows from its views' geometries. Per setting:

  - padding: the share of a batch tensor's pixels (B x H x W, padded to the largest image as ``collate`` does)
    outside the images' valid (resized) areas, as the mean over batches and as the share of all pixels of all
    batches;
  - own-canvas floor: the share of all pixels that would be padding if every view were padded only to its own
    canvas (what no grouping removes: each view's padding to the stride multiple);
  - canvases per batch: the mean number of distinct canvases (padded sizes) in a batch, and the share of batches
    with more than one (each is one more teacher call, or one more cached-head call, in distillation);
  - the time to compute the canvas table once and one epoch's batches (the sampler's cost).

    python3 bench/padding.py --out docs/results/padding_$(date +%F).json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_name


def batch_pixels(geoms) -> tuple[int, int, int, int]:
    """(pixels of the batch tensor, of the images' valid areas, of their own canvases, distinct canvases)."""
    from frs_cli.data.geometry import batch_padded_size

    h, w = batch_padded_size(geoms)
    valid = sum(g.resized_h * g.resized_w for g in geoms)
    own = sum(g.padded_h * g.padded_w for g in geoms)
    return len(geoms) * h * w, valid, own, len({g.padded_size for g in geoms})


def measure(coco, batch_size: int, grouped: bool, epochs: int, seed: int) -> dict:
    from frs_cli.data.canvas_batches import CanvasBatchSampler, view_canvases
    from frs_cli.data.coco import ViewSampler

    views = ("orig", "hflip")
    t = time.perf_counter()
    canvases = view_canvases(coco, views) if grouped else None
    table_ms = 1e3 * (time.perf_counter() - t)
    sampler = CanvasBatchSampler(ViewSampler(len(coco), views, seed=seed), batch_size, canvases)
    rows, plan_ms = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t = time.perf_counter()
        batches = list(sampler)
        plan_ms.append(1e3 * (time.perf_counter() - t))
        rows += [batch_pixels([coco.geometry_of(p, v) for p, v in b]) for b in batches]
    total, valid, own = (sum(r[i] for r in rows) for i in range(3))
    return {
        "batches": len(rows),
        "batches_per_epoch": len(sampler),
        "padding_mean_per_batch": statistics.fmean(1 - r[1] / r[0] for r in rows),
        "padding_pixel_share": 1 - valid / total,
        "own_canvas_floor_pixel_share": 1 - valid / own,
        "canvases_per_batch": statistics.fmean(r[3] for r in rows),
        "mixed_batch_share": sum(r[3] > 1 for r in rows) / len(rows),
        "canvas_table_ms": table_ms,
        "epoch_plan_ms": statistics.median(plan_ms),
    }


def main() -> None:
    from frs_cli.data.coco import CocoViews
    from frs_cli.data.config import DataConfig
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.data.synth import SynthConfig, generate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=128, help="long side of the synthetic images, px")
    p.add_argument("--seed", type=int, default=0, help="of the synthetic set and of the epochs' order")
    p.add_argument("--batch-sizes", default="8,16")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--geometries", default="128:128,128:213",
                   help="min_size:max_size pairs (size_divisible 32): the demo recipe's 128:128, and 128:213 "
                        "(COCO's 800:1333 ratio, so the short side is what resizes)")
    p.add_argument("--work", default="", help="folder for the synthetic set (default: a temporary one)")
    p.add_argument("--out", default="")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp) / "data"
        if not (root / "annotations" / "instances_train.json").is_file():
            generate(root, SynthConfig(train=args.images, val=1, size=args.size, seed=args.seed, aspect_jitter=True))
        res = {"machine": cpu_name(), "date": time.strftime("%Y-%m-%d"),
               "command": "python3 bench/padding.py " + " ".join(sys.argv[1:]),
               "dataset": {"images": args.images, "size": args.size, "seed": args.seed, "aspect_jitter": True},
               "epochs": args.epochs, "rows": []}
        for pair in args.geometries.split(","):
            lo, hi = (int(x) for x in pair.split(":"))
            coco = CocoViews.from_config(DataConfig(root=str(root)), "train", GeometryConfig(lo, hi, 32))
            sizes = sorted({coco.geometry_of(i, "orig").padded_size for i in range(len(coco))})
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                for grouped in (False, True):
                    row = {"geometry": f"{lo}:{hi}", "canvases": [f"{h}x{w}" for h, w in sizes],
                           "batch_size": batch_size, "group_by_canvas": grouped,
                           **measure(coco, batch_size, grouped, args.epochs, args.seed)}
                    res["rows"].append(row)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['machine']}, {res['date']}: {args.images} images of {args.size} px, aspect-jittered, "
          f"{args.epochs} epochs")
    print("| geometry (canvases) | batch | group_by_canvas | padding, mean per batch | padding, share of all pixels "
          "| own-canvas floor | canvases per batch | batches of > 1 canvas |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['geometry']} ({', '.join(r['canvases'])}) | {r['batch_size']} | {str(r['group_by_canvas']).lower()} "
              f"| {100 * r['padding_mean_per_batch']:.1f} % | {100 * r['padding_pixel_share']:.1f} % "
              f"| {100 * r['own_canvas_floor_pixel_share']:.1f} % | {r['canvases_per_batch']:.2f} "
              f"| {100 * r['mixed_batch_share']:.1f} % |")
    grouped = [r for r in res["rows"] if r["group_by_canvas"]]
    print(f"sampler cost: canvas table {min(r['canvas_table_ms'] for r in grouped):.1f}-"
          f"{max(r['canvas_table_ms'] for r in grouped):.1f} ms once per run, one epoch's batches "
          f"{min(r['epoch_plan_ms'] for r in grouped):.1f}-{max(r['epoch_plan_ms'] for r in grouped):.1f} ms grouped")

if __name__ == "__main__":
    main()
