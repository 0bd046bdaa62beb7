"""Where the cached FRS step's extra time goes (issue 13): cumulative step variants and the parts alone, one call.

On one H200, ``bench/cached_step.py`` measured a plain R50 student step of 54.8 ms and a cached FRS step (X101
teacher cache, int8/int5) of 58-71 ms with about 2 % data wait, so the extra is device work the plain step does
not do. This script splits it. One process, one card, random weights; it

1. generates --images images (three aspect ratios, replicated up to --views views, two per image), saves a
   random-weight teacher of --pair and writes its teacher cache in --dtype over every view;
2. loads up to --batches batches of one canvas (``train.group_by_canvas``'s batching; batches that would mix
   canvases are left out) through the real cached DataLoader and keeps them on the device: nothing is read or
   copied in the timed part;
3. times --warmup then --steps training steps (forward, backward, SGD step; bf16 autocast as distill) of each
   cumulative variant on those batches, cycling through them, and keeps the median:

   a) ``plain``: the student's GT loss (``GTObjective``);
   b) ``teacher``: a) + the cached teacher side (``CachedTeacher``: decode + the head recomputed on each canvas),
      its outputs read only by a zero-weighted one-element probe;
   c) ``feature``: b) + the valid masks, the adapters and the feature loss;
   d) ``full``: ``FRSObjective`` with ``CachedTeacher`` as distill runs it (c) + the head loss);
   and ``online``: ``FRSObjective`` with ``OnlineTeacher`` (the live teacher), for reference;

4. times each part alone on the same batches (forward only unless named): decode, the cached head on decoded
   features, the whole cached teacher side, the valid masks, the masks' N_l sums, the adapters (forward +
   backward), feature_loss and head_loss (forward + backward, on student-shaped leaves), and the live teacher;
   wall time between synchronisations and, on CUDA, the events' device time (a wall time well above the device
   time means the part is bound by kernel launches, not by the GPU);
5. reports each increment and part in ms and as a share of (d) - (a), writes raw JSON (command, device, date,
   torch version, arguments, every figure, and the loss terms each variant computes on the first batch before
   training) to --out/breakdown.json and prints markdown tables.

Variants b) and c) are prefixes of ``FRSObjective.forward`` built around a real ``FRSObjective`` (the same
student, adapters and teacher side), so (d) - (c) is the head loss and its backward, nothing else.
``--smoke`` runs the same code on the CPU with tiny models in seconds (tests/test_read_path.py).

On one H200 (first run 2026-12-02, docs/results/issue13_2026-12-02_h200_s5/call1/bd/: under 90 s with CUDA
start-up, the X101 teacher cache of 256 views, 5 x 60 steps and the parts):

    python3 bench/step_breakdown.py --out $OUT --work /tmp/breakdown
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cached_step import _loader, batches_for, canvas_of, make_data
from speed import ARCH, median, step_objective, sync_time, timed_steps

VARIANTS = ("plain", "teacher", "feature", "full", "online")
LETTERS = {"plain": "a", "teacher": "b", "feature": "c", "full": "d", "online": "ref"}
INCREMENTS = (("teacher_side", "teacher", "plain"), ("adapters_feature_loss", "feature", "teacher"),
              ("head_loss", "full", "feature"))
SMOKE = {"pair": "tiny-tiny", "images": 4, "image_size": 64, "min_size": 64, "max_size": 96, "views": 24,
         "batch": 4, "batches": 8, "workers": 0, "prefetch": 2, "warmup": 1, "steps": 2, "part_reps": 2}
STEP = 10_000  # past the FRS warm-up: the distillation terms at full weight


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for breakdown.json")
    p.add_argument("--work", type=Path, required=True, help="data and the teacher cache (about 1 GB at the defaults)")
    p.add_argument("--pair", default="x101-r50", help="teacher-student")
    p.add_argument("--dtype", default="int8", help="the cache's feature encoding")
    p.add_argument("--images", type=int, default=32, help="generated images (replicated up to --views views)")
    p.add_argument("--image-size", type=int, default=853)
    p.add_argument("--classes", type=int, default=80,
                   help="categories the models classify (COCO's 80: its heads' width); 0: the shapes' 5")
    p.add_argument("--min-size", type=int, default=512)
    p.add_argument("--max-size", type=int, default=853)
    p.add_argument("--views", type=int, default=256, help="views in the split and the cache")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=32, help="distinct batches kept on the device and cycled through")
    p.add_argument("--workers", type=int, default=8, help="loader workers (only to load the batches, not timed)")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant (the median is reported)")
    p.add_argument("--part-reps", type=int, default=30, help="timed calls per part alone (after as many warm-up)")
    p.add_argument("--smoke", action="store_true", help="tiny models and sizes on the CPU (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    args.group_by_canvas = True  # cached_step's canvas_of reads it
    return args


class Setup(NamedTuple):  # not a dataclass: the tests load this file by path, outside sys.modules
    """What every variant runs on: the device, the student's name, the cache and its batches on the device."""

    dev: torch.device
    amp: dict
    coco: object  # CocoViews
    recipe: object  # the Recipe the cache was written with
    store: object  # TeacherCache
    sname: str
    num_classes: int
    batches: list  # Batch, on dev, each of one canvas
    keys: list  # each batch's keys ((position, view) pairs), in the same order


def prepare(args) -> Setup:
    """Data, a random-weight teacher, its cache over every view, and the batches on the device."""
    from frs_cli.cache.reader import CachedViews, TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup

    ctx = setup("cpu" if args.smoke else None)
    dev = ctx.device
    args.work.mkdir(parents=True, exist_ok=True)
    data = make_data(args.work, args.images, args.image_size, args.views, "data", args.classes)
    tname, sname = args.pair.split("-")
    base = {"data": {"root": str(data)}, "geometry": {"min_size": args.min_size, "max_size": args.max_size},
            "cache": {"batch_size": args.batch, "workers": args.workers, "preload_mb": 0, "dtype": args.dtype,
                      **({"write_processes": 0} if args.smoke else {})}}  # no writer processes on the CPU
    coco = CocoViews.from_config(recipe_from_dict(base).data, "train", recipe_from_dict(base).geometry)
    ckpt = save_teacher(args.work / f"{tname}.pt", tname, coco, recipe_from_dict(base).geometry)
    recipe = recipe_from_dict({**base, "teacher": {"arch": ARCH[tname], "weights": str(ckpt)}})
    path = args.work / f"{tname}_{args.dtype}.zarr"
    if path.exists():
        shutil.rmtree(path)
    write_teacher_cache(recipe, str(path), ctx=ctx)
    store = TeacherCache(str(path))
    canvas = canvas_of(args, coco)
    keys = [b for b in batches_for(2 * len(coco), 2 * len(coco) // args.batch, args.batch, canvas)
            if len({canvas(k) for k in b}) == 1][: args.batches]
    keys = round_robin(keys, canvas)
    batches = [b.to(dev) for b in _loader(args, CachedViews(coco, store), keys, dev)]
    amp = {"device_type": dev.type, "dtype": torch.bfloat16, "enabled": dev.type == "cuda"}
    return Setup(dev, amp, coco, recipe, store, sname, coco.index.num_classes, batches, keys)


def save_teacher(ckpt: Path, tname: str, coco, geometry) -> Path:
    """A random-weight ``tname`` teacher's model file (seed 0), as teacher-cache and the online row load it."""
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch=ARCH[tname])
    teacher = build_detector(cfg, coco.index.num_classes)
    save_model(ckpt, teacher, cfg, coco.index, geometry)
    return ckpt


def round_robin(batches: list[list], canvas) -> list[list]:
    """The batches reordered one canvas after another, so that any few consecutive steps (the warm-up) see every
    canvas."""
    groups: dict = {}
    for b in batches:
        groups.setdefault(canvas(b[0]), []).append(b)
    return [b for row in itertools.zip_longest(*groups.values()) for b in row if b is not None]


class PartialFRS(nn.Module):
    """A prefix of ``FRSObjective.forward`` on a real ``FRSObjective`` (its student, adapters and teacher side):
    ``upto="teacher"`` adds the teacher side to the GT loss, read only by a zero-weighted one-element probe;
    ``upto="feature"`` adds the valid masks, the adapters and the feature loss as the objective computes them."""

    def __init__(self, objective: nn.Module, upto: str):
        super().__init__()
        self.objective, self.upto = objective, upto

    def forward(self, batch, step: int) -> dict[str, torch.Tensor]:
        from frs_cli.losses import distill_weight, frs_losses
        from frs_cli.train.objectives import valid_positions

        obj = self.objective
        out = obj.student(batch.images, batch.image_sizes, batch.targets)
        losses = dict(out.losses)
        teacher = obj.teacher_side(batch, need_logits=True)
        # one element of each output: the teacher side's work is consumed, its cost not added to
        losses["teacher_probe"] = 0.0 * sum(t.reshape(-1)[0].float() for t in (*teacher.features, *teacher.cls_logits))
        if self.upto == "teacher":
            return losses
        valid = valid_positions(batch.image_sizes, [f.shape[-2:] for f in out.features], obj.student.strides,
                                out.features[0].device)
        w = distill_weight(step, obj.cfg.warmup_iters)
        feature, _ = frs_losses(obj.adapters(out.features), teacher.features, None, None, teacher.masks, valid)
        losses["frs_feature"] = w * obj.cfg.alpha * feature
        return losses


def build_variant(name: str, s: Setup) -> nn.Module:
    """Variant ``name`` of ``VARIANTS`` around a student built from seed 0 (the same weights in every variant)."""
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.objectives import GTObjective

    torch.manual_seed(0)
    student = build_detector(ModelConfig(arch=ARCH[s.sname]), s.num_classes)
    if name == "plain":
        return GTObjective(student)
    obj, _ = step_objective("online" if name == "online" else "cached", student, s.recipe, s.coco, s.num_classes,
                            s.store)
    return PartialFRS(obj, name) if name in ("teacher", "feature") else obj


def first_losses(obj: nn.Module, s: Setup) -> dict[str, float]:
    """The variant's loss terms on the first batch with its initial weights (train mode, no gradient)."""
    obj.to(s.dev).train()
    with torch.no_grad(), torch.autocast(**s.amp):
        return {k: float(v) for k, v in obj(s.batches[0], STEP).items()}


def time_call(fn, inputs: list, reps: int, dev: torch.device) -> dict:
    """``fn(x)`` over ``inputs`` cycled: ``reps`` warm-up calls, then ``reps`` timed ones. Median wall ms between
    synchronisations and, on CUDA, median device ms between events (None on the CPU)."""
    for i in range(reps):
        fn(inputs[i % len(inputs)])
    wall, device = [], []
    for i in range(reps):
        t0 = sync_time()
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        fn(inputs[i % len(inputs)])
        if dev.type == "cuda":
            end.record()
        wall.append(sync_time() - t0)
        if dev.type == "cuda":
            device.append(start.elapsed_time(end))
    return {"ms": 1e3 * median(wall), "gpu_ms": median(device) if device else None}


def part_inputs(obj: nn.Module, s: Setup) -> list[dict]:
    """Per batch (the first eight): the batch, its decoded features, the cached head's logits, the valid masks, and
    student-shaped leaves (the student's features, adapted features and logits in the autocast dtype)."""
    from frs_cli.train.objectives import valid_masks

    act = torch.bfloat16 if s.amp["enabled"] else torch.float32
    chans = [lv.channels for lv in obj.student.levels]
    leaf = lambda t, c=None: torch.randn((t.shape[0], c or t.shape[1], *t.shape[2:]), device=s.dev,
                                         dtype=act).requires_grad_()
    out = []
    with torch.no_grad(), torch.autocast(**s.amp):
        for b in s.batches[:8]:
            t = obj.teacher_side(b, need_logits=True)
            # copies: with distill.cuda_graphs the next batch's replay overwrites the teacher side's outputs
            feats, logits = [f.clone() for f in t.features], [z.clone() for z in t.cls_logits]
            out.append({"batch": b, "features": feats, "logits": logits, "masks": t.masks,
                        "valid": valid_masks(b.image_sizes, feats, obj.student.strides),
                        "student": [leaf(f, c) for f, c in zip(feats, chans)],
                        "adapted": [leaf(f) for f in feats], "student_logits": [leaf(z) for z in logits]})
    return out


def cached_parts(obj: nn.Module, s: Setup, reps: int) -> dict[str, dict]:
    """Each part of the cached FRS step alone (module docstring, 4.) on the full objective ``obj``."""
    from frs_cli.losses import _weights, feature_loss, head_loss
    from frs_cli.train.canvas import crop_stack, level_grids, on_own_canvas
    from frs_cli.train.objectives import teacher_autocast, valid_masks

    side, strides = obj.teacher_side, obj.student.strides
    head_dtype = next(side.cls_head.parameters()).dtype
    inputs = part_inputs(obj, s)

    def decode(x):
        c = x["batch"].teacher
        return [side.encoding.decode(f, None if c.scales is None else c.scales[lv]) for lv, f in enumerate(c.features)]

    def head(x):  # CachedTeacher's head on each canvas, on already decoded features
        feats = x["features"]

        def run(indices, size):
            own = [crop_stack(f, indices, g) for f, g in zip(feats, level_grids(size, side.strides))]
            with teacher_autocast(own[0].device, side.autocast):
                return [side.cls_head([f.to(head_dtype) for f in own])]

        return on_own_canvas(run, x["batch"].geometries, [tuple(f.shape[-2:]) for f in feats])

    def adapters(x):
        for t in x["student"]:
            t.grad = None
        with torch.autocast(**s.amp):  # bf16 leaves into float32 convs, as in the step
            outs = obj.adapters(x["student"])
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    def loss_backward(loss_fn, student_key, teacher_key):
        def fn(x):
            for t in x[student_key]:
                t.grad = None
            with torch.autocast(**s.amp):
                loss = loss_fn(x[student_key], x[teacher_key], x["masks"], x["valid"])
            loss.backward()
        return fn

    forward_only = {
        "decode": decode,
        "cached_head": head,
        "cached_teacher_side": lambda x: side(x["batch"], need_logits=True),
        "valid_masks": lambda x: valid_masks(x["batch"].image_sizes, x["features"], strides),
        # N_l = sum of S over the valid positions, every level once (feature_loss and head_loss each compute it)
        "mask_sums": lambda x: [_weights(x["masks"], x["valid"], lv).sum() for lv in range(len(x["masks"]))],
    }
    out = {}
    with torch.no_grad(), torch.autocast(**s.amp):
        for name, fn in forward_only.items():
            out[name] = time_call(fn, inputs, reps, s.dev)
    for name, fn in {"adapters_fwd_bwd": adapters,
                     "feature_loss_fwd_bwd": loss_backward(feature_loss, "adapted", "features"),
                     "head_loss_fwd_bwd": loss_backward(head_loss, "student_logits", "logits")}.items():
        out[name] = time_call(fn, inputs, reps, s.dev)
    return out


def online_part(obj: nn.Module, s: Setup, reps: int) -> dict:
    """The live teacher side (``OnlineTeacher``, logits and masks included) alone, forward only."""
    with torch.no_grad(), torch.autocast(**s.amp):
        return time_call(lambda b: obj.teacher_side(b, need_logits=True), s.batches[:8], reps, s.dev)


def breakdown(steps: dict, parts: dict) -> dict:
    """Increments between the cumulative variants, each with its share of (d) - (a); each row of ``parts`` (the parts
    alone) gets its share too."""
    extra = steps["full"]["step_ms"] - steps["plain"]["step_ms"]
    share = lambda ms: ms / extra if extra > 0 else None  # no share of a difference the noise made non-positive
    inc = {name: {"ms": steps[hi]["step_ms"] - steps[lo]["step_ms"]} for name, hi, lo in INCREMENTS}
    for row in (*inc.values(), *parts.values()):
        row["share"] = share(row["ms"])
    return {"extra_ms": extra, "full_over_plain": steps["full"]["step_ms"] / steps["plain"]["step_ms"],
            "online_over_full": steps["online"]["step_ms"] / steps["full"]["step_ms"], "increments": inc}


def measure(args, s: Setup, argv: list[str]) -> dict:
    """Every variant's steps and losses, the parts alone and the breakdown, as the raw JSON's dict."""
    res = {"command": "python3 bench/step_breakdown.py " + " ".join(argv),
           "device": torch.cuda.get_device_name(0) if s.dev.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "args": {k: str(v) for k, v in vars(args).items()}, "batches": len(s.batches),
           "canvases": sorted({str(b.geometries[0].padded_size) for b in s.batches}),
           "views_in_cache": 2 * len(s.coco), "losses": {}, "steps": {}, "parts": {}}
    for name in VARIANTS:
        obj = build_variant(name, s)
        res["losses"][name] = first_losses(obj, s)
        steps, _, _ = timed_steps(obj, itertools.cycle(s.batches), s.dev, s.amp, args.warmup, args.steps)
        res["steps"][name] = {"step_ms": 1e3 * median(steps), "step_ms_mean": 1e3 * sum(steps) / len(steps),
                              "step_ms_min": 1e3 * min(steps), "step_ms_max": 1e3 * max(steps), "steps": len(steps)}
        if name == "full":
            res["parts"].update(cached_parts(obj, s, args.part_reps))
        elif name == "online":
            res["parts"]["online_teacher_side"] = online_part(obj, s, args.part_reps)
        print(name, res["steps"][name], flush=True)
        del obj
        if s.dev.type == "cuda":
            torch.cuda.empty_cache()
    res["breakdown"] = breakdown(res["steps"], {k: v for k, v in res["parts"].items() if k != "online_teacher_side"})
    return res


def table(res: dict) -> str:
    """The markdown tables of one result."""
    pct = lambda x: "–" if x is None else f"{100 * x:.0f} %"
    ms = lambda x: "–" if x is None else f"{x:.2f}"
    bd, steps = res["breakdown"], res["steps"]
    lines = [f"{res['device']}, {res['date']}, torch {res['torch']}: `{res['command']}`", "",
             "| variant | step ms (median) | mean | + over the previous variant |", "|---|---|---|---|"]
    for i, name in enumerate(VARIANTS):
        prev = VARIANTS[i - 1] if 0 < i < 4 else None
        plus = "–" if prev is None else ms(steps[name]["step_ms"] - steps[prev]["step_ms"])
        lines.append(f"| ({LETTERS[name]}) {name} | {ms(steps[name]['step_ms'])} | {ms(steps[name]['step_ms_mean'])} "
                     f"| {plus} |")
    lines += ["", (f"(d) - (a) = {bd['extra_ms']:.2f} ms; (d) / (a) = {bd['full_over_plain']:.3f}; "
               f"online / (d) = {bd['online_over_full']:.3f}"), "",
              "| part | ms | device ms (events) | share of (d) - (a) |", "|---|---|---|---|"]
    for name, row in bd["increments"].items():
        lines.append(f"| step increment: {name} | {ms(row['ms'])} | – | {pct(row['share'])} |")
    for name, row in res["parts"].items():
        lines.append(f"| alone: {name} | {ms(row['ms'])} | {ms(row['gpu_ms'])} | {pct(row.get('share'))} |")
    return "\n".join(lines)


def run(args, argv: list[str]) -> tuple[dict, Setup]:
    """Prepare, measure, write --out/breakdown.json and print the tables; the result and its setup (tests)."""
    args.out.mkdir(parents=True, exist_ok=True)
    s = prepare(args)
    res = measure(args, s, argv)
    (args.out / "breakdown.json").write_text(json.dumps(res, indent=1))
    print(table(res), flush=True)
    return res, s


def main() -> None:
    run(parse_args(), sys.argv[1:])


if __name__ == "__main__":
    main()
