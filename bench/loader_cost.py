"""What the real loader adds to the cached FRS step (issue 13): the same batches, on the device or through the loader.

``bench/step_breakdown.py`` found the cached FRS step 1.07x the plain one on batches kept on the device, while
``bench/cached_step.py`` measured it 1.05-1.5x the plain one through the real DataLoader, with the data wait
about 2 % of the step. This script times one list of batches (one canvas each, cycled) under each variant,
in one process on one card, twice in turn (so drift shows), and splits each step into

- ``wait``: waiting for the loader's next batch;
- ``copy``: ``Batch.to(device)`` and a synchronisation (the host-to-device copies);
- ``issue``: the Python thread launching forward, backward and the optimizer step (no synchronisation);
- ``tail``: the device finishing after the last launch.

A step whose ``issue`` grows while the device work stays the same is slowed on the host (the main thread).

Variants (``--variants``):
- ``resident_plain`` / ``resident_cached``: GT loss / cached FRS objective with the cached head as CUDA graphs
  (``distill.cuda_graphs = true``) on batches already on the device; ``resident_cached_eager``: with the
  cached head run eagerly (``distill.cuda_graphs = false``, the default);
- ``loader_plain``: the GT loss through the image-only loader (what plain training reads);
- ``loader_cached``: the cached FRS objective through the cached loader, with the head as CUDA graphs;
  ``loader_cached_eager``: the same with the cached head run eagerly, as distill runs it by default;
- ``loader_cached_gt``: the cached loader, but the GT loss (the teacher targets read and dropped before the copy);
- optional: ``loader_cached_nopin``, ``loader_cached`` with ``pin_memory=False``; ``loader_cached_w4``, with 4
  workers;
- ``resident_online``: the FRS objective with the live teacher (``OnlineTeacher``) on the same batches;
- any of them with ``SWITCHES`` appended, in any order, each changing one thing for that variant alone: ``_sg``
  its step through ``StepGraphs`` (``train.cuda_graphs``), ``_cl`` the student channels-last, ``_tnc`` the cached
  head contiguous, ``_nf`` / ``_nd`` the FRS terms / the packed decode in PyTorch, ``_cb`` cuDNN's benchmark
  mode, ``_nb`` the teacher's side on the step's own stream, ``_acl`` the adapters channels-last, ``_ot`` the
  fused terms' earlier kernels (see ``SWITCHES``), e.g. ``resident_cached_sg_tnc_nf``.

``--sync-points`` runs ``--sync-steps`` more steps of every variant with CUDA's sync debug mode on (``warn``) and
records, per variant, each place in the Python code where the host waited for the device (``sync_points``: the
innermost frames of each synchronizing call, with how often per step it ran). A step that waits mid-way for the
device cannot launch ahead of it, so the device's work on that step is no longer hidden behind the host's launches.

``--clocked`` times the ``REGIONS`` of every timed step on the host with ``perf_counter`` (no profiler, whose
tracing slows graph launches): ``regions_ms`` per variant, the host milliseconds per step inside each region,
regions nested in others counted in both (``graph_launch``: ``CUDAGraph.replay``, inside ``replay_forward`` and
``replay_backward``).

With ``--profile`` the ``--profile-variants`` (``loader_plain`` and ``loader_cached`` unless given) are also
profiled over a few steps (torch.profiler, host and device): the top host operations by self time go to
--out/profile_*.txt, and the host milliseconds per step inside each labelled region of the step (``REGIONS``:
the student's forward, the FRS side's checks, valid positions and graph replay) to the JSON's ``regions``.
Raw JSON to --out/loader_cost.json. ``--smoke`` runs it on the CPU with tiny models (tests).

On one H200 (about 3 minutes):

    python3 bench/loader_cost.py --out $OUT --work /tmp/loader_cost --profile
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import ARCH, median, step_objective, sync_time
from step_breakdown import prepare as breakdown_prepare

VARIANTS = ("resident_plain", "resident_cached", "resident_cached_eager", "loader_plain", "loader_cached",
            "loader_cached_eager", "loader_cached_gt")
OPTIONAL = ("loader_cached_nopin", "loader_cached_w4")
PHASES = ("wait", "copy", "issue", "tail")
STEP = 10_000  # past the FRS warm-up
SMOKE = {"pair": "tiny-tiny", "images": 4, "image_size": 64, "min_size": 64, "max_size": 96, "views": 16,
         "batch": 2, "batches": 4, "workers": 0, "warmup": 1, "steps": 2, "rounds": 1, "profile": False}


# the parts of a step --profile labels and --clocked times: (module, attribute holder, attribute) -> label
REGIONS = (("frs_cli.train.objectives", "GTObjective", "forward", "objective_forward"),
           ("frs_cli.train.objectives", "FRSObjective", "forward", "objective_forward"),
           ("frs_cli.train.objectives", None, "valid_positions", "valid_positions"),
           ("frs_cli.train.objectives", None, "image_sizes_on", "image_sizes"),
           ("frs_cli.train.objectives", "CachedTeacher", "graphed", "graphed_check"),
           ("frs_cli.train.objectives", "CachedTeacher", "check_batch", "check_batch"),
           ("frs_cli.train.graphed", "GraphedTerms", "__call__", "graphed_terms"),
           ("frs_cli.train.graphed", "_TrainingGraph", "__call__", "graph_replay"),
           ("frs_cli.train.graphed", "_Replay", "forward", "replay_forward"),
           ("frs_cli.train.graphed", "_Replay", "backward", "replay_backward"),
           ("torch.cuda", "CUDAGraph", "replay", "graph_launch"))


@contextlib.contextmanager
def patched_regions(obj, wrap):
    """Every ``REGIONS`` function, and ``obj``'s student forward (``student_forward``), replaced by
    ``wrap(fn, label)`` while the block runs; restored after (static methods stay static)."""
    import importlib

    patched = []
    for module, holder, name, label in REGIONS:
        target = importlib.import_module(module)
        target = getattr(target, holder) if holder else target
        original = target.__dict__.get(name)  # None: inherited, restored by deleting the override
        fn = getattr(target, name) if original is None or isinstance(original, staticmethod) else original
        inner = functools.wraps(fn)(wrap(fn, label))
        setattr(target, name, staticmethod(inner) if isinstance(original, staticmethod) else inner)
        patched.append((target, name, original))
    student = obj.student
    student.forward = wrap(type(student).forward.__get__(student), "student_forward")
    try:
        yield
    finally:
        del student.forward
        for target, name, original in patched:
            if original is None:
                delattr(target, name)
            else:
                setattr(target, name, original)


def labelled_regions(obj):
    """``patched_regions`` inside a ``record_function("frs::<label>")`` each (for the profiler)."""
    from torch.profiler import record_function

    def wrap(fn, label):
        def inner(*args, **kwargs):
            with record_function(f"frs::{label}"):
                return fn(*args, **kwargs)
        return inner

    return patched_regions(obj, wrap)


def clocked_regions(obj, totals: dict[str, float]):
    """``patched_regions`` adding each call's host seconds (``perf_counter``, no profiler) to ``totals[label]``."""

    def wrap(fn, label):
        def inner(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - t
        return inner

    return patched_regions(obj, wrap)


SYNC_WARNING = "called a synchronizing CUDA operation"  # the text of torch.cuda's sync debug warning


def frame_site(frame: traceback.FrameSummary) -> str:
    """``path:line function`` of a stack frame, the path from the package's own folder on (``torch/...``,
    ``frs_cli/...``, ``bench/...``) rather than from the machine's root."""
    parts = Path(frame.filename).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("torch", "torchvision", "frs_cli", "bench", "tests"):
            return f"{'/'.join(parts[i:])}:{frame.lineno} {frame.name}"
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"


@contextlib.contextmanager
def sync_points(dev, sites: Counter, depth: int = 4):
    """While the block runs, CUDA's sync debug mode warns (on ``dev`` CUDA) at every operation that makes the host
    wait for the device; each such warning adds 1 to ``sites[chain]``, ``chain`` the innermost ``depth`` frames of
    the Python stack that called it (``frame_site``'s, innermost first, joined by `` < ``). Other warnings pass."""
    cuda = dev.type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if SYNC_WARNING not in str(message):
                return shown(message, category, filename, lineno, file, line)
            stack = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith("warnings.py")]
            sites[" < ".join(frame_site(f) for f in stack[::-1][:depth])] += 1
            return None

        warnings.showwarning = record
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")


def region_ms(prof, steps: int) -> dict[str, float]:
    """Host milliseconds per step inside each ``frs::`` label of ``prof``: the host-side ranges' total time (a
    label's device-side annotations left out) / ``steps``."""
    from torch.autograd import DeviceType

    out: dict[str, float] = {}
    for e in prof.events():
        if e.name.startswith("frs::") and e.device_type == DeviceType.CPU:
            key = e.name.removeprefix("frs::")
            out[key] = out.get(key, 0.0) + e.cpu_time_total / 1e3 / steps
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--pair", default="x101-r50")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--image-size", type=int, default=853)
    p.add_argument("--classes", type=int, default=80,
                   help="categories the models classify (COCO's 80: its heads' width); 0: the shapes' 5")
    p.add_argument("--min-size", type=int, default=512)
    p.add_argument("--max-size", type=int, default=853)
    p.add_argument("--views", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=24, help="distinct batches of one canvas, cycled")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2, help="times every variant is measured, in turn")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-variants", default="loader_plain,loader_cached", help="the variants --profile profiles")
    p.add_argument("--profile-sort", choices=("cpu", "cuda"), default="cpu",
                   help="order the profile's operations by their own host (cpu) or device (cuda) time")
    p.add_argument("--clocked", action="store_true",
                   help="time the REGIONS of every timed step on the host with perf_counter (regions_ms), no profiler")
    p.add_argument("--sync-points", action="store_true",
                   help="record where each variant's steps make the host wait for the device (sync_points)")
    p.add_argument("--sync-steps", type=int, default=5, help="the steps --sync-points watches, after the timed ones")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    args.group_by_canvas = True  # batches of one canvas, as training batches by default
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    return args


def prepare(args) -> dict:
    """``step_breakdown.prepare``'s data, random-weight teacher cache and batches (one canvas each, on the device),
    with the batches' keys for the loader variants."""
    from frs_cli.cache.reader import CachedViews

    s = breakdown_prepare(args)
    return {"dev": s.dev, "amp": s.amp, "coco": s.coco, "cached": CachedViews(s.coco, s.store), "recipe": s.recipe,
            "store": s.store, "sname": s.sname, "keys": s.keys, "resident": s.batches}


def loader(dataset, keys, workers: int, prefetch: int, dev, pin: bool = True):
    """The batches of ``keys`` through a DataLoader whose workers hold their last buffers as the trainer's do
    (``train.worker_hold``'s default)."""
    from frs_cli.data.coco import ListSampler, collate
    from frs_cli.data.packed import WORKER_HOLD, hold_in_worker

    return torch.utils.data.DataLoader(dataset, batch_sampler=ListSampler(keys), num_workers=workers,
                                       collate_fn=collate, pin_memory=pin and dev.type == "cuda",
                                       prefetch_factor=prefetch if workers else None,
                                       worker_init_fn=functools.partial(hold_in_worker, WORKER_HOLD))


def objective(s: dict, cached: bool, graphs: bool = True, online: bool = False):
    from frs_cli.models import ModelConfig, build_detector

    torch.manual_seed(0)
    student = build_detector(ModelConfig(arch=ARCH[s["sname"]]), s["coco"].index.num_classes)
    mode = "online" if online else "cached" if cached else "plain"
    obj, _ = step_objective(mode, student, s["recipe"], s["coco"], s["coco"].index.num_classes, s["store"])
    if cached:
        obj.teacher_side.cuda_graphs = graphs
    return obj


def timed(obj, batches, dev, amp, warmup: int, steps: int, drop_teacher: bool = False, profiler=None,
          totals: dict | None = None, sync_steps: int = 0, graphs=None) -> dict:
    """``warmup + steps`` SGD steps of ``obj`` on the iterator ``batches``; per phase the median ms of the timed
    steps, and the step's median and mean. ``totals``: ``clocked_regions``' seconds, emptied when the timed steps
    start and reported per timed step (``regions_ms``). ``sync_steps``: that many more steps under ``sync_points``
    (their batch copies and the timing's own synchronisations outside it), reported as ``sync_points``: each
    chain's count per step, most frequent first. ``graphs``: a ``StepGraphs`` over ``obj``; a batch it takes runs
    forward and backward as one replayed CUDA graph, as ``Trainer.run_step`` does (``train.cuda_graphs``)."""
    obj.to(dev).train()
    opt = torch.optim.SGD([q for q in obj.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)
    rows = []
    sites: Counter = Counter()
    regions = totals
    for i in range(warmup + steps + sync_steps):
        if i == warmup and totals is not None:
            totals.clear()
        if i == warmup + steps and totals is not None:
            regions = dict(totals)  # the timed steps' alone
        t0 = sync_time()
        batch = next(batches)
        t_got = time.perf_counter()
        if drop_teacher:
            batch.teacher = None
        batch = batch.to(dev, non_blocking=True)
        t1 = sync_time()
        with sync_points(dev, sites) if i >= warmup + steps else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(**amp):
                graphed = graphs.step(batch, STEP) if graphs is not None else None
                if graphed is None:
                    loss = sum(obj(batch, STEP).values())
            if graphed is None:
                loss.backward()
            opt.step()
        t_issued = time.perf_counter()
        t2 = sync_time()
        if profiler is not None:
            profiler.step()
        if warmup <= i < warmup + steps:
            rows.append({"wait": t_got - t0, "copy": t1 - t_got, "issue": t_issued - t1, "tail": t2 - t_issued,
                         "step": t2 - t0})
    out = {f"{k}_ms": 1e3 * median([r[k] for r in rows]) for k in (*PHASES, "step")}
    out["step_ms_mean"] = 1e3 * sum(r["step"] for r in rows) / len(rows)
    out["steps"] = len(rows)
    if totals is not None:
        out["regions_ms"] = {k: 1e3 * v / len(rows) for k, v in sorted(regions.items())}
    if sync_steps:
        out["sync_points"] = {site: n / sync_steps for site, n in sites.most_common()}
        out["sync_steps"] = sync_steps
    return out


# what a variant's name may end with, in any order, e.g. ``resident_cached_sg_tnc_nf``: each switches one thing for
# that variant alone
SWITCHES = {
    "_sg": "the step through StepGraphs (train.cuda_graphs: forward and backward of a one-canvas batch as one "
           "replayed CUDA graph; off CUDA run without capture)",
    "_cl": "what trains channels-last (train.channels_last)",
    "_tnc": "the cached teacher's head and decoded features contiguous (CachedTeacher.channels_last = False; on CUDA "
            "they are channels-last by default)",
    "_nf": "the FRS terms in their PyTorch form (frs_cli.fused_losses.ENABLED = False)",
    "_nd": "packed codes decoded in PyTorch (frs_cli.fused_decode.ENABLED = False)",
    "_cb": "torch.backends.cudnn.benchmark on (cuDNN times its algorithms for each new shape, keeps the fastest)",
    "_nb": "the teacher's side on the step's own stream (distill.teacher_beside = false; it acts with _sg only)",
    "_acl": "the FRS adapters' weights channels-last, so that their convolutions run NHWC whatever the student's layout",
    "_ot": "the fused FRS terms' kernels and tiles of sessions 19 to 26 (bench/fused_terms.py's old_kernels)",
}


def parse_variant(name: str) -> tuple[str, frozenset[str]]:
    """A variant's base name and the ``SWITCHES`` its name ends with."""
    on = set()
    while (suffix := next((x for x in SWITCHES if name.endswith(x)), None)) is not None:
        on.add(suffix)
        name = name.removesuffix(suffix)
    return name, frozenset(on)


@contextlib.contextmanager
def process_switches(on: frozenset[str]):
    """The process-wide ``SWITCHES`` of ``on`` (cuDNN's benchmark mode, the fused kernels) within the block; as they
    were after it. A kernel turned off in the environment stays off."""
    from fused_terms import old_kernels

    from frs_cli import fused_decode, fused_losses

    saved = torch.backends.cudnn.benchmark, fused_losses.ENABLED, fused_decode.ENABLED
    torch.backends.cudnn.benchmark = "_cb" in on
    fused_losses.ENABLED = saved[1] and "_nf" not in on
    fused_decode.ENABLED = saved[2] and "_nd" not in on
    try:
        with old_kernels() if "_ot" in on else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cudnn.benchmark, fused_losses.ENABLED, fused_decode.ENABLED = saved


def run_variant(name: str, args, s: dict, profile_to: Path | None = None) -> dict:
    """One variant (a base name of ``VARIANTS``/``OPTIONAL`` or ``resident_online``, then any ``SWITCHES``) timed,
    or profiled into ``profile_to``."""
    base, on = parse_variant(name)
    with process_switches(on):
        return _run_variant(base, on, args, s, profile_to)


def _run_variant(name: str, on: frozenset[str], args, s: dict, profile_to: Path | None) -> dict:
    from frs_cli.train.loop import train_channels_last
    from frs_cli.train.step_graphs import StepGraphs

    cached = name.startswith(("resident_cached", "loader_cached")) and name != "loader_cached_gt"
    online = name == "resident_online"
    obj = objective(s, cached, graphs=not name.endswith("_eager"), online=online)
    if "_nb" in on and (cached or online):
        obj._beside.enabled = False
    if "_acl" in on and (cached or online):
        obj.adapters.to(memory_format=torch.channels_last)
    if "_cl" in on:
        train_channels_last(obj)
    if "_tnc" in on and cached:
        obj.teacher_side.channels_last = False
    graphs = StepGraphs(obj, capture=s["dev"].type == "cuda") if "_sg" in on else None
    # a profile's steps: every distinct batch once, then 2 + 6 (see below)
    sync_steps = args.sync_steps if args.sync_points and profile_to is None else 0
    count = args.warmup + args.steps + sync_steps if profile_to is None else max(args.warmup, args.batches) + 8
    if name.startswith("resident"):
        batches = (s["resident"][i % len(s["resident"])] for i in range(count))
    else:
        keys = [s["keys"][i % len(s["keys"])] for i in range(count + args.workers * args.prefetch + 1)]
        dataset = s["coco"] if name == "loader_plain" else s["cached"]
        workers = 4 if name == "loader_cached_w4" and args.workers else args.workers
        batches = iter(loader(dataset, keys, workers, args.prefetch, s["dev"], pin=name != "loader_cached_nopin"))
    if profile_to is None:
        totals = {} if args.clocked else None
        with clocked_regions(obj, totals) if totals is not None else contextlib.nullcontext():
            res = timed(obj, batches, s["dev"], s["amp"], args.warmup, args.steps,
                        drop_teacher=name == "loader_cached_gt", totals=totals, sync_steps=sync_steps, graphs=graphs)
        if graphs is not None:
            res["step_graphs_captured"] = graphs.captured
    else:
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s["dev"].type == "cuda" else [])
        # profiled once every distinct batch has run (its shape captured as graphs): the steady steps alone
        active, wait = 6, max(args.warmup, args.batches)
        with labelled_regions(obj), profile(activities=acts,
                                            schedule=schedule(wait=wait, warmup=2, active=active, repeat=1)) as prof:
            res = timed(obj, batches, s["dev"], s["amp"], wait, 2 + active, profiler=prof, graphs=graphs)
        res["regions"] = region_ms(prof, active)
        text = prof.key_averages().table(sort_by=f"self_{args.profile_sort}_time_total", row_limit=70,
                                         max_name_column_width=110)
        regions = "\n".join(f"{k}: {v:.3f} ms per step (host)" for k, v in sorted(res["regions"].items()))
        profile_to.write_text(f"{regions}\n\n{text}")
    del obj, batches, graphs
    if s["dev"].type == "cuda":
        torch.cuda.empty_cache()
    return res


def run(args, argv: list[str]) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    s = prepare(args)
    res = {"command": "python3 bench/loader_cost.py " + " ".join(argv),
           "device": torch.cuda.get_device_name(0) if s["dev"].type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "args": {k: str(v) for k, v in vars(args).items()}, "batches": len(s["keys"]),
           "canvases": sorted({str(b.geometries[0].padded_size) for b in s["resident"]}), "rounds": []}
    names = args.variants.split(",")
    for r in range(args.rounds):
        row = {}
        for name in names if r % 2 == 0 else names[::-1]:
            row[name] = run_variant(name, args, s)
            figures = {k: v for k, v in row[name].items() if k.endswith("_ms") and not isinstance(v, dict)}
            print(f"round {r} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
            (args.out / "loader_cost.json").write_text(json.dumps({**res, "rounds": [*res["rounds"], row]}, indent=1))
        res["rounds"].append(row)
    if args.profile:
        res["profiles"] = {name: run_variant(name, args, s, profile_to=args.out / f"profile_{name}.txt")
                           for name in args.profile_variants.split(",")}
    (args.out / "loader_cost.json").write_text(json.dumps(res, indent=1))
    print(table(res), flush=True)
    return res


def table(res: dict) -> str:
    names = list(res["rounds"][0])
    lines = [f"{res['device']}, {res['date']}, torch {res['torch']}: `{res['command']}`", "",
             "| variant | round | step ms (median) | mean | wait | copy | issue | tail |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        for r, row in enumerate(res["rounds"]):
            v = row[name]
            lines.append(f"| {name} | {r} | {v['step_ms']:.2f} | {v['step_ms_mean']:.2f} | {v['wait_ms']:.2f} | "
                         f"{v['copy_ms']:.2f} | {v['issue_ms']:.2f} | {v['tail_ms']:.2f} |")
    labels = sorted({k for row in res["rounds"] for v in row.values() for k in v.get("regions_ms", {})})
    if labels:  # --clocked: host ms per step in each region
        lines += ["", "Host ms per step in each region (perf_counter):", "",
                  "| variant | round | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for name in names:
            for r, row in enumerate(res["rounds"]):
                got = row[name].get("regions_ms", {})
                cells = " | ".join(f"{got[k]:.3f}" if k in got else "-" for k in labels)
                lines.append(f"| {name} | {r} | {cells} |")
    syncs = [(name, r, row[name]) for name in names for r, row in enumerate(res["rounds"])
             if "sync_points" in row[name]]
    if syncs:  # --sync-points: where the host waited for the device, per step
        lines += ["", "Where the host waited for the device (sync debug mode), per step:", "",
                  "| variant | round | waits per step | innermost frames |", "|---|---|---|---|"]
        for name, r, v in syncs:
            points = v["sync_points"] or {"(none)": 0.0}
            lines += [f"| {name} | {r} | {n:g} | `{site}` |" for site, n in points.items()]
    return "\n".join(lines)


def main() -> None:
    run(parse_args(), sys.argv[1:])


if __name__ == "__main__":
    main()
