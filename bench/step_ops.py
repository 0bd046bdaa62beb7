"""How many operations a training step dispatches, plain against cached FRS: what bounds the step on a fast GPU.

On one H200 the cached FRS step is bound by the Python thread that launches its kernels, not by the GPU
(docs/BENCHMARKS.md, session 5: about 1850 kernel launches a plain step, 2400 a cached one, 11-14 ms of GPU
work in a 40-60 ms step). Every aten operation on a CUDA tensor is at least one launch, so the number of
operations a step dispatches is a noise-free, machine-independent measure of that cost; this script counts them
on the CPU (``TorchDispatchMode``), for one batch of one canvas:

- ``plain``: the GT loss step (forward, backward, SGD step) of the student;
- ``cached``: the cached FRS step, ``FRSObjective`` with ``CachedTeacher`` run eagerly (on the CPU, and on CUDA
  with ``distill.cuda_graphs = false``);
- ``teacher_side``: the cached teacher side alone (decoding and the head): on CUDA, with ``distill.cuda_graphs``
  these operations are one graph replay and one copy per input tensor;
- ``frs_extra``: ``cached - plain - teacher_side``, what the valid masks, adapters and both losses add (forward
  and backward).

Counts depend on the architectures and the batch, not on the image size, so small images keep it quick. Run it
on two versions of the package to compare them (``PYTHONPATH`` naming the other checkout's root):

    python3 bench/step_ops.py --out docs/results/step_ops.json --work /tmp/step_ops --label HEAD
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cached_step import batches_for, canvas_of, make_data
from speed import ARCH
from step_breakdown import save_teacher

STEP = 10_000  # past the FRS warm-up


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--pair", default="x101-r50", help="teacher-student")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--label", default="", help="what is measured (a commit); stored with the counts")
    args = p.parse_args(argv)
    args.group_by_canvas = True
    return args


def counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    return Count


def count(fn) -> int:
    mode = counter()
    with mode():
        fn()
    return mode.ops


def run(args) -> dict:
    from frs_cli.cache.reader import CachedViews, TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews, collate
    from frs_cli.dist import setup
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.objectives import CachedTeacher, FRSObjective, GTObjective

    ctx = setup("cpu")
    args.work.mkdir(parents=True, exist_ok=True)
    data = make_data(args.work, args.images, args.image_size, 2 * args.images, "data")
    size = args.image_size
    base = {"data": {"root": str(data)}, "geometry": {"min_size": size * 3 // 4, "max_size": size},
            "cache": {"batch_size": args.batch, "workers": 0, "write_processes": 0, "dtype": args.dtype}}
    coco = CocoViews.from_config(recipe_from_dict(base).data, "train", recipe_from_dict(base).geometry)
    tname, sname = args.pair.split("-")
    ckpt = save_teacher(args.work / f"{tname}.pt", tname, coco, recipe_from_dict(base).geometry)
    recipe = recipe_from_dict({**base, "teacher": {"arch": ARCH[tname], "weights": str(ckpt)}})
    path = args.work / f"{tname}_{args.dtype}.zarr"
    if not path.exists():
        write_teacher_cache(recipe, str(path), ctx=ctx)
    store = TeacherCache(str(path))
    canvas = canvas_of(args, coco)
    keys = next(b for b in batches_for(2 * len(coco), 2 * len(coco) // args.batch, args.batch, canvas)
                if len({canvas(k) for k in b}) == 1)
    batch = collate([CachedViews(coco, store)[k] for k in keys])

    def student():
        torch.manual_seed(0)
        return build_detector(ModelConfig(arch=ARCH[sname]), coco.index.num_classes)

    def step_of(obj):
        obj.train()
        opt = torch.optim.SGD([q for q in obj.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)

        def step():
            loss = sum(obj(batch, STEP).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()  # the momentum buffers exist from the first step on: count a later one
        return step

    side = CachedTeacher.from_cache(store)
    counts = {"plain": count(step_of(GTObjective(student()))),
              "cached": count(step_of(FRSObjective(student(), store.signature, side, recipe.distill))),
              "teacher_side": count(lambda: side(batch, need_logits=True))}
    counts["frs_extra"] = counts["cached"] - counts["plain"] - counts["teacher_side"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False, cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = ""
    import frs_cli

    return {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "label": args.label,
            "package": str(Path(frs_cli.__file__).resolve().parent), "bench_commit": commit,
            "args": {k: str(v) for k, v in vars(args).items()}, "canvas": list(batch.geometries[0].padded_size),
            "levels": len(batch.teacher.features), "ops": counts}


def main() -> None:
    args = parse_args()
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["ops"]))


if __name__ == "__main__":
    main()
