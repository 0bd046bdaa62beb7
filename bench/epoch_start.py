"""What starting the loader anew at every epoch costs ``frs train`` and ``frs distill``, against the trainer's one
loader for the whole run (``RunBatches``: its workers start once and load the next epoch's first batches while the
epoch ends).

Per mode (``plain``: GT only; ``cached``: FRS from a cache of ``--dtype``), whole ``fit`` runs of ``--epochs``
epochs (one view of each of ``--images`` images an epoch, batch ``--batch``, ``--workers`` workers), in turns:
``run``, the trainer as it is; ``per_epoch``, the same with a hook that stops the loader after each epoch
(``Trainer.stop_workers``), so that every epoch starts a new one, as the trainer did before. The order of the two
is reversed every other turn. Per run: its seconds (``fit``'s own), its share of time waiting for data, the
loaders its epochs ran on, and per epoch its wall seconds and its first step's wait for data. Writes medians
(over the epochs after each run's first: the first starts a loader in both), means and the ratios
per_epoch / run to --out as JSON. On one GPU:

    python3 bench/epoch_start.py --out $OUT/epoch_start.json --work /tmp/epoch_start

On the CPU, tiny models (seconds): ``python3 bench/epoch_start.py --smoke --out OUT --work DIR``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import ARCH, step_objective
from trainer_step import add_setup_args, start, training_setup

SMOKE = {"teacher": "tiny", "student": "tiny", "images": 8, "distinct": 4, "image_size": 64, "min_size": 64,
         "max_size": 64, "batch": 2, "workers": 1, "epochs": 2, "turns": 2, "dtype": "int8"}
VARIANTS = ("run", "per_epoch")


class EpochTimes:
    """A trainer hook: each epoch's wall seconds (``before_epoch`` to ``after_epoch``) and its first step's data
    wait; with ``stop`` it also stops the loader's workers after every epoch (the ``per_epoch`` variant)."""

    def __init__(self, stop: bool):
        self.stop, self.seconds, self.first_wait, self._t = stop, [], [], 0.0
        self.loaders, self._last = 0, None  # DataLoaders the epochs ran on (each started its own workers)

    def before_train(self, trainer) -> None:
        pass

    def before_epoch(self, trainer) -> None:
        self._t = time.perf_counter()

    def wants_state(self, trainer, step: int) -> bool:
        return False

    def after_step(self, trainer) -> None:
        if trainer.step == 1:
            self.first_wait.append(trainer.last.data_seconds)
            if self._last is None or self._last() is not trainer.loader:  # a loader, so workers, of its own
                self.loaders += 1
                self._last = weakref.ref(trainer.loader)  # not kept alive (nor its workers) by this hook

    def after_epoch(self, trainer) -> None:
        self.seconds.append(time.perf_counter() - self._t)
        if self.stop:
            trainer.stop_workers()

    def after_train(self, trainer) -> None:
        pass


def summary(runs: list[dict]) -> dict:
    """A variant's runs -> medians and means (the epochs after each run's first: the first starts workers in both)."""
    later = [s for r in runs for s in r["epoch_s"][1:]]
    waits = [w for r in runs for w in r["first_wait_s"][1:]]
    return {"runs": len(runs), "fit_s": statistics.median(r["fit_s"] for r in runs),
            "data_wait_share": statistics.median(r["data_wait_share"] for r in runs),
            "later_epoch_s": statistics.median(later), "later_epoch_s_mean": sum(later) / len(later),
            "later_first_wait_s": statistics.median(waits), "later_first_wait_s_mean": sum(waits) / len(waits)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    add_setup_args(p, (853, 512, 853))
    p.add_argument("--modes", default="plain,cached", help="plain and/or cached (the cache is written either way)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run")
    p.add_argument("--turns", type=int, default=2, help="runs per (mode, variant), the variants in turn")
    p.add_argument("--lr", type=float, default=0.001, help="SGD's base rate (the step's time does not depend on it)")
    args, ctx, res = start(p, argv, SMOKE, "epoch_start")
    res["runs"] = {}

    import torch

    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.loop import fit

    recipe, coco, store = training_setup(args, ctx, args.epochs, {"log_every": 10 ** 6})
    modes = args.modes.split(",")
    for turn in range(args.turns):
        for mode in modes:
            for variant in VARIANTS if turn % 2 == 0 else VARIANTS[::-1]:
                torch.manual_seed(0)
                student = build_detector(ModelConfig(arch=ARCH[args.student], anchor_size=args.anchor_size),
                                         coco.index.num_classes)
                objective, dataset = step_objective(mode, student, recipe, coco, coco.index.num_classes, store)
                times = EpochTimes(stop=variant == "per_epoch")
                out = args.work / "runs" / f"{mode}_{variant}_{turn}"
                out.mkdir(parents=True, exist_ok=True)
                result = fit(objective, dataset, recipe.train, ctx, out, hooks=[times])
                run = {"turn": turn, "fit_s": result.seconds, "data_wait_share": result.data_wait_share,
                       "epoch_s": times.seconds, "first_wait_s": times.first_wait, "loaders": times.loaders}
                res["runs"].setdefault(f"{mode}/{variant}", []).append(run)
                print(json.dumps({"mode": mode, "variant": variant, **run}), flush=True)
    res["rows"] = {k: summary(v) for k, v in res["runs"].items()}
    res["ratios"] = {f"{m}: per_epoch / run, {k}": res["rows"][f"{m}/per_epoch"][k] / res["rows"][f"{m}/run"][k]
                     for m in modes for k in ("fit_s", "later_epoch_s")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["ratios"], indent=1))
    return res


if __name__ == "__main__":
    main()
