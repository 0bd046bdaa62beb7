"""The paper's claim, in small, on GPUs: one teacher, then students trained the same way but for the teacher side.

One self-contained run (the GPU machines keep nothing between commands):
  1. generate the synthetic benchmark (COCO format);
  2. train the teacher (DDP over all GPUs);
  3. cache it (train split, orig + hflip; and the val split, for mask pictures and statistics);
  4. train students with one schedule, the variants and seeds of ``--plan``, side by side on the GPUs:
       a  the student alone (baseline)            b  FRS from the cache
       c  FRS online (teacher every step)         d  feature imitation inside GT boxes only (S = 1 in boxes)
     every student logs every iteration (spikes show there); ``--set`` adds settings to every student,
     ``--variant NAME=...`` to the runs of a plan token ``X+NAME`` (e.g. a longer warm-up, a short probe);
  5. write summary.json (metrics, per-epoch mAP, wall times, each run's largest value of every loss term),
     mask panels and mask statistics under --out. ``bench/claim_verdicts.py`` computes the verdicts.

Every stage is the frs command line; this script only orders the runs and collects results. Example:

    python3 bench/frs_claim.py --out $OUT/claim --work /tmp/claim --gpus 1 --deadline 560 \
        --plan "b=0,1,2,3,4 c=0,1,2,3,4 a=0,1,2 d=0,1,2"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """
name = "claim"
[data]
root = {root}
[geometry]
min_size = {size}
max_size = {size}
size_divisible = 32
[teacher]
arch = "{teacher}"
anchor_size = {anchor}
[student]
arch = "{student}"
anchor_size = {anchor}
[teacher_train]
epochs = {teacher_epochs}
batch_size = {teacher_batch}
lr = {lr}
warmup_iters = 100
lr_steps = {teacher_steps}
grad_clip = 35.0
workers = 8
eval_every = 0
log_every = 10
[train]
epochs = {student_epochs}
batch_size = {batch}
lr = {student_lr}
warmup_iters = 100
lr_steps = {student_steps}
grad_clip = 35.0
workers = 2
eval_every = {eval_every}
log_every = 1
[distill]
alpha = 0.005
beta = 0.02
warmup_iters = {distill_warmup}
[cache]
views = ["orig", "hflip"]
batch_size = 64
workers = 8
preload_mb = 16000
"""

STUDENTS = {
    "a_alone": ["train", "--role", "student"],
    "b_frs_cache": ["distill", "--cache", "{cache}"],
    "c_frs_online": ["distill", "--online"],
    "d_gt_boxes": ["distill", "--cache", "{cache}", "--set", 'distill.mask="gt"'],
}


def parse_plan(text: str, variants: dict[str, list[str]] | None = None, in_order: bool = False
               ) -> list[tuple[str, int]]:
    """``"b=0,1 c=0,1 a=0"`` -> ``[(name, seed)]``, seeds round-robin across the variants (so a cut run still
    pairs), or token by token with ``in_order``. ``b+NAME=4`` is variant b with the settings ``variants[NAME]``
    added; its runs are named ``b_frs_cache+NAME``."""
    variants = variants or {}
    by_kind = {}
    for part in text.split():
        kind, seeds = part.split("=")
        kind, _, extra = kind.partition("+")
        names = [n for n in STUDENTS if n.startswith(kind + "_")]
        if len(names) != 1:
            raise SystemExit(f"--plan: expected variants among {sorted(n[0] for n in STUDENTS)}, got {kind!r}")
        if extra and extra not in variants:
            raise SystemExit(f"--plan: expected a --variant named {extra!r}, got only {sorted(variants)}")
        by_kind[names[0] + (f"+{extra}" if extra else "")] = [int(x) for x in seeds.split(",") if x]
    if in_order:
        return [(name, seed) for name, seeds in by_kind.items() for seed in seeds]
    jobs, depth = [], max(len(v) for v in by_kind.values())
    for i in range(depth):
        jobs += [(name, seeds[i]) for name, seeds in by_kind.items() if i < len(seeds)]
    return jobs


def parse_variants(texts: list[str]) -> dict[str, list[str]]:
    """``["fw300=distill.warmup_iters=300;train.epochs=4"]`` -> ``{"fw300": ["distill.warmup_iters=300", ...]}``."""
    out = {}
    for text in texts:
        name, sep, sets = text.partition("=")
        if not sep or not name.isidentifier() or not sets:
            raise SystemExit(f"--variant: expected NAME=KEY=VALUE[;KEY=VALUE...], got {text!r}")
        out[name] = [kv for kv in sets.split(";") if kv]
    return out


def loss_peaks(metrics: Path) -> dict:
    """Each loss term's largest value and, for the FRS terms, the worst ratio to the median of the 50 iterations
    before it (a spike: above 3x)."""
    import statistics

    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    rows = [r for r in rows if "iter" in r]
    terms = [k for k in rows[0] if k not in ("epoch", "iter", "lr", "img_s", "data_wait")] if rows else []
    out = {"max": {k: max(r[k] for r in rows) for k in terms}, "spike_ratio": {}}
    for k in (t for t in terms if t.startswith("frs_")):
        values = [r[k] for r in rows]
        ratios = [values[i] / statistics.median(values[i - 50:i]) for i in range(50, len(values))
                  if statistics.median(values[i - 50:i]) > 0]
        worst = max(range(len(ratios)), key=ratios.__getitem__) if ratios else None
        out["spike_ratio"][k] = {"ratio": ratios[worst], "iter": rows[worst + 50]["iter"]} if ratios else None
    return out


def lr_steps(epochs: int) -> list[int]:
    """The official 2x schedule's decays (epochs 16 and 22 of 24), scaled to ``epochs``."""
    return sorted({max(1, round(epochs * 16 / 24)), max(1, round(epochs * 22 / 24))})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def frs(args, gpus: str, logfile: Path, nproc: int = 1, probe: Path | None = None) -> subprocess.Popen:
    """Start one frs command; with ``probe``, through bench/sharpness_probe.py logging to that file."""
    # Several processes share the host: cap each one's CPU threads (its GPU work needs few).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    if probe is not None:
        cmd = [sys.executable, str(Path(__file__).with_name("sharpness_probe.py")), "--log", str(probe), "--", *args]
    elif nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "frs_cli", *args]
    else:
        cmd = [sys.executable, "-m", "frs_cli", *args]
    log(" ".join(cmd[1:]) + f"  (GPUs {gpus})")
    return subprocess.Popen(cmd, env=env, stdout=open(logfile, "w"), stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, logfile: Path) -> None:
    if proc.wait() != 0:
        print(logfile.read_text()[-4000:])
        raise SystemExit(f"failed: {logfile}")


def history(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "eval" in d:
            out.append({"epoch": d["epoch"], **d["eval"]})
    return out


def throughput(run: Path) -> float:
    speeds = [json.loads(x).get("img_s") for x in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [s for s in speeds if s]
    return sorted(speeds)[len(speeds) // 2] if speeds else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="small results (copied back)")
    p.add_argument("--work", type=Path, required=True, help="data, checkpoints, caches")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--teacher", default="retinanet_resnet34_fpn_v2")
    p.add_argument("--student", default="retinanet_resnet18_fpn_v2")
    p.add_argument("--anchor", type=int, default=16)
    p.add_argument("--min-object", type=float, default=10.0, help="smallest object diameter, px")
    p.add_argument("--eval-every", type=int, default=2, help="student val mAP every this many epochs")
    p.add_argument("--teacher-epochs", type=int, default=36)
    p.add_argument("--student-epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=64, help="images per step (per GPU)")
    p.add_argument("--lr", type=float, default=0.04, help="the teacher's LR")
    p.add_argument("--student-lr", type=float, default=0.02,
                   help="the students' LR: 0.02 at batch 64 keeps every run stable (docs/RESULTS.md 2c-2e)")
    p.add_argument("--distill-warmup", type=int, default=200,
                   help="FRS warm-up, iterations: ending after the students' 100-iteration LR warm-up keeps the "
                        "worst seed near the mean (docs/RESULTS.md 2e)")
    p.add_argument("--plan", default="b=0,1,2,3,4 c=0,1,2,3,4 a=0,1,2 d=0,1,2",
                   help="variants (a alone, b cache, c online, d GT boxes) and their seeds")
    p.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for every student")
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   help="NAME=KEY=VALUE[;KEY=VALUE...]: settings a plan token X+NAME adds to variant X")
    p.add_argument("--sharpness", action="store_true",
                   help="log the feature term's sharpness bounds of every distilling student (bench/sharpness_probe.py)")
    p.add_argument("--in-order", action="store_true", help="start the plan's runs token by token, not round-robin")
    p.add_argument("--deadline", type=float, default=560.0,
                   help="seconds; later runs are skipped, and runs still going at this time are stopped and marked cut")
    p.add_argument("--jobs-per-gpu", type=int, default=16, help="students trained at once on one GPU")
    args = p.parse_args()
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"  # travels back as one tarball (the GPU machine returns few files)
    logs.mkdir(exist_ok=True)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}, "seconds": {}, "skipped": []}

    def save():
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        subprocess.run(["tar", "czf", str(args.out / "logs.tgz"), "-C", str(args.work), "logs"], check=False)

    import torch

    summary["device"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    summary["date"] = time.strftime("%Y-%m-%d")
    all_gpus = ",".join(str(i) for i in range(args.gpus))

    t = time.time()
    data = args.work / "data"
    if not data.exists():
        from frs_cli.data.synth import SynthConfig, generate

        generate(data, SynthConfig(train=args.train, val=args.val, size=args.size, min_object=args.min_object, seed=0))
    summary["seconds"]["synth"] = time.time() - t
    recipe = args.work / "claim.toml"
    recipe.write_text(RECIPE.format(
        root=json.dumps(str(data)), size=args.size, teacher=args.teacher, student=args.student, anchor=args.anchor,
        teacher_epochs=args.teacher_epochs, teacher_batch=max(1, args.batch // args.gpus),
        teacher_steps=lr_steps(args.teacher_epochs), student_epochs=args.student_epochs,
        student_steps=lr_steps(args.student_epochs), batch=args.batch, lr=args.lr, student_lr=args.student_lr,
        distill_warmup=args.distill_warmup, eval_every=args.eval_every))
    shutil.copy(recipe, logs / "claim.toml")

    t = time.time()
    teacher_dir = args.work / "teacher"
    lf = logs / "teacher.log"
    wait(frs(["train", "-p", str(recipe), "--role", "teacher", "--out", str(teacher_dir)], all_gpus, lf, args.gpus), lf)
    teacher_ckpt = teacher_dir / "model_final.pt"
    summary["runs"]["teacher"] = {"final": history(teacher_dir)[-1], "img_s": throughput(teacher_dir),
                                  "seconds": time.time() - t}
    shutil.copy(teacher_dir / "metrics.jsonl", logs / "teacher.metrics.jsonl")
    summary["seconds"]["teacher"] = time.time() - t
    save()
    log(f"teacher: {summary['runs']['teacher']}")

    t = time.time()
    cache = args.work / "cache.zarr"
    tw = f"teacher.weights={json.dumps(str(teacher_ckpt))}"
    val = str(args.work / "val.zarr")
    val_log = logs / "cache_val.log"  # the val cache (pictures only) is written beside the train cache
    val_proc = frs(["teacher-cache", "-p", str(recipe), "--out", val, "--set", tw, "--set", 'cache.split="val"',
                    "--set", 'cache.views=["orig"]'], "0", val_log)
    lf = logs / "cache.log"
    wait(frs(["teacher-cache", "-p", str(recipe), "--out", str(cache), "--set", tw], all_gpus, lf, args.gpus), lf)
    summary["seconds"]["teacher-cache"] = time.time() - t
    wait(val_proc, val_log)
    # mask pictures and statistics: run beside the students (small, independent of them)
    pictures = [subprocess.Popen([sys.executable, "-m", "frs_cli", "visualize", "--cache", val, "--level", "all",
                                  "--image-id", str(args.train + k), "--out", str(args.out / f"masks_val_{k}.png")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in (1, 2)]
    pictures.append(subprocess.Popen([sys.executable, "-m", "frs_cli", "eval", "--cache", val, "--metrics",
                                      str(args.out / "mask_stats.json")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL))
    info = subprocess.run([sys.executable, "-m", "frs_cli", "cache", "info", str(cache)], check=False, capture_output=True,
                          text=True)
    (logs / "cache_info.txt").write_text(info.stdout)
    save()

    variants = parse_variants(args.variants)
    jobs = parse_plan(args.plan, variants, args.in_order)
    summary["cut"] = []
    running: dict[int, tuple] = {}
    free = [g for _ in range(args.jobs_per_gpu) for g in range(args.gpus)]  # slots, GPUs filled in turn
    slot_gpu = dict(enumerate(free))
    free = list(slot_gpu)
    last_save = time.time()
    durations: list[float] = []
    while jobs or running:
        while jobs and free:
            name, seed = jobs[0]
            expected = max(durations) if durations else 0.0
            if time.time() - t0 + expected > args.deadline:
                summary["skipped"] += [f"{n} seed {s}" for n, s in jobs]
                log(f"deadline: skipping {jobs}")
                jobs = []
                break
            jobs.pop(0)
            slot = free.pop(0)
            gpu = slot_gpu[slot]
            run_dir = args.work / f"{name}_s{seed}"
            kind, _, extra = name.partition("+")
            cmd = [c.format(cache=cache) for c in STUDENTS[kind]]
            cmd = [cmd[0], "-p", str(recipe), *cmd[1:], "--out", str(run_dir), "--set", tw, "--set", f"train.seed={seed}"]
            cmd += [x for kv in args.sets + variants.get(extra, []) for x in ("--set", kv)]
            lf = logs / f"{name}_s{seed}.log"
            probe = logs / f"{name}_s{seed}.sharpness.jsonl" if args.sharpness and cmd[0] == "distill" else None
            running[slot] = (frs(cmd, str(gpu), lf, probe=probe), name, seed, run_dir, time.time(), lf)
        if time.time() - t0 > args.deadline:  # stop what still runs; its metrics so far travel back
            for slot, (proc, name, seed, run_dir, _, _) in list(running.items()):
                proc.kill()
                proc.wait()
                if (run_dir / "metrics.jsonl").exists():
                    shutil.copy(run_dir / "metrics.jsonl", logs / f"{name}_s{seed}.metrics.jsonl")
                summary["cut"].append(f"{name} seed {seed}")
                log(f"deadline: stopped {name} seed {seed}")
                del running[slot]
            save()
            break
        if time.time() - last_save > 30:  # progress so far travels back even if the command is cut off
            for _, name, seed, run_dir, _, _ in running.values():
                if (run_dir / "metrics.jsonl").exists():
                    shutil.copy(run_dir / "metrics.jsonl", logs / f"{name}_s{seed}.metrics.jsonl")
            save()
            last_save = time.time()
        for slot, (proc, name, seed, run_dir, started, lf) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            free.append(slot)
            wait(proc, lf)
            hist = history(run_dir)
            durations.append(time.time() - started)
            summary["runs"][f"{name}_s{seed}"] = {"final": hist[-1] if hist else None, "history": hist,
                                                  "img_s": throughput(run_dir), "seconds": time.time() - started,
                                                  "losses": loss_peaks(run_dir / "metrics.jsonl")}
            shutil.copy(run_dir / "metrics.jsonl", logs / f"{name}_s{seed}.metrics.jsonl")
            log(f"{name} seed {seed}: {hist[-1] if hist else None}")
            save()
        time.sleep(1)

    summary["pictures_exit_codes"] = [proc.wait() for proc in pictures]
    summary["seconds"]["total"] = time.time() - t0
    save()
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
