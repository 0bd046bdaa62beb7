"""Where ``frs teacher-cache`` spends a batch on the GPU machine: a torch.profiler trace of the write loop.

Writes a cache of R50-FPN v2 (random weights, int8) over generated 1333-px images twice: once to warm up, once
under the profiler. Prints the GPU's busy share of the loop (summed kernel and copy time over wall time) and the
operators with the most self CPU and self CUDA time. Example:

    python3 bench/cache_profile.py --work /tmp/profile --out $OUT/cache_profile.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", default="retinanet_resnet50_fpn_v2")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--dtype", default="int8")
    p.add_argument("--workers", type=int, default=12)
    args = p.parse_args()

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoIndex
    from frs_cli.data.synth import SynthConfig, generate, replicate
    from frs_cli.dist import setup
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    data = args.work / "data"
    if not data.exists():
        generate(data, SynthConfig(train=args.images, val=1, size=1333, seed=0, aspect_jitter=True))
        replicate(data, args.repeat)
    index = CocoIndex(data / "annotations" / "instances_train.json")
    torch.manual_seed(0)
    cfg = ModelConfig(arch=args.arch)
    ckpt = args.work / "teacher.pt"
    base = recipe_from_dict({"data": {"root": str(data)}, "geometry": {"min_size": 800, "max_size": 1333}})
    save_model(ckpt, build_detector(cfg, index.num_classes), cfg, index, base.geometry)
    recipe = recipe_from_dict({"data": {"root": str(data)}, "geometry": {"min_size": 800, "max_size": 1333},
                               "teacher": {"arch": args.arch, "weights": str(ckpt)},
                               "cache": {"dtype": args.dtype, "workers": args.workers}})
    ctx = setup()
    write_teacher_cache(recipe, str(args.work / "warm.zarr"), ctx=ctx)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        s = write_teacher_cache(recipe, str(args.work / "profiled.zarr"), ctx=ctx)
        wall = time.perf_counter() - t
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    lines = [f"{device} {time.strftime('%Y-%m-%d')} {args.arch} {args.dtype}",
             f"views {s.views_written}, loop {s.seconds:.2f} s ({s.views_per_second:.1f} views/s), call {wall:.2f} s",
             f"stages {s.stage_seconds}",
             f"GPU busy (kernels + copies) {gpu_us / 1e6:.2f} s = {gpu_us / 1e6 / s.seconds:.0%} of the loop",
             events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60),
             events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60)
             if torch.cuda.is_available() else ""]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
