"""The cached training step against the plain and the online step, by cache size and page-cache state, in one call.

One process, one card (random weights are fine for timing). What it does, saving raw JSON to --out/step.json
after every measurement (a call cut short keeps what it measured):

1. generates --images images (long side --image-size, three aspect ratios) and replicates them until the train
   split holds max(--sizes) views (two per image: orig and hflip); a second split of --rate-views views is for
   the teacher-cache rates;
2. per teacher of --pairs: pure inference (img/s, bf16 autocast, no post-processing) and ``frs teacher-cache``'s
   rate for int8 and int5 on the rate split (over inference: issue 13's third target); the first pair's teacher
   then writes the full caches, one per --dtypes;
3. the disk: sequential write (fsync) and, after dropping the page cache, a sequential read of one cache's files;
4. per pair: the plain student step and the online FRS step; for the first pair, per dtype and size S in --sizes,
   the cached FRS step reading S views (the first S/2 images, both views: the files a cache of S views holds),
   with a warm page cache (a loader pass over the S views first, which also gives the loader's own rate) and a
   cold one (``sync; echo 3 > /proc/sys/vm/drop_caches`` before the loader starts; needs root, else skipped and
   recorded as such). Each row: --warmup steps, then --steps timed steps with the real DataLoader (--workers,
   --prefetch batches per worker; one loader over epoch after epoch of the S views, so worker start-up is not
   timed, as in the plain row; batches of one canvas, as training batches by default); median and mean step, mean and
   median share of the step spent waiting for data, and the read bandwidth the step needs (cache bytes per view x
   batch / plain step) beside the disk's;
5. the first dtype's warm step at the largest size with each --worker-sweep worker count, and fp16's read through
   zarr-python instead of the direct reads (--zarr-row: the read path before issue 13), for comparison.
No step row starts after --budget-s seconds (skipped rows say so), so the call ends within its time limit.

Views are smaller than COCO's so that 4096 of them fit the disk and the time: 512 x 853 px resized images
(--min-size 512 --max-size 853, 2/3 of COCO's scale) are about 4.7 MB per view in fp16 (COCO's 9.3 MB), so the
4096-view caches are about 19 GB (fp16) + 9.7 GB (int8) + 6.1 GB (int5). ``--smoke`` runs the same code on the
CPU with tiny models and sizes in seconds (tests/test_read_path.py). On one H200:

    sudo python3 bench/cached_step.py --out $OUT --work /tmp/cached_step
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_verdicts import need_mb_s
from speed import ARCH, disk_write_mb_s, feeder, median, sgd, step_objective, sync_time, timed_steps

SMOKE = {"pairs": "tiny-tiny", "sizes": "8,16", "dtypes": "float16,int5", "images": 4, "image_size": 64,
         "min_size": 64, "max_size": 64, "batch": 2, "workers": 0, "prefetch": 2, "warmup": 1, "steps": 1,
         "rate_views": 8, "disk_mb": 4, "cold": False, "worker_sweep": "", "budget_s": 600,
         "zarr_row": True}


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); False when this process may not."""
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def disk_read_mb_s(directory: Path, drop: bool, block_mb: int = 8) -> dict:
    """Sequential read of every file under ``directory`` (sorted, one thread, ``block_mb`` reads) after the page
    cache is dropped (``drop``): what the disk gives a reader of the cache files. ``cold`` False: the cache was
    not dropped, so the figure is (partly) the page cache's."""
    cold = drop and drop_page_cache()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    total, t = 0, time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(block_mb << 20):
                total += len(chunk)
    seconds = time.perf_counter() - t
    return {"mb_s": total / 1e6 / seconds, "bytes": total, "files": len(files), "cold": cold}


def make_data(work: Path, images: int, image_size: int, views: int, name: str, classes: int = 0) -> Path:
    """A train split of at least ``views`` views (two per image): ``images`` generated images (once, in
    ``work/generated``), copied and replicated; with ``classes``, that many categories listed (the shapes' 5, then
    unused ones: ``synth.pad_categories``), so that the models have that classification width."""
    from frs_cli.data.synth import SynthConfig, generate, pad_categories, replicate

    generated, data = work / "generated", work / (f"{name}_{classes}c" if classes else name)
    if not generated.exists():
        generate(generated, SynthConfig(train=images, val=1, size=image_size, seed=0, aspect_jitter=True))
    if not data.exists():
        shutil.copytree(generated, data)
        replicate(data, max(1, -(-views // (2 * images))))
        if classes:
            pad_categories(data, classes)
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for step.json")
    p.add_argument("--work", type=Path, required=True, help="data and caches (about 40 GB at the defaults)")
    p.add_argument("--pairs", default="x101-r50,r50v2-r50", help="teacher-student; the first one's caches are read")
    p.add_argument("--sizes", default="128,1024,4096", help="cached views read by the cached step")
    p.add_argument("--dtypes", default="int8,int5,float16", help="cache encodings, measured in this order")
    p.add_argument("--images", type=int, default=64, help="generated images (replicated up to max(--sizes) views)")
    p.add_argument("--image-size", type=int, default=853)
    p.add_argument("--classes", type=int, default=80,
                   help="categories the models classify (COCO's 80: its heads' width); 0: the shapes' 5")
    p.add_argument("--min-size", type=int, default=512)
    p.add_argument("--max-size", type=int, default=853)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--prefetch", type=int, default=2, help="batches per worker: workers x prefetch well below --steps")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rate-views", type=int, default=1024, help="views of the split teacher-cache rates are taken on")
    p.add_argument("--disk-mb", type=int, default=2048, help="MB written by the disk write probe")
    p.add_argument("--worker-sweep", default="6", help="also time the first dtype's warm step at the largest size "
                   "with these worker counts (empty: none)")
    p.add_argument("--zarr-row", action=argparse.BooleanOptionalAction, default=True,
                   help="also time fp16's warm step at the largest size reading through zarr-python (the old path)")
    p.add_argument("--budget-s", type=float, default=480, help="start no new step row after this many seconds")
    p.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                   help="also time every cached row after dropping the page cache (root)")
    p.add_argument("--warm-only", default="", help="comma list of dtypes timed only with a warm page cache (the step "
                   "target asks for float16 warm only)")
    p.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                   help="time each cached row's steps interleaved with plain steps over the same batches (blocks of "
                        "--block steps, alternating), so each row has its own plain step from the same minutes")
    p.add_argument("--block", type=int, default=10, help="steps per block of a paired row")
    p.add_argument("--device-prefetch", action=argparse.BooleanOptionalAction, default=True,
                   help="copy each batch to the device one step ahead on a side stream, as frs distill does (off: "
                        "on the step's stream as the step takes it; run the bench once each way for an A/B)")
    p.add_argument("--online-paired", action="store_true",
                   help="paired rows: also time the online step (the live teacher) in the same blocks, so each row's "
                        "online / cached compares steps of the same minutes (online_step_ms)")
    p.add_argument("--feeder-ab", action="store_true",
                   help="paired rows: also time the plain step and the last cached variant fed without the device "
                        "prefetcher (each batch copied on the step's stream as the step takes it), interleaved with "
                        "the rest: the prefetcher's A/B within each row (inline_* figures)")
    p.add_argument("--graphs-ab", action="store_true",
                   help="paired rows also time the cached step with distill.cuda_graphs on (step_ms is then off's)")
    p.add_argument("--group-by-canvas", action=argparse.BooleanOptionalAction, default=True,
                   help="batches of one canvas, as train.group_by_canvas (the default) gives every row")
    p.add_argument("--ahead", action="store_true",
                   help="launch each step before waiting for the one before, as the trainer does since session 12 "
                        "(speed.timed_steps); without it each step is waited for before the next is launched")
    p.add_argument("--split", action="store_true",
                   help="paired rows: also time the plain step fed the cached batches (gt_cached: their targets "
                        "copied to the device, unused), and record per step the host's launch time of the forward, "
                        "backward and optimizer of every mode (the row's split)")
    p.add_argument("--hold-ab", action="store_true",
                   help="paired rows: also time the plain and cached steps with loader workers that hold none of "
                        "their batch buffers (packed.WORKER_HOLD = 0, as before it), interleaved with the rest "
                        "(hold0_* figures)")
    p.add_argument("--hostcopy-ab", action="store_true",
                   help="paired rows: also time the plain and cached steps (and the online one, with "
                        "--online-paired) with the GT loss's box coding as before 33c477d (host_copies: its tensors "
                        "copied from the host at every step, which makes the host wait for the device), interleaved "
                        "with the rest (hostcopy_* figures)")
    p.add_argument("--step-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="every step runs as the trainer does with train.cuda_graphs (its default): a batch of one "
                        "canvas as one replayed CUDA graph (every row, paired or not)")
    p.add_argument("--step-graphs-ab", action="store_true",
                   help="paired rows also time the plain, cached (and online) steps with train.cuda_graphs off, "
                        "interleaved with the rest (eager_* figures)")
    p.add_argument("--channels-last", action="store_true",
                   help="every step's student and adapters channels-last, as train.channels_last=true trains them")
    p.add_argument("--smoke", action="store_true", help="tiny models and sizes on the CPU (tests)")
    args = p.parse_args()
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    run(args)


def run(args) -> dict:
    import torch

    from frs_cli.cache.checksum import IMPLEMENTATION as CRC_IMPLEMENTATION
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews
    from frs_cli.dist import setup

    ctx = setup("cpu" if args.smoke else None)
    dev = ctx.device
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    pairs = args.pairs.split(",")
    res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "date": time.strftime("%Y-%m-%d"),
           "command": "python3 bench/cached_step.py " + " ".join(sys.argv[1:]), "cpu_cores": os.cpu_count(),
           "crc32": CRC_IMPLEMENTATION,
           "args": {k: str(v) for k, v in vars(args).items()}, "teachers": {}, "pairs": {}, "cached": []}
    out = args.out / "step.json"

    def save():
        out.write_text(json.dumps(res, indent=1))

    t_start = time.perf_counter()
    data = make_data(args.work, args.images, args.image_size, max(sizes), "data", args.classes)
    rate_data = make_data(args.work, args.images, args.image_size, args.rate_views, "rate_data", args.classes)
    base = {"geometry": {"min_size": args.min_size, "max_size": args.max_size},
            "train": {"channels_last": args.channels_last},
            "cache": {"batch_size": args.batch, "workers": args.workers, "preload_mb": 0,
                      **({"write_processes": 0} if args.smoke else {})}}  # no writer processes to start on the CPU
    coco = CocoViews.from_config(recipe_from_dict({**base, "data": {"root": str(data)}}).data, "train",
                                 recipe_from_dict(base).geometry)
    res["views_in_split"] = 2 * len(coco)
    res["disk"] = {"write_mb_s": disk_write_mb_s(args.work, args.disk_mb, min(64, args.disk_mb))}
    save()
    amp = {"device_type": dev.type, "dtype": torch.bfloat16, "enabled": dev.type == "cuda"}
    caches = {}
    for i, tname in enumerate(dict.fromkeys(pair.split("-")[0] for pair in pairs)):
        res["teachers"][tname] = teacher_rates(args, tname, rate_data, base, ctx, amp)
        save()
        if i == 0:  # the first pair's teacher writes the caches the cached step reads
            for dtype in dtypes:
                caches[dtype] = write_cache(args, tname, data, base, dtype, ctx, res["teachers"][tname])
                save()
    main_teacher = pairs[0].split("-")[0]
    smallest = min(dtypes, key=lambda d: res["teachers"][main_teacher]["cache"][d]["mb_per_view"])
    res["disk"]["read"] = {**disk_read_mb_s(Path(caches[smallest][0]), args.cold), "cache": smallest}
    save()
    print(f"disk: write {res['disk']['write_mb_s']:.0f} MB/s, read {res['disk']['read']['mb_s']:.0f} MB/s "
          f"(page cache dropped: {res['disk']['read']['cold']})", flush=True)

    plain_done = set()
    for pair in pairs:
        tname, sname = pair.split("-")
        row = res["pairs"][pair] = {}
        first = caches[dtypes[0]][1]
        recipe = replace(first, teacher=replace(first.teacher, arch=ARCH[tname], weights=str(args.work / f"{tname}.pt")))
        for mode in ("plain", "online"):
            if mode == "plain" and sname in plain_done:
                continue  # one plain row per student
            plain_done.add(sname)
            row[mode] = time_steps(args, mode, recipe, sname, coco, len(coco) * 2, None, dev, amp)
            save()
            print(pair, mode, row[mode], flush=True)
    plain = res["pairs"][pairs[0]]["plain"]["step_ms"]
    sname = pairs[0].split("-")[1]
    for dtype in dtypes:
        path, recipe = caches[dtype]
        mb = res["teachers"][main_teacher]["cache"][dtype]["mb_per_view"]
        for size in sizes:
            for state in ("warm", "cold"):
                row = {"pair": pairs[0], "dtype": dtype, "views": size, "page_cache": state, "mb_per_view": mb,
                       "need_mb_s": need_mb_s(mb, args.batch, plain), "workers": args.workers}
                if time.perf_counter() - t_start > args.budget_s:
                    row["skipped"] = f"time budget of {args.budget_s:.0f} s spent"
                    res["cached"].append(row)
                    continue
                if state == "warm":
                    row["loader_views_s"] = loader_rate(args, path, coco, size)
                elif dtype in args.warm_only.split(","):
                    row["skipped"] = "warm only (--warm-only)"
                    res["cached"].append(row)
                    continue
                elif not args.cold or not drop_page_cache():
                    row["skipped"] = "cold rows off (--no-cold)" if not args.cold else "page cache not dropped (not root)"
                    res["cached"].append(row)
                    continue
                else:  # the images back in the page cache: only the cache's own reads are cold, as in the plain row
                    warm_images(coco, size)
                timer = time_paired if args.paired else time_steps
                row.update(timer(args, "cached", recipe, sname, coco, size, path, dev, amp))
                res["cached"].append(row)
                save()
                print(json.dumps(row), flush=True)
    res["worker_sweep"] = []
    for workers in [int(w) for w in args.worker_sweep.split(",") if w]:
        if time.perf_counter() - t_start > args.budget_s:
            break
        swept = argparse.Namespace(**{**vars(args), "workers": workers})
        path, recipe = caches[dtypes[0]]
        row = {"pair": pairs[0], "dtype": dtypes[0], "views": sizes[-1], "page_cache": "warm", "workers": workers,
               "loader_views_s": loader_rate(swept, path, coco, sizes[-1])}
        row.update(time_steps(swept, "cached", recipe, sname, coco, sizes[-1], path, dev, amp))
        res["worker_sweep"].append(row)
        save()
        print(json.dumps(row), flush=True)
    if args.zarr_row and time.perf_counter() - t_start <= args.budget_s:  # the read path before issue 13
        dtype = "float16" if "float16" in dtypes else dtypes[0]
        path, recipe = caches[dtype]
        row = {"pair": pairs[0], "dtype": dtype, "views": sizes[-1], "page_cache": "warm", "workers": args.workers,
               "read": "zarr", "loader_views_s": loader_rate(args, path, coco, sizes[-1], direct=False)}
        row.update(time_steps(args, "cached", recipe, sname, coco, sizes[-1], path, dev, amp, direct=False))
        res["zarr_path"] = row
        print(json.dumps(row), flush=True)
    res["seconds"] = time.perf_counter() - t_start
    save()
    return res


def teacher_rates(args, tname: str, data: Path, base: dict, ctx, amp) -> dict:
    """Pure inference (img/s) of teacher ``tname`` and teacher-cache's views/s for int8 and int5 on ``data``."""
    import torch

    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoViews, ViewSampler, collate
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    dev = ctx.device
    recipe = recipe_from_dict({**base, "data": {"root": str(data)}})
    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    torch.manual_seed(0)
    cfg = ModelConfig(arch=ARCH[tname])
    teacher = build_detector(cfg, coco.index.num_classes).to(dev).eval()
    loader = torch.utils.data.DataLoader(coco, batch_size=args.batch, sampler=ViewSampler(len(coco), ("orig",), False),
                                         num_workers=args.workers, collate_fn=collate, drop_last=True)
    batches = [b.to(dev) for b, _ in zip(loader, range(3))]
    with torch.no_grad(), torch.autocast(**amp):
        for b in batches:
            teacher(b.images, b.image_sizes, detect=False)
        t, n = sync_time(), 0
        for _ in range(3):
            for b in batches:
                teacher(b.images, b.image_sizes, detect=False)
                n += len(b.image_ids)
        infer = n / (sync_time() - t)
    ckpt = args.work / f"{tname}.pt"
    save_model(ckpt, teacher, cfg, coco.index, recipe.geometry)
    del teacher
    out = {"arch": ARCH[tname], "inference_img_s": infer, "rate_views": 2 * len(coco), "cache": {}}
    for dtype in ("int8", "int5"):
        r = recipe_from_dict({**base, "data": {"root": str(data)}, "teacher": {"arch": ARCH[tname], "weights": str(ckpt)},
                              "cache": {**base["cache"], "dtype": dtype}})
        path = args.work / f"rate_{tname}_{dtype}.zarr"
        s = write_teacher_cache(r, str(path), ctx=ctx)
        out["cache"][dtype] = {"views_s": s.views_per_second, "over_inference": s.views_per_second / infer,
                               "mb_per_view": TeacherCache(str(path)).nbytes_stored()["views"] / 1e6 / s.views_total,
                               "loop_seconds": s.seconds, "stage_seconds": s.stage_seconds}
        shutil.rmtree(path)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    print(tname, out, flush=True)
    return out


def write_cache(args, tname: str, data: Path, base: dict, dtype: str, ctx, row: dict):
    """The full cache of ``tname`` over ``data`` in ``dtype``: (path, recipe); its rate goes into ``row``."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict

    recipe = recipe_from_dict({**base, "data": {"root": str(data)},
                               "teacher": {"arch": ARCH[tname], "weights": str(args.work / f"{tname}.pt")},
                               "cache": {**base["cache"], "dtype": dtype}})
    path = str(args.work / f"{tname}_{dtype}.zarr")
    s = write_teacher_cache(recipe, path, ctx=ctx)
    nbytes = TeacherCache(path).nbytes_stored()
    row.setdefault("full_cache", {})[dtype] = {"views": s.views_total, "views_s": s.views_per_second,
                                               "over_inference": s.views_per_second / row["inference_img_s"],
                                               "loop_seconds": s.seconds, "stage_seconds": s.stage_seconds}
    row["cache"].setdefault(dtype, {})["mb_per_view"] = nbytes["views"] / 1e6 / s.views_total
    return path, recipe


def canvas_of(args, coco):
    """A key's canvas when the steps batch by canvas (``--group-by-canvas``, as training does by default), else None."""
    if not args.group_by_canvas:
        return None
    from frs_cli.data.canvas_batches import view_canvases

    return view_canvases(coco, ("orig", "hflip")).__getitem__


def warm_images(coco, num_views: int) -> None:
    """Read the image files of the first ``num_views`` views once (into the page cache)."""
    for rec in coco.index.records[: num_views // 2]:
        (coco.image_dir / rec.file_name).read_bytes()


def epochs(num_views: int, seed: int = 0):
    """Keys ``(position, view)`` of the first ``num_views`` views (both views of the first images), one shuffled
    epoch after another."""
    keys = [(pos, v) for pos in range(num_views // 2) for v in ("orig", "hflip")]
    rng = random.Random(seed)
    while True:
        rng.shuffle(keys)
        yield list(keys)


def batches_for(num_views: int, count: int, batch: int, canvas_of=None) -> list[list]:
    """The first ``count`` batches of shuffled epochs over ``num_views`` views, one epoch after another: one loader
    reads them all, so no worker restarts between epochs (the plain and online rows, over the whole split, have
    none either). With ``canvas_of`` (a key's canvas), each epoch's batches are grouped by canvas as the trainer's
    (``train.group_by_canvas``); else consecutive keys."""
    from frs_cli.data.canvas_batches import canvas_batches

    label = canvas_of if canvas_of is not None else (lambda key: 0)
    out = []
    for epoch in epochs(num_views):
        out += canvas_batches(epoch, label, batch)
        if len(out) >= count:
            return out[:count]


def _loader(args, dataset, batches, dev, hold: int | None = None):
    """The bench's DataLoader over ``batches``; with ``hold``, its workers hold that many batch buffers (as
    ``train.worker_hold`` sets the trainer's)."""
    import functools

    import torch

    from frs_cli.data.coco import ListSampler, collate
    from frs_cli.data.packed import hold_in_worker

    init = None if hold is None else functools.partial(hold_in_worker, hold)
    return torch.utils.data.DataLoader(dataset, batch_sampler=ListSampler(batches), num_workers=args.workers,
                                       collate_fn=collate, pin_memory=dev.type == "cuda",
                                       prefetch_factor=args.prefetch if args.workers else None,
                                       worker_init_fn=init)


def _store(path: str, direct: bool):
    from frs_cli.cache.reader import TeacherCache

    store = TeacherCache(path)
    store.direct = direct  # False: every array through zarr-python, as before the direct reads
    return store


def loader_rate(args, path: str, coco, num_views: int, direct: bool = True) -> float:
    """Views per second of the cached DataLoader alone over the ``num_views`` views (one epoch; warms the page
    cache for the warm rows)."""
    import torch

    from frs_cli.cache.reader import CachedViews

    ds = CachedViews(coco, _store(path, direct))
    t, n = time.perf_counter(), 0
    for b in _loader(args, ds, batches_for(num_views, num_views // args.batch, args.batch, canvas_of(args, coco)),
                     torch.device("cpu")):
        n += len(b.image_ids)
    return n / (time.perf_counter() - t)


def time_steps(args, mode: str, recipe, sname: str, coco, num_views: int, path: str | None, dev, amp,
               direct: bool = True) -> dict:
    """--warmup then --steps training steps of ``mode`` (plain, online, cached): step and data-wait figures. With
    --step-graphs (the default) each step runs as the trainer runs it by default, as the paired rows do: a batch of
    one canvas as one replayed CUDA graph (``step_graphs_captured``: the shapes captured)."""
    import torch

    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.step_graphs import StepGraphs

    torch.manual_seed(0)
    student = build_detector(ModelConfig(arch=ARCH[sname]), coco.index.num_classes)
    store = _store(path, direct) if mode not in ("plain", "online") else None
    obj, ds = step_objective(mode, student, recipe, coco, coco.index.num_classes, store)
    ahead = args.workers * args.prefetch if args.workers else 0
    count = args.warmup + args.steps + ahead + 1
    it = feeder(_loader(args, ds, batches_for(num_views, count, args.batch, canvas_of(args, coco)), dev), dev,
                args.device_prefetch)
    graphs = StepGraphs(obj.to(dev), capture=dev.type == "cuda") if args.step_graphs else None  # as time_paired
    steps, waits, _ = timed_steps(obj, it, dev, amp, args.warmup, args.steps, ahead=args.ahead, graphs=graphs)
    captured = {} if graphs is None else {"step_graphs_captured": graphs.captured}
    del it, obj, student, graphs
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {**step_figures(steps, waits), "steps": len(steps), **captured}


def pinned_allocs(dev) -> tuple[int, float] | None:
    """Pinned host blocks created so far by the CUDA host allocator and the microseconds spent creating them
    (``torch.cuda.host_memory_stats``); None off CUDA or where torch lacks the statistics."""
    import torch

    if dev.type != "cuda" or not hasattr(torch.cuda, "host_memory_stats"):
        return None
    stats = torch.cuda.host_memory_stats()
    return stats.get("num_host_alloc", 0), stats.get("host_alloc_time.total", 0.0)


def step_figures(steps: list[float], waits: list[float], prefix: str = "") -> dict:
    """Median and mean step (ms) and the mean and median share of it spent waiting for data, keys ``prefix``-ed."""
    return {f"{prefix}step_ms": 1e3 * median(steps), f"{prefix}step_ms_mean": 1e3 * sum(steps) / len(steps),
            f"{prefix}data_wait_share": sum(waits) / sum(steps),
            f"{prefix}data_wait_share_median": median([w / t for w, t in zip(waits, steps)])}


@contextlib.contextmanager
def host_copies():
    """While the block runs, RetinaNet's GT loss codes boxes as before ``33c477d``: through torchvision's box coder,
    which copies its weights (L1 loss) or two one-element tensors (GIoU loss) from the host at every call, so each
    step waits for the device there (``--hostcopy-ab``)."""
    import torch

    from frs_cli.models import retinanet_loss

    made, decode = retinanet_loss.coder_weights, retinanet_loss.decode_deltas
    retinanet_loss.coder_weights = lambda weights, dtype, device: torch.as_tensor(weights, dtype=dtype, device=device)
    retinanet_loss.decode_deltas = lambda coder, deltas, anchors: coder.decode_single(deltas, anchors)
    try:
        yield
    finally:
        retinanet_loss.coder_weights, retinanet_loss.decode_deltas = made, decode


# the A/B variants of a paired mode: the same step launched, fed or coded another way (see time_paired)
VARIANTS = ("_inline", "_hold0", "_hostcopy", "_eager")


def step_kind(mode: str) -> str:
    """The step a paired ``mode`` times (plain, online, cached, cached_graphs, gt_cached): its variant suffix off."""
    for suffix in VARIANTS:
        if mode.endswith(suffix):
            return mode.removesuffix(suffix)
    return mode


def time_paired(args, mode: str, recipe, sname: str, coco, num_views: int, path: str, dev, amp) -> dict:
    """The cached step and the plain step over the same batches, interleaved: --warmup steps of each, then blocks of
    --block steps, plain and cached in turn (the first of each pair alternating), until each has --steps. Two
    loaders (the cached one and the image-only one) serve the same keys side by side, so both steps run beside
    the same worker load. The row's ``step_ms`` is the cached step's; ``plain_step_ms`` the interleaved plain one."""
    import torch

    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.step_graphs import StepGraphs

    objs, its = {}, {}
    ahead = args.workers * args.prefetch if args.workers else 0
    keys = batches_for(num_views, args.warmup + args.steps + ahead + 1, args.batch, canvas_of(args, coco))
    modes = ("plain", mode, *((f"{mode}_graphs",) if args.graphs_ab else ()))
    last = modes[-1]  # the cached variant the row is judged by (graphed with --graphs-ab)
    if args.online_paired:
        modes = (*modes, "online")
    if args.feeder_ab:  # the same steps fed without the prefetcher: "<mode>_inline"
        modes = (*modes, "plain_inline", f"{last}_inline")
    if args.split:  # what the cached batches cost the plain step, without the FRS terms
        modes = (*modes, "gt_cached")
    if args.hold_ab:  # the plain and cached steps again, their workers holding no buffer (as before 8a0aa17)
        modes = (*modes, "plain_hold0", f"{mode}_hold0")
    if args.hostcopy_ab:  # the plain, cached (and online) steps again, the GT loss's box coding copying from the host
        modes = (*modes, "plain_hostcopy", f"{mode}_hostcopy", *(("online_hostcopy",) if args.online_paired else ()))
    if args.step_graphs_ab:  # the plain, cached (and online) steps again, eagerly (train.cuda_graphs off)
        modes = (*modes, "plain_eager", f"{mode}_eager", *(("online_eager",) if args.online_paired else ()))
    for m in modes:
        torch.manual_seed(0)
        student = build_detector(ModelConfig(arch=ARCH[sname]), coco.index.num_classes)
        kind = step_kind(m)
        cached = kind not in ("plain", "online")
        r = recipe
        if cached and args.graphs_ab:  # the A/B: distill.cuda_graphs off and on
            r = replace(recipe, distill=replace(recipe.distill, cuda_graphs=kind.endswith("_graphs")))
        objs[m], ds = step_objective(kind.removesuffix("_graphs"), student, r, coco, coco.index.num_classes,
                                     _store(path, True) if cached else None)
        prefetch = args.device_prefetch and not m.endswith("_inline")
        hold = 0 if m.endswith("_hold0") else None
        its[m] = feeder(_loader(args, ds, keys, dev, hold), dev, prefetch)  # one across the blocks: none skipped
    times = {m: ([], []) for m in objs}
    phases = {m: {} for m in objs} if args.split else dict.fromkeys(objs)
    allocs = {m: [0, 0.0] for m in objs}
    opts = {m: sgd(objs[m].to(dev)) for m in objs}  # one optimizer each across the blocks: no new momentum buffers
    # train.cuda_graphs as the trainer makes it, unless the step is timed eagerly; one per objective (off CUDA what
    # a graph would capture runs eagerly, capture=False: the smoke runs take the same path)
    step_graphs = {m: StepGraphs(obj, capture=dev.type == "cuda")
                   if args.step_graphs and not m.endswith("_eager") else None for m, obj in objs.items()}
    def coding(m: str):
        return host_copies() if m.endswith("_hostcopy") else contextlib.nullcontext()

    for m, obj in objs.items():
        with coding(m):
            timed_steps(obj, its[m], dev, amp, args.warmup, 0, opts[m], ahead=args.ahead, graphs=step_graphs[m])
    done, turn = 0, 0
    while done < args.steps:
        n = min(args.block, args.steps - done)
        for m in (modes if turn % 2 == 0 else modes[::-1]):
            before = pinned_allocs(dev) if args.split else None
            with coding(m):
                steps, waits, _ = timed_steps(objs[m], its[m], dev, amp, 0, n, opts[m], ahead=args.ahead,
                                              phases=phases[m], graphs=step_graphs[m])
            if before is not None:  # pinned blocks the host allocator had to create while this block ran
                after = pinned_allocs(dev)
                allocs[m][0] += after[0] - before[0]
                allocs[m][1] += after[1] - before[1]
            times[m][0].extend(steps)
            times[m][1].extend(waits)
        done, turn = done + n, turn + 1
    (steps, waits), (plain, _) = times[mode], times["plain"]
    graphs = getattr(objs.get(f"{mode}_graphs"), "_graphs", None)
    captured = {} if graphs is None else {"graphs_captured": sum(g is not None for g in graphs._graphs.values()),
                                          "graphs_mb": graphs._graph_bytes / 1e6}
    step_captured = {m: g.captured for m, g in step_graphs.items() if g is not None}
    del its, objs, graphs, step_graphs
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    row = {**step_figures(steps, waits), "steps": len(steps), "plain_step_ms": 1e3 * median(plain),
           "plain_step_ms_mean": 1e3 * sum(plain) / len(plain), "paired_block": args.block,
           # every timed step, block after block (the k-th block of each mode ran in the same turn)
           "step_times_ms": {m: [round(1e3 * t, 3) for t in times[m][0]]
                             for m in ("plain", mode, "online") if m in times}}
    row["step_graphs_captured"] = step_captured  # per mode, the batch shapes replayed as one graph
    if args.step_graphs_ab:  # eager_*: the same steps with train.cuda_graphs off
        row.update({**step_figures(*times[f"{mode}_eager"], prefix="eager_"),
                    **step_figures(*times["plain_eager"], prefix="eager_plain_")})
        if args.online_paired:
            row.update(step_figures(*times["online_eager"], prefix="eager_online_"))
    if args.graphs_ab:  # step_ms is then the eager cached side's, graphs_step_ms the graphed one's
        row.update({"cuda_graphs": False, **step_figures(*times[f"{mode}_graphs"], prefix="graphs_"), **captured})
    if args.online_paired:
        row.update(step_figures(*times["online"], prefix="online_"))
    if args.hold_ab:  # hold0_*: the same steps with workers that hold no buffer, so the training process frees pages
        row.update({**step_figures(*times[f"{mode}_hold0"], prefix="hold0_"),
                    **step_figures(*times["plain_hold0"], prefix="hold0_plain_")})
    if args.hostcopy_ab:  # hostcopy_*: the same steps waiting for the device in the GT loss's box coding
        row.update({**step_figures(*times[f"{mode}_hostcopy"], prefix="hostcopy_"),
                    **step_figures(*times["plain_hostcopy"], prefix="hostcopy_plain_")})
        if args.online_paired:
            row.update(step_figures(*times["online_hostcopy"], prefix="hostcopy_online_"))
    if args.split:  # per mode: the step, its data wait and the host's launch of each part, medians in ms
        row["split"] = {m: {"step_ms": 1e3 * median(times[m][0]), "data_wait_ms": 1e3 * median(times[m][1]),
                            **{f"{k}_ms": 1e3 * median(v) for k, v in phases[m].items()}} for m in times}
        if pinned_allocs(dev) is not None:
            for m, (count, us) in allocs.items():
                row["split"][m].update({"pinned_allocs": count, "pinned_alloc_ms": us / 1e3})
    if args.feeder_ab:  # inline_step_ms: the last cached variant (graphed with --graphs-ab) without the prefetcher
        row.update({"inline_of": last, **step_figures(*times[f"{last}_inline"], prefix="inline_"),
                    **step_figures(*times["plain_inline"], prefix="inline_plain_")})
    return row


if __name__ == "__main__":
    main()
