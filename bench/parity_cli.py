"""Cached FRS = online FRS through the command line, on a set whose batches mix image sizes (issue 12, part 1).

The commands a new user runs: a synthetic set with aspect jitter (three canvases per batch at 128 px), the demo
recipe for one epoch on the original views, a teacher trained one epoch, its cache, then ``frs distill --cache``
and ``frs distill --online`` with the same teacher, seed 0, no flips, every iteration logged. Writes a JSON of
every logged term of both runs and their relative differences; exit 1 if any exceeds 1e-4.

``--scales 96,128``: multi-scale training as the paper's FCOS does it (one short side per image and epoch): the
student's ``train.min_sizes``, and the cache holds the original view at each short side.

    python3 bench/parity_cli.py --work /tmp/parity --out docs/results/parity_cli_2026-12-02.json
    python3 bench/parity_cli.py --work /tmp/parity_ms --scales 96,128 --out docs/results/parity_cli_ms_2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "frs_cli" / "recipes" / "demo.toml"
TERMS_SKIPPED = ("epoch", "iter", "lr", "img_s", "data_wait")


def frs(*args: str) -> None:
    cmd = [sys.executable, "-m", "frs_cli", *args]
    print("+ frs " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def logged(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "iter" in r]


def views_drawn(sizes: list[int]) -> dict[str, int]:
    """How many images each view showed in the runs' epoch: the trainer's sampler (seed 0, no flips), recomputed."""
    from collections import Counter

    from frs_cli.config import load_recipe
    from frs_cli.data.coco import ViewSampler
    from frs_cli.train.loop import training_views

    sampler = ViewSampler(24, training_views(0.0, sizes, load_recipe(RECIPE).geometry), shuffle=True, seed=0)
    sampler.set_epoch(0)
    return dict(Counter(view for _, view in sampler))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--scales", default="", help="short sides for multi-scale training, e.g. 96,128 (the demo "
                                                "geometry's min_size is 128; default: 128 alone)")
    args = p.parse_args()
    w = args.work
    data, teacher, cache = w / "data", w / "teacher", w / "cache.zarr"
    sizes = [int(s) for s in args.scales.split(",") if s]
    views = ["orig"] + [f"orig@{s}" for s in sizes if s != 128]
    common = ["--set", f"data.root={json.dumps(str(data))}", "--set", "train.epochs=1", "--set", "teacher_train.epochs=1",
              "--set", f"cache.views={json.dumps(views)}", "--set", f"train.min_sizes={json.dumps(sizes)}",
              "--device", "cpu"]
    frs("data", "synth", str(data), "--train", "24", "--val", "8", "--size", "128", "--seed", "3", "--aspect-jitter")
    frs("train", "-p", str(RECIPE), "--role", "teacher", "--out", str(teacher), "--no-eval", *common)
    tw = ["--set", f"teacher.weights={json.dumps(str(teacher / 'model_final.pt'))}"]
    frs("teacher-cache", "-p", str(RECIPE), "--out", str(cache), *common, *tw)
    student = ["--set", "train.seed=0", "--set", "train.hflip_prob=0.0", "--set", "train.log_every=1", "--no-eval"]
    frs("distill", "-p", str(RECIPE), "--cache", str(cache), "--out", str(w / "cached"), *common, *tw, *student)
    frs("distill", "-p", str(RECIPE), "--online", "--out", str(w / "online"), *common, *tw, *student)
    rows = []
    worst = 0.0
    for a, b in zip(logged(w / "cached"), logged(w / "online")):
        row = {"iter": a["iter"]}
        for k in (k for k in a if k not in TERMS_SKIPPED):
            rel = abs(a[k] - b[k]) / abs(b[k]) if b[k] else abs(a[k])
            row[k] = {"cached": a[k], "online": b[k], "relative": rel}
            worst = max(worst, rel)
        rows.append(row)
    result = {"views_drawn": views_drawn(sizes), "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, torch on CPU",
              "command": "python3 bench/parity_cli.py --work WORK --out OUT"
                         + (f" --scales {args.scales}" if args.scales else ""),
              "views": views, "min_sizes": sizes, "tolerance": args.tolerance,
              "worst_relative": worst, "iterations": rows,
              "verdict": "met" if worst <= args.tolerance else "missed"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"iter {row['iter']}: " + "  ".join(f"{k} {v['cached']:.6g}/{v['online']:.6g} ({v['relative']:.1e})"
                                                  for k, v in row.items() if k != "iter"))
    print(f"worst relative difference {worst:.2e}: {result['verdict']} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
