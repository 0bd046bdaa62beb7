"""``frs teacher-cache``: run the frozen teacher over a split once and write its targets to a Zarr group.

The writer is resumable at view granularity: a view's ``done`` flag is written after all its arrays, and a
resumed run writes exactly the views whose flag is not set. ``--resume`` first verifies every done view
(``cache.verify``) and clears the flag of each one it rejects, so a resumed run also rewrites views whose
chunks went missing or corrupt; on a complete cache ``--resume`` is thus "verify and repair". Under
torchrun every process takes its own batches of the pending views and writes only their files: a shard holds
exactly one plan batch of views (one inner chunk per view), and ``done``/``crc`` are chunked by batch too, so
no two processes ever touch the same file. Process 0 creates the layout (or verifies it) before and marks
the cache complete after. A write that fails (a full disk) raises ``StorageError`` and leaves the cache in
state ``writing``: ``--resume`` continues it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import zarr

import frs_cli
from frs_cli.cache.reader import TeacherCache
from frs_cli.cache.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    SCALED_DTYPES,
    VIEW_NAMES,
    Plan,
    geometry_fingerprint,
    make_plan,
)
from frs_cli.cache.store import codec, encode, is_hdf5, open_existing, open_group, storage_dtype, view_crc
from frs_cli.cache.verify import verify_cache
from frs_cli.data.coco import CocoViews, ListSampler, collate
from frs_cli.errors import CacheFormatError, CacheMismatchError, ConfigError
from frs_cli.files import storage_errors
from frs_cli.losses import frs_masks
from frs_cli.models import build_detector, check_distillable, model_fingerprint
from frs_cli.progress import NullProgress, Progress
from frs_cli.train.dist import DistContext, all_gather_objects, barrier, broadcast_object, setup

log = logging.getLogger(__name__)


@dataclass
class CacheWriteSummary:
    path: str
    views_total: int
    views_written: int
    seconds: float
    views_per_second: float
    complete: bool
    views_rejected: int = 0  # done views that --resume found missing or corrupt and rewrote
    teacher_check: dict | None = None  # the teacher's score on val images, when checked


def _create(path: str, plan: Plan, teacher, recipe, fingerprints: dict, dataset, check: dict | None) -> zarr.Group:
    cfg = recipe.cache
    root = open_group(path, mode="w")
    root.attrs.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "state": "creating"})
    index = root.create_group("index")
    for name, values in (("image_id", plan.image_id), ("view", plan.view), ("bucket", plan.bucket),
                         ("row", plan.row), ("geometry", plan.geometry)):
        arr = index.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape or (1,),
                                 compressors=None, fill_value=0)
        arr[...] = values
    feat_dtype = storage_dtype(cfg.dtype)
    keys = {"name": "default", "separator": "."}  # chunk files c.<row>.0.0.0 side by side, not nested dirs
    compressors = codec(cfg.codec)
    per_shard = cfg.batch_size  # a shard is one plan batch: each writer writes whole shards, no other touches them
    buckets = root.create_group("buckets")
    for b in plan.buckets:
        g = buckets.create_group(b.name)
        s = min(per_shard, b.count)
        for lv, (h, w) in zip(teacher.levels, b.level_sizes):
            lg = g.create_group(lv.name)
            lg.create_array("features", shape=(b.count, lv.channels, h, w), chunks=(1, lv.channels, h, w),
                            shards=(s, lv.channels, h, w), dtype=feat_dtype, compressors=compressors, fill_value=0,
                            chunk_key_encoding=keys)
            if cfg.dtype in SCALED_DTYPES:
                lg.create_array("scale", shape=(b.count, lv.channels), chunks=(1, lv.channels),
                                shards=(s, lv.channels), dtype="float32", compressors=None, fill_value=0,
                                chunk_key_encoding=keys)
            lg.create_array("mask", shape=(b.count, h, w), chunks=(1, h, w), shards=(s, h, w), dtype="float16",
                            compressors=compressors, fill_value=0, chunk_key_encoding=keys)
        g.create_array("done", shape=(b.count,), chunks=(s,), dtype="uint8", compressors=None, fill_value=0,
                       chunk_key_encoding=keys)
        g.create_array("crc", shape=(b.count, 2 * len(teacher.levels)), chunks=(s, 2 * len(teacher.levels)),
                       dtype="uint32", compressors=None, fill_value=0, chunk_key_encoding=keys)
    head = root.create_group("teacher_head")
    for name, t in teacher.cls_head().state_dict().items():
        a = t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
        arr = head.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape or None, compressors=None)
        arr[...] = a
    root.attrs.update({
        "created_by": f"frs {frs_cli.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": recipe.name,
        "teacher": {"arch": teacher.arch, "weights": recipe.teacher.weights, "num_classes": teacher.num_classes,
                    "fingerprint": fingerprints["teacher"], "head_spec": teacher.cls_head_spec(),
                    "model_config": dataclasses.asdict(recipe.teacher), "check": check},
        "levels": [lv.to_dict() for lv in teacher.levels],
        "geometry": recipe.geometry.to_dict(),
        "views": list(cfg.views),
        "fingerprints": fingerprints,
        "dataset": {"split": cfg.split, "annotation_file": str(dataset.index.path),
                    "annotation_sha256": dataset.index.sha256, "num_images": len(dataset),
                    "label_to_category": dataset.index.label_to_category,
                    "category_names": [c["name"] for c in dataset.index.categories]},
        "storage": {"dtype": cfg.dtype, "codec": cfg.codec, "mask_dtype": "float16", "views_per_chunk": 1,
                    "views_per_shard": per_shard},
        "buckets": [b.to_dict() for b in plan.buckets],
        "num_views": len(plan),
        "state": "writing",
    })
    return root


def _check_same(path: str, root: zarr.Group, fingerprints: dict, views) -> None:
    attrs = dict(root.attrs)
    stored = attrs.get("fingerprints", {})
    for key in ("teacher", "dataset", "geometry"):
        if stored.get(key) != fingerprints[key]:
            raise CacheMismatchError(
                f"cache {path!r}: was written for another {key} (fingerprint {stored.get(key)}, this recipe's is "
                f"{fingerprints[key]})", hint="write to a new path, or delete the old cache")
    if list(attrs.get("views", [])) != list(views):
        raise CacheMismatchError(f"cache {path!r}: holds views {attrs.get('views')}, this recipe asks for {list(views)}")


def _runs(rows: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive runs in sorted ``rows``: (start row, stop row, index of the start in ``rows``)."""
    runs, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[i - 1] + 1:
            runs.append((rows[start], rows[i - 1] + 1, start))
            start = i
    return runs


def _write_rows(root: zarr.Group, bucket: str, rows: list[int], level_names, feats, scales, masks) -> None:
    """Views at consecutive ``rows`` of one bucket: every array, then checksums, then done flags (in that order).

    ``feats``/``masks``: per level ``(len(rows), ...)`` arrays in storage form; ``scales`` per level
    ``(len(rows), C)`` or None. One zarr call per array and run of rows (one shard for a whole batch).
    """
    crcs = np.zeros((len(rows), 2 * len(level_names)), dtype=np.uint32)
    for lv, (name, f, sc, m) in enumerate(zip(level_names, feats, scales, masks)):
        for start, stop, i in _runs(rows):
            root[f"buckets/{bucket}/{name}/features"][start:stop] = f[i : i + stop - start]
            if sc is not None:
                root[f"buckets/{bucket}/{name}/scale"][start:stop] = sc[i : i + stop - start]
            root[f"buckets/{bucket}/{name}/mask"][start:stop] = m[i : i + stop - start]
        for j in range(len(rows)):
            crcs[j, 2 * lv] = view_crc(f[j], None if sc is None else sc[j])
            crcs[j, 2 * lv + 1] = view_crc(m[j])
    for start, stop, i in _runs(rows):
        root[f"buckets/{bucket}/crc"][start:stop] = crcs[i : i + stop - start]
        root[f"buckets/{bucket}/done"][start:stop] = 1


def _reject(root: zarr.Group, faults) -> None:
    """Mark the views ``verify`` rejected as not done (state ``writing`` first, so a kill here leaves no
    "complete" cache with views missing)."""
    root.attrs["state"] = "writing"
    for f in faults:
        root[f"buckets/{f.bucket}/done"][f.row] = 0


def write_teacher_cache(recipe, path: str, *, resume: bool = False, ctx: DistContext | None = None,
                        progress: Progress | None = None, write_threads: int = 4) -> CacheWriteSummary:
    """Cache the teacher of ``recipe`` over ``recipe.cache.split`` at ``path`` (see ``cache.schema``).

    ``path``: a local directory or an fsspec URL (a Zarr v3 group either way). A complete cache is left
    untouched, unless ``resume``: then it is verified and the views verify rejects are rewritten. With
    ``recipe.cache.check_teacher_images`` > 0 the teacher is first scored on that many val images, and
    nothing is written when its AP is below ``recipe.cache.min_teacher_map`` (ModelError).
    Raises StorageError when a write fails (disk full); what was written stays, ``resume`` continues it.
    """
    if is_hdf5(path):
        raise ConfigError(f"teacher-cache --out {path!r}: expected a Zarr path or URL, got an HDF5 file name",
                          hint="write the Zarr cache, then: frs cache export CACHE OUT.h5")
    progress = progress or NullProgress()
    ctx = ctx or setup()
    cfg = recipe.cache
    dataset = CocoViews.from_config(recipe.data, cfg.split, recipe.geometry)
    check_distillable(recipe.student, recipe.teacher, dataset.index.num_classes)  # a cache no student can use is waste
    teacher = build_detector(recipe.teacher, dataset.index.num_classes).to(ctx.device).eval().requires_grad_(False)
    fingerprints = {"teacher": model_fingerprint(teacher), "dataset": dataset.index.fingerprint(),
                    "geometry": geometry_fingerprint(recipe.geometry)}
    plan = make_plan(dataset, cfg.views, teacher.strides)
    check = None
    if cfg.check_teacher_images > 0:
        from frs_cli.eval.teacher_check import check_teacher

        val = CocoViews.from_config(recipe.data, recipe.data.val, recipe.geometry)
        check = check_teacher(teacher, val, cfg.check_teacher_images, cfg.min_teacher_map, ctx, split=recipe.data.val,
                              fingerprint=fingerprints["teacher"], batch_size=cfg.batch_size, workers=cfg.workers,
                              amp=cfg.amp, progress=progress)
    hint = "free space (or fix the store), then run the same command with --resume"
    with storage_errors(f"cache {path}", hint=hint):  # a full disk: one line, the cache stays resumable
        already_complete, rejected = False, 0
        if ctx.is_main:
            root = open_existing(path, mode="r")
            if root is not None and root.attrs.get("state") != "creating":
                _check_same(path, root, fingerprints, cfg.views)
                if root.attrs.get("state") != "complete" and not resume:
                    raise CacheFormatError(f"cache {path!r}: exists and is incomplete",
                                           hint="add --resume to continue it, or delete it")
                already_complete = root.attrs.get("state") == "complete"
                if resume:
                    faults = verify_cache(path, progress=progress).faults
                    rejected = len(faults)
                    if faults:
                        log.warning("cache %s: %d written views are missing or corrupt; rewriting them", path, len(faults))
                        _reject(open_group(path, mode="r+"), faults)
                        already_complete = False
            else:
                root = _create(path, plan, teacher, recipe, fingerprints, dataset, check)
        if broadcast_object(ctx, already_complete):  # nothing to do, and nothing is touched
            return CacheWriteSummary(path, len(plan), 0, 0.0, 0.0, True, 0, check)
        root = open_group(path, mode="r+")
        buckets = root.attrs["buckets"]

        # Batches are fixed by the plan (consecutive rows of one bucket, i.e. one padded size), whatever is
        # pending: a resumed or multi-process run feeds the teacher exactly the batches an uninterrupted run
        # does, so the cached numbers do not depend on where a run stopped. A batch with any pending view is
        # recomputed; only its pending views are written.
        is_pending = ~TeacherCache(path, require_complete=False).done()  # the stored index is in plan order
        batches = []
        for b in range(len(buckets)):
            rows = np.flatnonzero(plan.bucket == b)
            batches += [rows[k : k + cfg.batch_size].tolist() for k in range(0, len(rows), cfg.batch_size)]
        mine = [bt for bt in batches[ctx.rank :: ctx.world_size] if is_pending[bt].any()]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=ListSampler([[(int(plan.position[i]), VIEW_NAMES[int(plan.view[i])]) for i in bt]
                                               for bt in mine]),
            num_workers=cfg.workers, collate_fn=collate, pin_memory=ctx.device.type == "cuda",
        )
        level_names = teacher.level_names
        use_amp = cfg.amp and ctx.device.type == "cuda"
        n_mine = int(sum(is_pending[bt].sum() for bt in mine))
        progress.start("teacher-cache", n_mine, unit="view")
        t0 = time.perf_counter()
        written = 0
        futures: list[Future] = []
        # zarr encodes a shard's inner chunks concurrently up to this limit (its default, 10, starves the writer)
        with ThreadPoolExecutor(max_workers=write_threads) as pool, zarr.config.set({"async.concurrency": 64}):
            for rows, batch in zip(mine, loader):
                batch = batch.to(ctx.device)
                with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = teacher(batch.images, batch.image_sizes, detect=False)
                masks = frs_masks(out.cls_logits)
                bucket = buckets[int(plan.bucket[rows[0]])]
                got = [tuple(f.shape[-2:]) for f in out.features]
                if got != [tuple(s) for s in bucket["level_sizes"]]:
                    raise CacheFormatError(f"teacher-cache: the teacher's level grids {got} differ from the planned "
                                           f"{bucket['level_sizes']} for padded size {bucket['padded']}")
                encoded = [encode(f, cfg.dtype) for f in out.features]  # (B, C, H, W) and (B, C) or None each
                mks = [m.to(torch.float16).cpu().numpy() for m in masks]  # (B, H, W) each
                keep = [j for j, i in enumerate(rows) if is_pending[i]]
                futures.append(pool.submit(_write_rows, root, bucket["name"], [int(plan.row[rows[j]]) for j in keep],
                                           level_names, [f[keep] for f, _ in encoded],
                                           [None if sc is None else sc[keep] for _, sc in encoded],
                                           [m[keep] for m in mks]))
                while len(futures) > 2 * write_threads:
                    futures.pop(0).result()
                n_new = int(is_pending[rows].sum())
                written += n_new
                progress.update(n_new)
            for f in futures:
                f.result()
        progress.stop()
        seconds = time.perf_counter() - t0
        barrier(ctx)
        complete = False
        if ctx.is_main:
            complete = bool(TeacherCache(path, require_complete=False).done().all())
            if complete and root.attrs.get("state") != "complete":
                root.attrs["state"] = "complete"
        barrier(ctx)
        total_written = sum(all_gather_objects(ctx, written))
        return CacheWriteSummary(path, len(plan), total_written, seconds, written / seconds if seconds > 0 else 0.0,
                                 complete, broadcast_object(ctx, rejected), check)
