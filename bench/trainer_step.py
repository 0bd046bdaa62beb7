"""The step as ``frs train`` and ``frs distill`` run it (``Trainer``, not a bench loop): running one step ahead of
the read-back of the losses, waiting for each step, and with the old wait for the forward pass.

The trainer launches step k, then reads step k-1's losses while the device runs step k (``Trainer.run_epoch``).
This bench times, in the same process over the same data: ``now``, the trainer as it is; ``sync``, the trainer
made to wait for each step before launching the next (a hook that wants the state after every step, as a
checkpoint does: the trainer of ``ccf5e3f``); ``mid_check``, ``sync`` with the objective wrapped so that its
forward ends with ``bool(torch.isfinite(loss))``, the wait for the forward pass of the trainer before ``ccf5e3f``;
and ``no_readback``, which does not read the losses back at all (no wait for the device, no check, losses shown as
0): the bound for any read-back.

Per mode (``plain``: GT only; ``cached``: FRS from a cache of ``--dtype``) and variant, each block is one epoch of
``Trainer.run_epoch`` over the split (one view of each of ``--images`` images, as training draws them; the cache
holds both), the variants in turn, their order reversed every other block. A step's time is
``StepRecord.seconds``: from the end of the previous step to the end of this one, hooks, the loader's wait and
the read-back of the losses included. Each block ends by stopping its trainer's loader workers (a trainer keeps
them from epoch to epoch; eight trainers' idle workers would hold their batches all at once), so the first
``--skip`` steps of each epoch (loader workers starting) are left out. Writes medians, means and the ratios to
--out as JSON. On one GPU:

    python3 bench/trainer_step.py --out $OUT/trainer_step.json --work /tmp/trainer_step

On the CPU, tiny models (seconds): ``python3 bench/trainer_step.py --smoke --out OUT --work DIR``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cached_step import make_data
from speed import ARCH, step_objective

SMOKE = {"teacher": "tiny", "student": "tiny", "images": 8, "distinct": 4, "image_size": 64, "min_size": 64,
         "max_size": 64, "batch": 2, "workers": 0, "blocks": 2, "skip": 0, "dtype": "int8"}
VARIANTS = ("now", "sync", "mid_check", "no_readback")
SYNC = ("sync", "mid_check")  # the variants that wait for each step before launching the next


def mid_step_check(objective):
    """``objective`` whose forward ends with the trainer's old check: the loss's finiteness read on the host, which
    waits for the device to finish the forward pass. Everything else is the objective's own."""
    import torch
    from torch import nn

    class MidStepCheck(nn.Module):
        def __init__(self):
            super().__init__()
            self.objective = objective
            self.checks = 0

        def forward(self, batch, step: int):
            losses = self.objective(batch, step)
            if not bool(torch.isfinite(sum(losses.values()))):
                raise FloatingPointError(f"non-finite loss at iteration {step}")
            self.checks += 1
            return losses

    return MidStepCheck()


class StepTimes:
    """A trainer hook (``run_epoch`` calls only ``wants_state`` and ``after_step``) keeping each step's seconds and
    data wait, but the first ``skip`` of every epoch. It reads only ``trainer.last``: the trainer may run ahead."""

    def __init__(self, skip: int):
        self.skip, self.seconds, self.data = skip, [], []

    def wants_state(self, trainer, step: int) -> bool:
        return False

    def after_step(self, trainer) -> None:
        if trainer.step > self.skip:
            self.seconds.append(trainer.last.seconds)
            self.data.append(trainer.last.data_seconds)


def figures(times: StepTimes) -> dict:
    s = times.seconds
    return {"steps": len(s), "step_ms": 1e3 * statistics.median(s), "step_ms_mean": 1e3 * sum(s) / len(s),
            "data_wait_share": sum(times.data) / sum(s)}


def trainers(args, recipe, coco, store, ctx):
    """Per (mode, variant) a ``Trainer`` over the split and its hooks (the step times first; in ``SYNC`` also
    ``Hook()``, which wants the state after every step): the same student weights (seed 0) in all."""
    import torch

    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.hooks import Hook
    from frs_cli.train.loop import Trainer

    class NoReadback(Trainer):
        def read_losses(self, losses, it):  # no wait for the device: what the step costs without the read-back
            return dict.fromkeys(losses.names, 0.0), 0.0

    out = {}
    for mode in ("plain", "cached"):
        for variant in VARIANTS:
            torch.manual_seed(0)
            student = build_detector(ModelConfig(arch=ARCH[args.student], anchor_size=args.anchor_size),
                                     coco.index.num_classes)
            objective, dataset = step_objective(mode, student, recipe, coco, coco.index.num_classes,
                                                store if mode == "cached" else None)
            kind = NoReadback if variant == "no_readback" else Trainer
            trainer = kind(objective, dataset, recipe.train, ctx, ("orig", "hflip"))
            if variant == "mid_check":
                trainer.model = mid_step_check(trainer.objective)  # what run_step calls
            times = StepTimes(args.skip)
            out[mode, variant] = (trainer, times, [times, Hook()] if variant in SYNC else [times])
    return out


def add_setup_args(p: argparse.ArgumentParser, sizes: tuple[int, int, int]) -> None:
    """``training_setup``'s options on ``p``; ``sizes``: the defaults of --image-size, --min-size, --max-size."""
    p.add_argument("--teacher", default="x101")
    p.add_argument("--student", default="r50")
    p.add_argument("--dtype", default="int8", help="the cache's encoding")
    p.add_argument("--images", type=int, default=256, help="images in the split; an epoch is one view of each")
    p.add_argument("--distinct", type=int, default=32, help="of which generated (the rest are copies)")
    p.add_argument("--image-size", type=int, default=sizes[0])
    p.add_argument("--min-size", type=int, default=sizes[1])
    p.add_argument("--max-size", type=int, default=sizes[2])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=12)


def start(p: argparse.ArgumentParser, argv: list[str] | None, smoke: dict, name: str):
    """``(args, ctx, res)`` of a trainer bench: ``p``'s arguments (with --smoke, ``smoke``'s values and the CPU),
    the process's device context, and the result's header (device, date, torch, the command of ``bench/NAME.py``)."""
    p.add_argument("--smoke", action="store_true", help="tiny models and sizes on the CPU (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in smoke.items():
            setattr(args, k, v)
    args.anchor_size = 16 if args.smoke else 0

    import torch

    from frs_cli.dist import setup

    ctx = setup("cpu" if args.smoke else None)
    res = {"device": torch.cuda.get_device_name(0) if ctx.device.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "command": f"python3 bench/{name}.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "args": {k: str(v) for k, v in vars(args).items()}}
    return args, ctx, res


def training_setup(args, ctx, epochs: int, train: dict | None = None):
    """``(recipe, coco, store)`` of a trainer bench: ``args.images`` generated images (``make_data``; ``distinct``,
    ``image_size``, geometry), a recipe training ``epochs`` epochs (batch, workers, lr, and ``train``'s settings),
    the teacher ``args.teacher`` saved with seed 0's random weights, the student ``args.student``, and that
    teacher's cache of ``args.dtype`` over the split (written once in ``args.work``, both views)."""
    import torch

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    args.work.mkdir(parents=True, exist_ok=True)
    data = make_data(args.work, min(args.distinct, args.images), args.image_size, 2 * args.images, "data")
    base = {"data": {"root": str(data)}, "geometry": {"min_size": args.min_size, "max_size": args.max_size},
            "train": {"batch_size": args.batch, "workers": args.workers, "epochs": epochs, "lr": args.lr,
                      **(train or {})},
            "cache": {"dtype": args.dtype, "batch_size": args.batch, "preload_mb": 0,
                      **({"write_processes": 0} if args.smoke else {})}}
    recipe0 = recipe_from_dict(base)
    coco = CocoViews.from_config(recipe0.data, "train", recipe0.geometry)
    torch.manual_seed(0)
    cfg = ModelConfig(arch=ARCH[args.teacher], anchor_size=args.anchor_size)
    ckpt = args.work / f"{args.teacher}.pt"
    save_model(ckpt, build_detector(cfg, coco.index.num_classes), cfg, coco.index, recipe0.geometry)
    recipe = recipe_from_dict({**base, "teacher": {"arch": cfg.arch, "weights": str(ckpt),
                                                   "anchor_size": args.anchor_size},
                               "student": {"arch": ARCH[args.student], "anchor_size": args.anchor_size}})
    path = str(args.work / f"{args.teacher}_{args.dtype}.zarr")
    if not Path(path).exists():
        write_teacher_cache(recipe, path, ctx=ctx)
    return recipe, coco, TeacherCache(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    add_setup_args(p, (1333, 800, 1333))
    p.add_argument("--blocks", type=int, default=4, help="epochs per (mode, variant), variants in turn")
    p.add_argument("--skip", type=int, default=8, help="steps left out at the start of every epoch")
    p.add_argument("--lr", type=float, default=0.001,
                   help="SGD's base rate. The step's time does not depend on it; at the recipes' 0.01 the random "
                        "student diverged at iteration 403 of 4096 cached views (session 12, call 4)")
    args, ctx, res = start(p, argv, SMOKE, "trainer_step")
    recipe, coco, store = training_setup(args, ctx, args.blocks)
    runs = trainers(args, recipe, coco, store, ctx)
    for block in range(args.blocks):
        order = VARIANTS if block % 2 == 0 else VARIANTS[::-1]
        for mode in ("plain", "cached"):
            for variant in order:
                trainer, _, hooks = runs[mode, variant]
                trainer.epoch, trainer.step = block, 0
                trainer.run_epoch(hooks)
                trainer.stop_workers()  # eight trainers' workers (and the batches they hold) not all kept at once
    # the last step's loss as the hooks saw it: 0 where nothing was read back
    res["rows"] = {f"{m}/{v}": {**figures(t), "last_loss": tr.last.loss} for (m, v), (tr, t, _) in runs.items()}
    res["checks"] = {m: runs[m, "mid_check"][0].model.checks for m in ("plain", "cached")}
    rows = res["rows"]
    res["ratios"] = {
        **{f"{m}: {v} / now": rows[f"{m}/{v}"]["step_ms"] / rows[f"{m}/now"]["step_ms"]
           for m in ("plain", "cached") for v in VARIANTS[1:]},
        **{f"{v}: cached / plain": rows[f"cached/{v}"]["step_ms"] / rows[f"plain/{v}"]["step_ms"] for v in VARIANTS}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    for key, row in rows.items():
        print(f"{key}: {row['step_ms']:.1f} ms median over {row['steps']} steps "
              f"(mean {row['step_ms_mean']:.1f}, data wait {row['data_wait_share']:.1%})", flush=True)
    for key, ratio in res["ratios"].items():
        print(f"{key} = {ratio:.3f}", flush=True)
    return res


if __name__ == "__main__":
    main()
