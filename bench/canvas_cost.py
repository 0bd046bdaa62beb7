"""What running the teacher side per canvas costs (issue 12): a batch of COCO-sized views of several canvases.

Times, per batch: the live teacher on the batch canvas (one call, what online FRS did before) against one call
per canvas (``OnlineTeacher``, what a cache holds); and the cached head on the batch grid against per canvas
(``CachedTeacher``). Median of ``--reps`` timed repetitions after warm-up, CUDA events, bf16 autocast.

    python3 bench/canvas_cost.py --arch retinanet_resnet50_fpn_v2 --out $OUT/canvas_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timed(fn, reps: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.data.coco import Batch
    from frs_cli.data.geometry import GeometryConfig, compute_geometry
    from frs_cli.data.targets import CachedTargets
    from frs_cli.data.transforms import pad_batch
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.objectives import CachedTeacher, OnlineTeacher, teacher_autocast

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="retinanet_resnet50_fpn_v2")
    p.add_argument("--classes", type=int, default=91)
    p.add_argument("--sizes", default="480x640,640x480,427x640,640x427,480x640,640x512,500x375,375x500",
                   help="original HxW of the batch's images (COCO-like; resized by the geometry)")
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default="")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    teacher = build_detector(ModelConfig(arch=args.arch), args.classes).to(device).eval().requires_grad_(False)
    geo = GeometryConfig(args.min_size, args.max_size, 32)
    geoms = [compute_geometry(*map(int, s.split("x")), geo) for s in args.sizes.split(",")]
    images = [torch.randint(0, 256, (3, g.resized_h, g.resized_w), dtype=torch.uint8) for g in geoms]
    canvas = (max(g.padded_h for g in geoms), max(g.padded_w for g in geoms))
    batch = Batch(pad_batch(images, canvas), [g.valid_size for g in geoms], [], list(range(len(geoms))), geoms).to(device)
    online = OnlineTeacher(teacher)

    def batch_canvas():
        with torch.no_grad(), teacher_autocast(device, True):
            return teacher(batch.images, batch.image_sizes, detect=False)

    out = batch_canvas()
    feats = [f.to(torch.float16) for f in out.features]
    batch.teacher = CachedTargets(feats, [torch.zeros(f.shape[0], *f.shape[-2:], device=device) for f in feats])
    cached = CachedTeacher(teacher.cls_head(), teacher.strides, FeatureEncoding("float16"), autocast=True)
    head = teacher.cls_head()

    def head_on_batch_grid():
        with torch.no_grad(), teacher_autocast(device, True):
            return head([f.float() for f in feats])

    res = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d"),
        "arch": args.arch, "batch": len(geoms), "batch_canvas": list(canvas),
        "canvases": sorted({f"{g.padded_h}x{g.padded_w}" for g in geoms}),
        "padded_pixels_share_batch_canvas": 1 - sum(g.resized_h * g.resized_w for g in geoms) / (len(geoms) * canvas[0] * canvas[1]),
        "ms_teacher_on_batch_canvas": timed(batch_canvas, args.reps, device),
        "ms_teacher_per_canvas": timed(lambda: online(batch, need_logits=True), args.reps, device),
        "ms_head_on_batch_grid": timed(head_on_batch_grid, args.reps, device),
        "ms_head_per_canvas": timed(lambda: cached(batch, need_logits=True), args.reps, device),
        "command": "python3 bench/canvas_cost.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                              if k != "out"),
    }
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
