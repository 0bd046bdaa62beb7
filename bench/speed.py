"""Step-time benchmark at COCO size on one GPU: what a cached teacher saves over running it online.

Measures, in one run on one card (random weights are fine for timing):
  - teacher inference (features + logits, no post-processing) vs ``frs teacher-cache`` throughput;
  - per teacher -> student pair: plain student step, online-FRS step, cached-FRS step (targets read from disk
    through the real DataLoader), with the share of the step spent waiting for data. Steps run as ``frs distill``
    runs them by default: batches of one canvas (``train.group_by_canvas``), each shape one replayed CUDA graph
    (``train.cuda_graphs``), the next step launched before the last one ends; ``--no-trainer-steps``: mixed-canvas
    batches, eager, one step at a time, as this bench timed them up to session 46. ``bench/cached_step.py``
    measures the issue-13 step targets;
  - cache bytes per image, and the disk's sequential write bandwidth (the ceiling of teacher-cache there);
  - where teacher-cache's time goes (loader, device, writing), the image loader's rate alone, and the last
    encoding's teacher-cache rate into a memory-backed folder (--tmpfs), i.e. with the disk taken out.
Every figure goes to --out as JSON as soon as it exists. Example:

    python3 bench/speed.py --out $OUT/speed.json --work /tmp/speed --pairs r50v2-r50,x101-r50,x101-r18
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

ARCH = {"r50v2": "retinanet_resnet50_fpn_v2", "r50": "retinanet_resnet50_fpn", "r18": "retinanet_resnet18_fpn",
        "x101": "retinanet_resnext101_32x8d_fpn", "small": "retinanet_small_fpn", "tiny": "retinanet_tiny_fpn"}


def sync_time() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def disk_write_mb_s(directory: Path, total_mb: int = 1024, file_mb: int = 64) -> float:
    """Sequential write bandwidth into ``directory``, fsync included: the ceiling of any cache writer there."""
    import os

    block = os.urandom(file_mb << 20)
    t = time.perf_counter()
    for i in range(total_mb // file_mb):
        with open(directory / f"disk_probe_{i}", "wb") as f:
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
    seconds = time.perf_counter() - t
    for i in range(total_mb // file_mb):
        (directory / f"disk_probe_{i}").unlink()
    return total_mb * 1.048576 / seconds


def cpu_name() -> str:
    """The host CPU's model name (for the machine line of a CPU figure)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_objective(mode: str, student, recipe, coco, num_classes: int, store=None):
    """(objective, dataset) of one timed step: ``plain`` (GT only), ``online`` (the live teacher), ``gt_cached``
    (GT only, on the batches of ``store``, a ``TeacherCache``) or a cached mode reading ``store``. What trains is
    laid out as the trainer lays it out (``recipe.train.channels_last``)."""
    from frs_cli.cache.reader import CachedViews
    from frs_cli.models import build_detector
    from frs_cli.train.loop import train_channels_last
    from frs_cli.train.objectives import CachedTeacher, FRSObjective, GTObjective, OnlineTeacher

    if mode == "plain":
        objective, ds = GTObjective(student), coco
    elif mode == "gt_cached":  # the plain step fed the cached batches: their targets reach the device, unused
        objective, ds = GTObjective(student), CachedViews(coco, store)
    elif mode == "online":
        teacher = build_detector(recipe.teacher, num_classes)
        objective, ds = FRSObjective(student, teacher.signature, OnlineTeacher(teacher), recipe.distill), coco
    else:
        objective = FRSObjective(student, store.signature,
                                 CachedTeacher.from_cache(store, recipe.distill.cuda_graphs), recipe.distill)
        ds = CachedViews(coco, store)
    if recipe.train.channels_last:
        train_channels_last(objective)
    return objective, ds


def sgd(obj):
    """The benches' optimizer for ``obj``'s trainable parameters."""
    import torch

    return torch.optim.SGD([q for q in obj.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)


class InStepCopies:
    """Batches copied to ``dev`` on the step's own stream as the step takes each one, with no copy ahead: the A/B
    partner of ``DevicePrefetcher`` (``--no-device-prefetch``), as the steps were fed before it. ``data_seconds``
    as the prefetcher's: the time spent waiting for the loader."""

    def __init__(self, batches, dev):
        self._batches, self.device, self.data_seconds = iter(batches), dev, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        batch = next(self._batches)
        self.data_seconds += time.perf_counter() - t
        return batch.to(self.device, non_blocking=True)


def feeder(batches, dev, prefetch: bool = True):
    """``batches`` as a step bench feeds them: a ``DevicePrefetcher`` (as ``frs distill``), or ``InStepCopies``."""
    from frs_cli.data.prefetch import DevicePrefetcher

    return DevicePrefetcher(batches, dev) if prefetch else InStepCopies(batches, dev)


def step_loader(dataset, coco, batch: int, workers: int, dev, count: int):
    """A DataLoader of at least ``count`` batches over ``dataset`` (``coco``'s views, or cached views of them), made as
    the trainer makes them by default (``train.group_by_canvas``): each image once per epoch in a view drawn at
    random, in batches of one canvas, as many epochs as ``count`` needs in one stream (``RunBatches``), so its workers
    never restart; the DataLoader is the trainer's own (``make_loader``)."""
    from frs_cli.data.canvas_batches import CanvasBatchSampler, RunBatches, view_canvases
    from frs_cli.data.coco import ViewSampler
    from frs_cli.train.loop import make_loader

    views = ("orig", "hflip")
    batches = CanvasBatchSampler(ViewSampler(len(dataset), views, shuffle=True, seed=0), batch,
                                 view_canvases(coco, views))
    epochs = -(-count // max(1, len(batches)))
    return make_loader(dataset, RunBatches(batches, 0, 0, epochs), workers, dev)


def timed_steps(obj, batches, dev, amp: dict, warmup: int, steps: int, opt=None, ahead: bool = False,
                phases: dict[str, list[float]] | None = None, graphs=None):
    """Train ``obj`` (SGD; ``opt``, else a new ``sgd(obj)``) on ``warmup + steps`` batches of the iterator
    ``batches``, as ``frs distill`` feeds its steps: through a ``DevicePrefetcher``, so each batch's copy to the
    device overlaps the step before (pass a ``feeder``, prefetching or not, to keep its batch in flight across
    calls). A step is timed from the end of the previous one to the end of its own work on the step's stream (not
    the next batch's copy); its data wait is the time spent waiting for the loader. Returns the timed steps'
    seconds, their data-wait seconds and the last batch.

    ``ahead``: as ``Trainer.run_epoch`` runs its steps, the host launches step k+1 before it waits for step k's end
    (``StepEnd``), so the device does not idle while the host launches; a step's time is then from the moment the
    host saw the previous step end to the moment it saw its own end. Without it, the host waits for each step before
    launching the next (the benches' figures up to session 12). The times of one call still sum to its wall time,
    but a call's first step also holds the launch of the second, and its last step only what was left of it on the
    device: use many steps per call. On the CPU, where a step runs as it is launched, every time shifts by a step.

    ``phases``: appends to its lists ``forward``, ``backward`` and ``optimizer`` the seconds the host spent launching
    each part of every timed step (on the GPU the host returns before the work is done: these are launch times).

    ``graphs``: a ``StepGraphs`` over ``obj`` (``train.cuda_graphs``): as ``Trainer.run_step``, a batch it takes runs
    forward and backward as one replayed graph (``forward`` then holds both, ``backward`` nothing)."""
    import torch

    obj.to(dev).train()
    opt = opt or sgd(obj)
    batches = batches if hasattr(batches, "data_seconds") else feeder(batches, dev)  # a feeder of ``feeder``
    step_s, wait_s = [], []
    t_prev = stream_time(dev) if ahead else 0.0  # ahead: when the host saw the latest step end
    pending = None  # ahead: (end, index, data wait) of the step launched before the latest one

    def close(step) -> None:
        nonlocal t_prev
        end, index, wait = step
        t = end.wait()
        if index >= warmup:
            step_s.append(t - t_prev)
            wait_s.append(wait)
        t_prev = t

    for i in range(warmup + steps):
        if not ahead:
            t0 = stream_time(dev)
        waited = batches.data_seconds
        batch = next(batches)
        wait = batches.data_seconds - waited
        t_launch = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**amp):
            graphed = graphs.step(batch, 10_000) if graphs is not None else None
            if graphed is None:
                loss = sum(obj(batch, 10_000).values())
        t_forward = time.perf_counter()
        if graphed is None:
            loss.backward()
        t_backward = time.perf_counter()
        opt.step()
        if phases is not None and i >= warmup:
            for key, seconds in (("forward", t_forward - t_launch), ("backward", t_backward - t_forward),
                                 ("optimizer", time.perf_counter() - t_backward)):
                phases.setdefault(key, []).append(seconds)
        if ahead:
            step = (StepEnd(dev), i, wait)
            if pending is not None:
                close(pending)
            pending = step
            continue
        t2 = stream_time(dev)
        if i >= warmup:
            step_s.append(t2 - t0)
            wait_s.append(wait)
    if pending is not None:
        close(pending)
    return step_s, wait_s, batch


class StepEnd:
    """The end of the work queued so far on ``dev``'s current stream: ``wait()`` returns ``time.perf_counter()`` once
    that work is done (a CUDA event), without waiting for work queued after it; elsewhere at once."""

    def __init__(self, dev):
        import torch

        self.event = None
        if torch.device(dev).type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(dev))

    def wait(self) -> float:
        if self.event is not None:
            self.event.synchronize()
        return time.perf_counter()


def stream_time(dev) -> float:
    """``time.perf_counter()`` once the current stream of ``dev`` is idle (side streams may still work)."""
    import torch

    if torch.device(dev).type == "cuda":
        torch.cuda.current_stream(dev).synchronize()
    return time.perf_counter()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--pairs", default="r50v2-r50,x101-r50,x101-r18")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--repeat", type=int, default=4, help="copies of the generated images (teacher-cache runs on all)")
    p.add_argument("--size", type=int, default=1333, help="long side of the generated images")
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--dtypes", default="float16,int8,int5", help="cache encodings to write and read")
    p.add_argument("--trainer-steps", action=argparse.BooleanOptionalAction, default=True,
                   help="time the steps on one-canvas batches through StepGraphs, as the trainer runs them")
    p.add_argument("--tmpfs", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                   help="a memory-backed folder: the last encoding's cache is also written there (no disk)")
    args = p.parse_args()

    import torch

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews, OriginalViews, ViewSampler, collate, collate_originals
    from frs_cli.data.synth import SynthConfig, generate, replicate
    from frs_cli.dist import setup
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.step_graphs import StepGraphs

    ctx = setup()
    dev = ctx.device
    res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d"),
           "args": {k: str(v) for k, v in vars(args).items()}, "teachers": {}, "pairs": {}}

    def save():
        args.out.write_text(json.dumps(res, indent=1))

    args.work.mkdir(parents=True, exist_ok=True)
    res["disk_write_mb_s"] = disk_write_mb_s(args.work)
    print(f"disk: {res['disk_write_mb_s']:.0f} MB/s sequential write with fsync", flush=True)
    data = args.work / "data"
    if not data.exists():
        generate(data, SynthConfig(train=args.images, val=1, size=args.size, seed=0, aspect_jitter=True))
        replicate(data, args.repeat)
    base = {"data": {"root": str(data)}, "geometry": {"min_size": args.min_size, "max_size": args.max_size},
            "cache": {"batch_size": args.batch, "workers": args.workers, "preload_mb": 0}}
    dtypes = args.dtypes.split(",")
    coco = CocoViews.from_config(recipe_from_dict(base).data, "train", recipe_from_dict(base).geometry)
    res["padded_sizes"] = sorted({str(coco.geometry_of(i, "orig").padded_size) for i in range(len(coco))})
    amp = {"device_type": dev.type, "dtype": torch.bfloat16, "enabled": dev.type == "cuda"}

    def loader(dataset, shuffle=True):
        sampler = ViewSampler(len(dataset), ("orig", "hflip"), shuffle=shuffle, seed=0)
        return torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=args.workers,
                                           collate_fn=collate, pin_memory=dev.type == "cuda", drop_last=True,
                                           prefetch_factor=4, persistent_workers=True)

    # what the image pipeline alone delivers (the writer's loader: decode, resize, flip, batch), no GPU
    images_only = loader(coco, shuffle=False)
    for _ in images_only:  # workers started and warm
        pass
    t, n = time.perf_counter(), 0
    for b in images_only:
        n += len(b.image_ids)
    res["loader_img_s"] = n / (time.perf_counter() - t)
    del images_only
    originals = torch.utils.data.DataLoader(OriginalViews(coco), batch_size=args.batch, num_workers=args.workers,
                                            collate_fn=collate_originals, pin_memory=dev.type == "cuda",
                                            prefetch_factor=4, persistent_workers=True)
    for _ in originals:
        pass
    t, n = time.perf_counter(), 0
    for b in originals:
        n += len(b)
    res["loader_decode_only_img_s"] = n / (time.perf_counter() - t)
    del originals
    print(f"loader alone: {res['loader_img_s']:.0f} img/s decoded and resized, "
          f"{res['loader_decode_only_img_s']:.0f} img/s decoded only ({args.workers} workers)", flush=True)
    save()

    caches = {}
    for tname in sorted({pair.split("-")[0] for pair in args.pairs.split(",")}):
        torch.manual_seed(0)
        teacher = build_detector(ModelConfig(arch=ARCH[tname]), 5).to(dev).eval()
        batches = [b.to(dev) for b, _ in zip(loader(coco, shuffle=False), range(3))]
        with torch.no_grad(), torch.autocast(**amp):
            for b in batches:
                teacher(b.images, b.image_sizes, detect=False)
            t = sync_time()
            n = 0
            for _ in range(3):
                for b in batches:
                    teacher(b.images, b.image_sizes, detect=False)
                    n += len(b.image_ids)
            infer = n / (sync_time() - t)
        ckpt = args.work / f"{tname}.pt"
        from frs_cli.train.checkpoint import save_model

        save_model(ckpt, teacher, ModelConfig(arch=ARCH[tname]), coco.index, recipe_from_dict(base).geometry)
        res["teachers"][tname] = {"inference_img_s": infer}
        for dtype in dtypes:
            recipe = recipe_from_dict({**base, "teacher": {"arch": ARCH[tname], "weights": str(ckpt)},
                                       "cache": {**base["cache"], "dtype": dtype}})
            path = str(args.work / f"{tname}_{dtype}.zarr")
            s = write_teacher_cache(recipe, path, ctx=ctx)
            nbytes = TeacherCache(path).nbytes_stored()
            caches[tname, dtype] = (path, recipe)
            mb = nbytes["views"] / 1e6 / s.views_total
            row = {"cache_views_s": s.views_per_second, "cache_over_inference": s.views_per_second / infer,
                   "cache_mb_per_view": mb, "disk_bound_views_s": res["disk_write_mb_s"] / mb,
                   "stage_seconds": s.stage_seconds, "loop_seconds": s.seconds}
            if dtype == dtypes[-1]:  # what each part of the write path brings: threads instead of writer processes,
                # then the CPU resizing images in the loader workers too (the pipeline before both)
                for name, kw in (("threads", {"write_processes": 0}),
                                 ("threads_cpu_resize", {"write_processes": 0, "resize_on_device": False})):
                    tmp = args.work / f"{tname}_{dtype}_{name}.zarr"
                    t = write_teacher_cache(recipe, str(tmp), ctx=ctx, **kw)
                    row[f"{name}_cache_views_s"] = t.views_per_second
                    row[f"{name}_stage_seconds"] = t.stage_seconds
                    shutil.rmtree(tmp)
            if args.tmpfs is not None and dtype == dtypes[-1]:  # the same writer with the disk taken out
                tmp = args.tmpfs / f"frs_speed_{tname}_{dtype}.zarr"
                if shutil.disk_usage(args.tmpfs).free > 2 * mb * 1e6 * s.views_total:
                    t = write_teacher_cache(recipe, str(tmp), ctx=ctx)
                    row["tmpfs_cache_views_s"] = t.views_per_second
                    row["tmpfs_cache_over_inference"] = t.views_per_second / infer
                    row["tmpfs_stage_seconds"] = t.stage_seconds
                    shutil.rmtree(tmp)
            res["teachers"][tname][dtype] = row
        save()
        print(tname, res["teachers"][tname], flush=True)
        del teacher
        torch.cuda.empty_cache()

    for pair in args.pairs.split(","):
        tname, sname = pair.split("-")
        row = {}
        for mode in ("plain", "online", *(f"cached_{d}" for d in dtypes)):
            path, recipe = caches[tname, mode.removeprefix("cached_") if mode.startswith("cached") else dtypes[0]]
            recipe = replace(recipe, student=ModelConfig(arch=ARCH[sname]))
            torch.manual_seed(0)
            student = build_detector(recipe.student, 5)
            store = TeacherCache(path) if mode.startswith("cached") else None
            obj, ds = step_objective(mode, student, recipe, coco, 5, store)
            # with one-canvas batches a shape's first step captures its graph: the warm-up also covers one step of
            # each canvas, so that (in a shuffled order) most captures fall before the timed steps
            warmup = 3 + (len(res["padded_sizes"]) if args.trainer_steps else 0)
            if args.trainer_steps:  # one loader, long enough for every step: no worker restarts in the timing
                steps_loader = step_loader(ds, coco, args.batch, args.workers, dev, warmup + args.steps)
            else:
                steps_loader = loader(ds)
                assert warmup + args.steps <= len(steps_loader), "--steps + 3 batches must fit in one pass over --images"
            graphs = StepGraphs(obj.to(dev), capture=dev.type == "cuda") if args.trainer_steps else None
            steps, waits, batch = timed_steps(obj, iter(steps_loader), dev, amp, warmup, args.steps,
                                              graphs=graphs, ahead=args.trainer_steps)
            row[mode] = {"step_ms": 1000 * median(steps), "data_wait_share": sum(waits) / sum(steps),
                         "data_wait_share_median": median([w / t for w, t in zip(waits, steps)]),
                         "warmup_steps": warmup,
                         **({} if graphs is None else {"step_graphs_captured": graphs.captured})}
            if mode != "plain":  # the teacher side alone: the online forward, or decoding + the head on cached features
                with torch.no_grad(), torch.autocast(**amp):
                    times = []
                    for _ in range(8):
                        t0 = sync_time()
                        obj.teacher_side(batch, need_logits=True)
                        times.append(sync_time() - t0)
                row[mode]["teacher_side_ms"] = 1000 * median(times[2:])
            del obj, student, graphs, steps_loader
            torch.cuda.empty_cache()
        for d in dtypes:
            row[f"online_over_cached_{d}"] = row["online"]["step_ms"] / row[f"cached_{d}"]["step_ms"]
            row[f"cached_{d}_over_plain"] = row[f"cached_{d}"]["step_ms"] / row["plain"]["step_ms"]
        res["pairs"][pair] = row
        save()
        print(pair, row, flush=True)


if __name__ == "__main__":
    main()
