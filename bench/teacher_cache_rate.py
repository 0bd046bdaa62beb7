"""teacher-cache against pure inference, per teacher, encoding and teacher-pass variant, with op counts per batch.

Same teacher (random weights), same images, same precision (bf16 autocast on CUDA; with --tiny, CPU autocast):
  - ``inference_img_s``: the eager forward over the cache's own batches (features + logits, no post-processing),
    float32 weights under autocast, as ``bench/speed.py`` measures pure inference; ``inference_bf16_cl_img_s``:
    the same forward with the weights cast to bf16 once and channels-last (the fastest eager forward);
  - per variant of the teacher pass (``frs_cli.cache.teacher_pass``): ``autocast`` (float32 weights, NCHW: the
    pass before this change), ``bf16_cl`` (weights cast once, channels-last), ``graphs`` (plus one CUDA graph
    per batch shape; CUDA only): the pass alone (forward, masks, int8 encoding; no store) in img/s, the ops it
    dispatches per batch (a dispatch counter: aten ops, dtype casts, casts of a weight, memory-format
    conversions, host syncs) and, on CUDA, what the profiler sees per batch (kernel and graph launches,
    NCHW<->NHWC kernels, synchronising calls);
  - per encoding and variant: ``frs teacher-cache``'s views/s in its write loop over the same images (both
    views), and its ratio to both inference rates; the cache's MB a view in its store (``mb_per_view``, the
    bytes that grow with the views, as ``bench/cached_step.py`` counts them) and, on Linux,
    the host's unwritten page cache over the write (``dirty_pages``: ``Dirty`` and ``Writeback`` of
    /proc/meminfo at its start, end and peak, in GB), beside the host's limits for it (``host``: the vm.dirty_*
    settings and the memory available at the start): a write that outgrows those limits is slowed by the kernel
    to the disk's pace.
All images are landscape (1333x1000, padded 800x1088 at min 800 / max 1333; at most 16 distinct, the rest copies):
one bucket, so one batch shape.
Every figure goes to --out as JSON as soon as it exists. On one H200 (about 4 minutes):

    CUDA_VISIBLE_DEVICES=0 OMP_NUM_THREADS=8 python3 bench/teacher_cache_rate.py --out $OUT/teacher_cache_rate.json \\
        --work /tmp/teacher_cache_rate

On the CPU, tiny models and images (seconds): ``python3 bench/teacher_cache_rate.py --tiny --out OUT --work DIR``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_load import meminfo_gb

ARCH = {"r50v2": "retinanet_resnet50_fpn_v2", "x101": "retinanet_resnext101_32x8d_fpn",
        "small": "retinanet_small_fpn", "tiny": "retinanet_tiny_fpn"}
SYNCS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "allclose"}  # ops that wait for the device
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ", "cudaMemcpy\0")


VM = Path("/proc/sys/vm")


def host_limits() -> dict:
    """The kernel's limits for unwritten page cache (vm.dirty_*) and the memory available now, where readable."""
    out = {}
    for name in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes"):
        try:
            out[name] = int((VM / name).read_text())
        except (OSError, ValueError):
            pass
    mem = meminfo_gb("MemTotal", "MemAvailable")
    if mem:
        out.update({"mem_total_gb": mem.get("MemTotal"), "mem_available_gb": mem.get("MemAvailable")})
    return out


class DirtyPages:
    """Samples /proc/meminfo's ``Dirty`` and ``Writeback`` every ``period`` seconds while a write runs (a thread):
    the page cache the write left for the kernel to write, against the limits where the kernel slows writers."""

    def __init__(self, period: float = 0.05):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        mem = meminfo_gb("Dirty", "Writeback")
        if mem and "Dirty" in mem:
            self.samples.append((mem["Dirty"], mem.get("Writeback", 0.0)))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def figures(self) -> dict | None:
        """GB at the start, the end and the peak (Dirty; Dirty + Writeback); None without /proc/meminfo."""
        if not self.samples:
            return None
        return {"start_gb": self.samples[0][0], "end_gb": self.samples[-1][0],
                "peak_gb": max(d for d, _ in self.samples),
                "peak_with_writeback_gb": max(d + w for d, w in self.samples), "samples": len(self.samples)}


class Timeline:
    """A ``frs_cli.progress.Progress`` that keeps the teacher-cache task's hand-overs as (seconds, views so far).

    A short write's rate carries its start-up (a writer process's first batches, the slots' first touch) and
    the final drain; a COCO-size write runs for hours at the rate its hand-overs settle to. Once every writer
    slot is full the main loop hands a batch over only when a writer frees one, so the rate over the second
    half of the hand-overs is that steady state, the write side's bound included."""

    def __init__(self):
        self.points: list[tuple[float, int]] = []
        self.stopped = math.nan
        self._on = False

    def start(self, description: str, total: int, completed: int = 0, unit: str = "it") -> None:
        self._on = description == "teacher-cache"  # not verify's or the teacher check's tasks
        if self._on:
            self.points = [(time.perf_counter(), 0)]

    def update(self, advance: int = 1, **fields) -> None:
        if self._on:
            self.points.append((time.perf_counter(), self.points[-1][1] + advance))

    def stop(self) -> None:
        if self._on:
            self.stopped, self._on = time.perf_counter(), False

    def log(self, message: str) -> None:
        pass

    def steady_views_s(self) -> float:
        """Views per second over the second half of the views handed over (nan with fewer than two hand-overs)."""
        if len(self.points) < 3:
            return math.nan
        (t_end, total), (t_half, half) = self.points[-1], next(p for p in self.points if p[1] >= self.points[-1][1] / 2)
        return (total - half) / (t_end - t_half) if t_end > t_half else math.nan

    def first_handovers(self, n: int = 8) -> list[float]:
        """Seconds from the loop's start to each of the first ``n`` hand-overs: where a write's start-up goes."""
        return [t - self.points[0][0] for t, _ in self.points[1:n + 1]]

    def drain_seconds(self) -> float:
        """From the last hand-over to the task's end: the writers finishing what was in flight."""
        return self.stopped - self.points[-1][0] if self.points else math.nan


def counting_mode(params: set[int]):
    """A dispatch mode that counts, per call, aten ops, dtype casts (and those of a tensor whose storage is in
    ``params``: a weight), memory-format conversions and ops that synchronise with the device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = {"ops": 0, "casts": 0, "weight_casts": 0, "layout_conversions": 0, "host_syncs": 0}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.overloadpacket.__name__
            c = self.counts
            c["ops"] += 1
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if name in SYNCS:
                c["host_syncs"] += 1
            if src is not None and isinstance(out, torch.Tensor) and name in ("_to_copy", "clone", "copy_"):
                if name != "copy_" and out.dtype != src.dtype:
                    c["casts"] += 1
                    c["weight_casts"] += src.untyped_storage().data_ptr() in params
                if out.dtype == src.dtype and out.dim() == 4 and (
                        out.is_contiguous() != src.is_contiguous()):
                    c["layout_conversions"] += 1
                if src.device.type != "cpu" and out.device.type == "cpu":
                    c["host_syncs"] += 1
            return out

    return Counter()


def profile_counts(fn) -> dict:
    """On CUDA, one call of ``fn`` under the profiler: runtime launches, graph launches, NCHW<->NHWC kernels and
    synchronising runtime calls."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    c = {"kernel_launches": 0, "graph_launches": 0, "nchw_nhwc_kernels": 0, "sync_calls": 0}
    for e in prof.events():
        n = e.name
        if n.startswith(("cudaLaunchKernel", "cuLaunchKernel")):
            c["kernel_launches"] += 1
        elif n.startswith("cudaGraphLaunch"):
            c["graph_launches"] += 1
        elif n.startswith(CUDA_SYNCS):
            c["sync_calls"] += 1
        if "nchwToNhwc" in n or "nhwcToNchw" in n:
            c["nchw_nhwc_kernels"] += 1
    c["sync_calls"] -= 1  # the synchronize that closes the measurement
    return c


def sync_time() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def landscape_data(root: Path, images: int, size: int) -> None:
    """``images`` landscape images (``size`` x 3/4 ``size``) with their annotations at ``root``: at most 16 distinct
    ones generated (about 0.2 s each), copied as often as needed (throughput needs views, not new ones)."""
    from frs_cli.data.synth import SynthConfig, generate, replicate

    distinct = min(images, 16)
    generate(root, SynthConfig(train=2 * distinct + 8, val=1, size=size, seed=0, aspect_jitter=True))
    ann = root / "annotations" / "instances_train.json"

    def keep_first(n: int) -> int:
        coco = json.loads(ann.read_text())
        keep = [im for im in coco["images"] if im["width"] > im["height"]][:n]
        ids = {im["id"] for im in keep}
        coco["images"], coco["annotations"] = keep, [a for a in coco["annotations"] if a["image_id"] in ids]
        ann.write_text(json.dumps(coco))
        return len(keep)

    got = keep_first(distinct)
    if got == 0:
        raise SystemExit(f"no landscape image among {2 * distinct + 8} generated")
    replicate(root, -(-images // got))
    keep_first(images)


def view_batches(coco, batch: int, device, distinct: int = 32) -> list:
    """The cache's batches (every image in both views, in plan order) as (images, sizes) on ``device``: the first
    ``distinct`` views resized (on the CPU, slow at COCO size), their batches repeated for the rest (copies)."""
    from frs_cli.data.coco import collate

    items = [(i, v) for i in range(len(coco)) for v in ("orig", "hflip")]
    made = []
    for k in range(0, min(len(items), distinct), batch):
        b = collate([coco[it] for it in items[k : k + batch]])
        made.append((b.images.to(device), b.image_sizes))
    return [made[j % len(made)] for j in range(-(-len(items) // batch))]


def rate(fn, batches, passes: int = 1) -> float:
    """img/s of ``fn(images, sizes)`` over ``batches`` after one warm-up call per batch shape."""
    seen = set()
    for images, sizes in batches:
        if images.shape not in seen:
            seen.add(images.shape)
            fn(images, sizes)
    t, n = sync_time(), 0
    for _ in range(passes):
        for images, sizes in batches:
            fn(images, sizes)
            n += len(sizes)
    return n / (sync_time() - t)


def variants(dev, tiny: bool) -> dict:
    from frs_cli.cache.teacher_pass import PassOptions

    amp = dev.type == "cuda" or tiny  # the tiny CPU mode runs CPU autocast, so the casts show in the counts
    out = {"autocast": PassOptions(amp=amp),
           "bf16_cl": PassOptions(amp=amp, bf16_weights=True, channels_last=True)}
    if dev.type == "cuda":
        out["graphs"] = PassOptions(amp=amp, bf16_weights=True, channels_last=True, cuda_graphs=True)
    return out


def measure_teacher(tname: str, args, dev, batches, res: dict) -> dict:
    """Inference and teacher-pass figures of one teacher (random weights, seed 0)."""
    import torch

    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.teacher_pass import TeacherPass, cast_weights_once
    from frs_cli.models import ModelConfig, build_detector

    torch.manual_seed(0)
    teacher = build_detector(ModelConfig(arch=ARCH[tname], anchor_size=args.anchor_size), 5).to(dev).eval()
    teacher.requires_grad_(False)
    amp = {"device_type": dev.type, "dtype": torch.bfloat16}
    row = {"variants": {}}

    def forward(model):
        def run(images, sizes):
            with torch.no_grad(), torch.autocast(**amp):
                return model(images, sizes, detect=False)
        return run

    row["inference_img_s"] = rate(forward(teacher), batches, args.passes)
    fast = copy.deepcopy(teacher)
    cast_weights_once(fast)
    fast.to(memory_format=torch.channels_last)
    row["inference_bf16_cl_img_s"] = rate(forward(fast), batches, args.passes)
    del fast
    for vname, options in variants(dev, args.tiny).items():
        if not args.pass_figures:
            break
        model = copy.deepcopy(teacher)
        tpass = TeacherPass(model, FeatureEncoding("int8"), options).prepare()
        params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        v = {"pass_img_s": rate(tpass, batches, args.passes)}
        images, sizes = batches[0]
        with counting_mode(params) as counter:
            tpass(images, sizes)
        v["dispatch_per_batch"] = counter.counts
        if dev.type == "cuda":
            v["profile_per_batch"] = profile_counts(lambda f=tpass, x=images, s=sizes: f(x, s))
        row["variants"][vname] = v
        del tpass, model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


TARGET = 0.9  # issue 13: teacher-cache at >= 0.9x pure inference, per teacher and encoding; a miss by any margin


def verdicts(c: dict) -> dict:
    """The target's verdicts for one write ``c``: the whole write's ("met") and its steady state's ("steady_met":
    what a COCO-size write, hours long, settles to before the disk's bound, which bench/write_bound.py sets against
    it). Writes from before the steady rate was recorded have none and miss it."""
    steady = c.get("steady_over_inference")
    return {"over_inference": c["over_inference"], "met": c["over_inference"] >= TARGET,
            "steady_over_inference": steady, "steady_met": steady is not None and steady >= TARGET}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--teachers", default=None, help="default: r50v2,x101 (--tiny: tiny)")
    p.add_argument("--dtypes", default=None, help="cache encodings; default: int8,int5,float16 (--tiny: int8,int5)")
    p.add_argument("--images", type=int, default=None, help="images, each cached in both views (default 128; tiny 4)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default 12; tiny 0)")
    p.add_argument("--passes", type=int, default=2, help="timed passes over the batches for the inference rates")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny models, 96-px images: checks the bench runs")
    p.add_argument("--write-processes", default="", help="comma list: each teacher-cache write once per count, in "
                   "turn (default: the recipe's cache.write_processes)")
    p.add_argument("--variants", default="", help="comma list of teacher-pass variants to write with, in turn "
                   "(repeats allowed: graphs,bf16_cl,bf16_cl,graphs; default all once)")
    p.add_argument("--pass-figures", action=argparse.BooleanOptionalAction, default=True,
                   help="measure each variant's pass alone (rate, op and profiler counts); off: inference and writes "
                        "only (an A/B of two library versions runs the bench once per version)")
    args = p.parse_args()

    import torch

    import frs_cli
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup
    from frs_cli.models import ModelConfig
    from frs_cli.train.checkpoint import save_model

    tiny = args.tiny
    args.teachers = args.teachers or ("tiny" if tiny else "r50v2,x101")
    args.dtypes = args.dtypes or ("int8,int5" if tiny else "int8,int5,float16")
    args.images = args.images or (4 if tiny else 128)
    args.workers = (0 if tiny else 12) if args.workers is None else args.workers
    args.anchor_size = 16 if tiny else 0
    size, min_size, max_size = (96, 64, 128) if tiny else (1333, 800, 1333)
    ctx = setup("cpu" if tiny else None)
    dev = ctx.device
    res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           # the output by its name and frs_cli relative to the working folder: no path of the machine it ran on
           "args": {k: (Path(v).name if k == "out" else str(v)) for k, v in vars(args).items()}, "teachers": {},
           "library": os.path.relpath(Path(frs_cli.__file__).resolve().parent)}  # which frs_cli wrote (an A/B)

    def save():
        args.out.write_text(json.dumps(res, indent=1))

    shutil.rmtree(args.work, ignore_errors=True)
    data = args.work / "data"
    landscape_data(data, args.images, size)
    base = {"data": {"root": str(data)}, "geometry": {"min_size": min_size, "max_size": max_size},
            "cache": {"batch_size": args.batch, "workers": args.workers, "preload_mb": 0,
                      **({"write_processes": 0} if tiny else {})}}
    recipe0 = recipe_from_dict(base)
    coco = CocoViews.from_config(recipe0.data, "train", recipe0.geometry)
    res["padded_sizes"] = sorted({str(coco.geometry_of(i, "orig").padded_size) for i in range(len(coco))})
    res["views"] = 2 * len(coco)
    res["host"] = host_limits()
    batches = view_batches(coco, args.batch, dev)
    for tname in args.teachers.split(","):
        row = res["teachers"][tname] = measure_teacher(tname, args, dev, batches, res)
        save()
        torch.manual_seed(0)
        cfg = ModelConfig(arch=ARCH[tname], anchor_size=args.anchor_size)
        from frs_cli.models import build_detector

        ckpt = args.work / f"{tname}.pt"
        save_model(ckpt, build_detector(cfg, 5), cfg, coco.index, recipe0.geometry)
        best = max(row["inference_img_s"], row["inference_bf16_cl_img_s"])
        for dtype in args.dtypes.split(","):
            recipe = recipe_from_dict({**base, "teacher": {"arch": cfg.arch, "weights": str(ckpt),
                                                           "anchor_size": args.anchor_size},
                                       "cache": {**base["cache"], "dtype": dtype}})
            known = variants(dev, tiny)
            chosen = [v for v in args.variants.split(",") if v] or list(known)  # in turn, as given (repeats too)
            counts = [int(n) for n in args.write_processes.split(",") if n] or [None]
            turns = [(v, procs) for v in chosen if v in known for procs in counts]
            for i, (vname, procs) in enumerate(turns):  # one key per (variant, writer count, turn)
                options = known[vname]
                key = (vname if len(turns) == len(set(turns)) and procs is None
                       else f"{vname}_w{'default' if procs is None else procs}_{i}")
                path = args.work / f"{tname}_{dtype}_{key}.zarr"
                timeline = Timeline()
                started = time.time()
                with DirtyPages() as dirty:
                    s = write_teacher_cache(recipe, str(path), ctx=ctx, pass_options=options, write_processes=procs,
                                            progress=timeline)
                steady = timeline.steady_views_s()
                row.setdefault("caches", {}).setdefault(dtype, {})[key] = {
                    "views_s": s.views_per_second, "over_inference": s.views_per_second / row["inference_img_s"],
                    "over_best_inference": s.views_per_second / best, "views": s.views_written,
                    "write_processes": s.write_processes,
                    "loop_seconds": s.seconds, "stage_seconds": s.stage_seconds,
                    "steady_views_s": steady, "steady_over_inference": steady / row["inference_img_s"],
                    "drain_seconds": timeline.drain_seconds(), "first_handovers_s": timeline.first_handovers(),
                    "wall": [started, time.time()], "dirty_pages": dirty.figures(),
                    # as cached_step.py and speed.py measure it: the bytes that grow with the views
                    "mb_per_view": TeacherCache(str(path)).nbytes_stored()["views"] / 1e6 / max(1, s.views_written)}
                shutil.rmtree(path)
                save()
                print(tname, dtype, key, f"{s.views_per_second:.1f} views/s, "
                      f"{s.views_per_second / row['inference_img_s']:.2f}x inference", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    res["target_0_9"] = {f"{t}/{d}": {v: verdicts(c) for v, c in per.items()}
                         for t, row in res["teachers"].items() for d, per in row.get("caches", {}).items()}
    save()


if __name__ == "__main__":
    main()
