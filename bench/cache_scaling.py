"""``frs teacher-cache`` on 1 GPU and on N GPUs (torchrun), same data and teacher: throughput and content.

Writes the same cache with one process and with ``--gpus`` processes, reports views per second for each
(the writer's own loop time, and the command's wall time with start-up), the speed-up, and the largest
absolute difference between the two caches' arrays (float nondeterminism across processes only). With
several ``--cache-dir`` (the work disk, a memory-backed folder) it does so for each, which separates the
writer from the disk it writes to.
Random teacher weights are fine for timing. Example (on a machine with two GPUs):

    python3 bench/cache_scaling.py --work /tmp/scale --out $OUT/cache_scaling.json --gpus 2 --images 400 \
        --cache-dir /tmp/scale --cache-dir /dev/shm
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RECIPE = """
name = "cache-scaling"
[data]
root = {root}
[geometry]
min_size = 800
max_size = 1333
[teacher]
arch = "{arch}"
weights = {weights}
[cache]
views = ["orig", "hflip"]
batch_size = {batch}
workers = {workers}
dtype = "{dtype}"
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--repeat", type=int, default=1, help="copies of the generated images (more views, same cost)")
    p.add_argument("--arch", default="retinanet_resnext101_32x8d_fpn")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=6, help="image-decoding workers per process")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--cache-dir", type=Path, action="append",
                   help="where the caches go (repeatable: e.g. the work disk and /dev/shm); default --work")
    args = p.parse_args()
    import torch

    from frs_cli.cache.backend import ZarrBackend
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews
    from frs_cli.data.synth import SynthConfig, generate, replicate
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    if not data.exists():
        generate(data, SynthConfig(train=args.images, val=1, size=1333, seed=0, aspect_jitter=True))
        replicate(data, args.repeat)
    ckpt = args.work / "teacher.pt"
    base = recipe_from_dict({"data": {"root": str(data)}, "geometry": {"min_size": 800, "max_size": 1333}})
    coco = CocoViews.from_config(base.data, "train", base.geometry)
    torch.manual_seed(0)
    teacher = build_detector(ModelConfig(arch=args.arch), coco.index.num_classes)
    save_model(ckpt, teacher, ModelConfig(arch=args.arch), coco.index, base.geometry)
    recipe = args.work / "recipe.toml"
    recipe.write_text(RECIPE.format(root=json.dumps(str(data)), arch=args.arch, weights=json.dumps(str(ckpt)),
                                    batch=args.batch, workers=args.workers, dtype=args.dtype))
    res = {"device": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    for where in args.cache_dir or [args.work]:
        runs = res["runs"][str(where)] = {}
        for n in (1, args.gpus):
            out = where / f"frs_scaling_{n}.zarr"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   "-m", "frs_cli", "teacher-cache", "--pipeline", str(recipe), "--out", str(out)]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise SystemExit(r.stdout[-2000:] + r.stderr[-3000:])
            m = re.search(r"wrote (\d+) of (\d+) views in ([\d.]+) s", r.stdout)
            views, seconds = int(m.group(1)), float(m.group(3))
            runs[n] = {"views": views, "loop_seconds": seconds, "views_per_s": views / seconds,
                       "wall_seconds": wall, "views_per_s_wall": views / wall}
            print(where, n, runs[n], flush=True)
        one = dict(ZarrBackend(str(where / "frs_scaling_1.zarr")).walk())
        many = dict(ZarrBackend(str(where / f"frs_scaling_{args.gpus}.zarr")).walk())
        worst, differing = 0.0, []
        for name, a in one.items():
            x, y = a[...], many[name][...]
            if x.dtype.kind == "f" or x.dtype.kind == "i" and x.dtype.itemsize == 1:
                worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
            elif not name.endswith("crc") and not np.array_equal(x, y):
                differing.append(name)
        runs["max_abs_difference"] = worst
        runs["other_arrays_differing"] = differing
        runs["speedup_loop"] = runs[args.gpus]["views_per_s"] / runs[1]["views_per_s"]
        runs["speedup_wall"] = runs[args.gpus]["views_per_s_wall"] / runs[1]["views_per_s_wall"]
        print(json.dumps({k: runs[k] for k in ("max_abs_difference", "other_arrays_differing", "speedup_loop",
                                               "speedup_wall")}), flush=True)
        for n in (1, args.gpus):
            shutil.rmtree(where / f"frs_scaling_{n}.zarr")
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
