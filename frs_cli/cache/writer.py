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

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import zarr

import frs_cli
from frs_cli.cache.backend import open_backend
from frs_cli.cache.checksum import damaged_arrays, view_crc
from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.cache.identity import cache_fingerprints, image_files_record, refuse_other_images, refuse_other_recipe
from frs_cli.cache.reader import (
    TeacherCache,
    attributes_error,
    refuse_edited,
    refuse_misshapen,
    refuse_renamed,
    required_cache_arrays,
)
from frs_cli.cache.schema import FORMAT_NAME, INDEX_ARRAYS, Plan, make_plan, view_bytes, view_name, views_format_version
from frs_cli.cache.shard_writer import (
    WRITE_CONFIG,
    Layout,
    OpenArrays,
    WriterProcesses,
    batch_dtypes,
    split_batch,
    write_rows,
)
from frs_cli.cache.store import codec, exists, is_hdf5, is_url, open_existing, open_group, url_options
from frs_cli.cache.teacher_pass import PassOptions, TeacherPass, pass_record, resumed_pass
from frs_cli.cache.verify import UNREADABLE, verify_cache
from frs_cli.data.coco import CocoViews, ListSampler, OriginalBatches, collate, collate_originals, resize_batch
from frs_cli.dist import DistContext, all_gather_objects, barrier, broadcast_object, check_same_job, setup
from frs_cli.errors import CacheFormatError, CacheMismatchError, ConfigError, DataError, StorageError
from frs_cli.files import free_bytes, plural, size_text, sizes_apart, storage_errors
from frs_cli.lock import job_lock, local_path
from frs_cli.models import build_teacher, check_distillable, warn_other_categories, warn_untrained_teacher
from frs_cli.progress import NullProgress, Progress, share
from frs_cli.signals import leave_stop_to_parent

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
    arrays_rewritten: tuple[str, ...] = ()  # arrays that --resume found missing or damaged and recreated
    teacher_check: dict | None = None  # the teacher's score on val images, when checked
    # this process's write loop: seconds waiting for the loader, the write side and the device, and summed over
    # the dispatcher or writer threads, waiting for the device and writing (see _Stages)
    stage_seconds: dict | None = None
    write_processes: int | None = None  # the writer processes this process ran (0: threads)
    bytes_written: int = 0  # every process's encoded features and masks handed to the writers (checksums aside)

    @property
    def mb_per_second(self) -> float:
        """The write's rate in MB/s (decimal): every process's bytes over this process's loop ``seconds``, what
        the store took (one disk under every GPU process of a host)."""
        return self.bytes_written / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _create(path: str, plan: Plan, teacher, recipe, fingerprints: dict, dataset, check: dict | None,
            options: PassOptions) -> zarr.Group:
    cfg = recipe.cache
    root = open_group(path, mode="w")
    root.attrs.update({"format": FORMAT_NAME, "format_version": max(FeatureEncoding(cfg.dtype).format_version,
                                                                     views_format_version(cfg.views)),
                       "state": "creating"})
    checksums = _create_arrays(root, plan, teacher, cfg)
    root.attrs.update({
        "checksums": checksums,
        "created_by": f"frs {frs_cli.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": recipe.name,
        "teacher": {"arch": teacher.arch, "weights": recipe.teacher.weights, "num_classes": teacher.num_classes,
                    "fingerprint": fingerprints["teacher"], "head_spec": teacher.cls_head_spec(),
                    "model_config": dataclasses.asdict(recipe.teacher), "check": check,
                    "autocast": "bfloat16" if options.amp else None, "pass": pass_record(options)},
        "levels": [lv.to_dict() for lv in teacher.levels],
        "geometry": recipe.geometry.to_dict(),
        "views": list(cfg.views),
        "fingerprints": fingerprints,
        # absolute: readers find the dataset from any folder (a recipe's data.root may be relative to the cwd)
        "dataset": {"split": cfg.split, "annotation_file": os.path.abspath(dataset.index.path),
                    "annotation_sha256": dataset.index.sha256, "num_images": len(dataset),
                    "label_to_category": dataset.index.label_to_category,
                    "category_names": [c["name"] for c in dataset.index.categories]},
        "storage": {"dtype": cfg.dtype, "codec": cfg.codec, "mask_dtype": "float16", "views_per_chunk": 1,
                    "views_per_shard": cfg.batch_size},
        "buckets": [b.to_dict() for b in plan.buckets],
        "num_views": len(plan),
        "state": "writing",
    })
    return root


def _create_arrays(root: zarr.Group, plan: Plan, teacher, cfg, only: set[str] | None = None) -> dict[str, int]:
    """The index, the per-bucket arrays (empty) and the teacher head; ``only``: just these array paths (the ones
    ``verify`` found missing or damaged), leaving every other array as it is. Returns the CRC-32 of each index and
    head array written (the root's ``checksums``)."""
    def wanted(name: str) -> bool:
        return only is None or name in only

    checksums = {}
    index = root.require_group("index")
    for name in INDEX_ARRAYS:  # the Plan's fields of the same names
        values = getattr(plan, name)
        if wanted(f"index/{name}"):
            arr = index.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape or (1,),
                                     compressors=None, fill_value=0, overwrite=True)
            arr[...] = values
            checksums[f"index/{name}"] = view_crc(values)
    encoding = FeatureEncoding(cfg.dtype)
    keys = {"name": "default", "separator": "."}  # chunk files c.<row>.0.0.0 side by side, not nested dirs
    compressors = codec(cfg.codec)
    per_shard = cfg.batch_size  # a shard is one plan batch: each writer writes whole shards, no other touches them
    buckets = root.require_group("buckets")
    for b in plan.buckets:
        g = buckets.require_group(b.name)
        s = min(per_shard, b.count)
        for lv, (h, w) in zip(teacher.levels, b.level_sizes):
            lg = g.require_group(lv.name)
            c = encoding.stored_channels(lv.channels)  # packed encodings store fewer, byte-wide channels
            at = f"buckets/{b.name}/{lv.name}"
            if wanted(f"{at}/features"):
                lg.create_array("features", shape=(b.count, c, h, w), chunks=(1, c, h, w),
                                shards=(s, c, h, w), dtype=encoding.numpy_dtype, compressors=compressors, fill_value=0,
                                chunk_key_encoding=keys, overwrite=True)
            if encoding.scaled and wanted(f"{at}/scale"):
                lg.create_array("scale", shape=(b.count, lv.channels), chunks=(1, lv.channels),
                                shards=(s, lv.channels), dtype="float32", compressors=None, fill_value=0,
                                chunk_key_encoding=keys, overwrite=True)
            if wanted(f"{at}/mask"):
                lg.create_array("mask", shape=(b.count, h, w), chunks=(1, h, w), shards=(s, h, w), dtype="float16",
                                compressors=compressors, fill_value=0, chunk_key_encoding=keys, overwrite=True)
        if wanted(f"buckets/{b.name}/done"):
            g.create_array("done", shape=(b.count,), chunks=(s,), dtype="uint8", compressors=None, fill_value=0,
                           chunk_key_encoding=keys, overwrite=True)
        if wanted(f"buckets/{b.name}/crc"):
            g.create_array("crc", shape=(b.count, 2 * len(teacher.levels)), chunks=(s, 2 * len(teacher.levels)),
                           dtype="uint32", compressors=None, fill_value=0, chunk_key_encoding=keys, overwrite=True)
    head = root.require_group("teacher_head")
    for name, t in teacher.cls_head().state_dict().items():
        if wanted(f"teacher_head/{name}"):
            a = t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
            arr = head.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape or None, compressors=None,
                                    overwrite=True)
            arr[...] = a
            checksums[f"teacher_head/{name}"] = view_crc(a)
    return checksums


def _repair_arrays(root: zarr.Group, missing: list[str], plan: Plan, teacher, cfg) -> None:
    """Recreate the arrays ``verify`` found missing (state ``writing`` first). The index and the teacher head are
    rewritten whole; a bucket that lost a per-view array (or its done flags or checksums) is written again:
    its done flags are cleared, so every view of it is pending."""
    root.attrs["state"] = "writing"
    written = _create_arrays(root, plan, teacher, cfg, only=set(missing))
    if "checksums" in root.attrs:  # a cache from before them gains none (its other arrays were never summed)
        root.attrs["checksums"] = {**root.attrs["checksums"], **written}
    for b in plan.buckets:
        prefix = f"buckets/{b.name}/"
        if any(n.startswith(prefix) for n in missing):
            root[f"{prefix}done"][...] = 0


def _check_same(path: str, root: zarr.Group, backend, recipe, teacher, dataset, views) -> None:
    attrs = dict(root.attrs)
    refuse_other_recipe(path, attrs, recipe.teacher, dataset.index, recipe.geometry, teacher=teacher,
                        classes_hint="set data.label_map as the cache was written, or write to a new path",
                        hint="write to a new path, or delete the old cache")
    refuse_other_images(path, attrs, dataset, hint="restore the image files the cache was written from, or write to "
                                                   "a new path", backend=backend)
    stored_dtype = attrs.get("storage", {}).get("dtype")
    if stored_dtype != recipe.cache.dtype:  # its arrays hold that encoding: views of another cannot go in
        raise CacheMismatchError(f"cache {path!r}: holds {stored_dtype} features, this recipe asks for cache.dtype = "
                                 f"{recipe.cache.dtype!r}", hint=f"write to a new path, or set cache.dtype = "
                                                                 f"{stored_dtype!r} to continue it")
    stored_codec = attrs.get("storage", {}).get("codec", "none")
    if stored_codec != recipe.cache.codec:  # its arrays compress with theirs: the rest would not follow the recipe
        raise CacheMismatchError(f"cache {path!r}: is stored with codec {stored_codec!r}, this recipe asks for "
                                 f"cache.codec = {recipe.cache.codec!r}",
                                 hint=f"write to a new path, or set cache.codec = {stored_codec!r} to continue it")
    if list(attrs.get("views", [])) != list(views):
        same = sorted(attrs.get("views", [])) == sorted(views)
        raise CacheMismatchError(f"cache {path!r}: holds views {attrs.get('views')}, this recipe asks for {list(views)}",
                                 hint="the same views in another order: list them in the cache's order" if same else
                                 None)


class _Stages:
    """Where the write loop's time goes (seconds). On the main thread: waiting for the loader, waiting for the
    write side (a free writer slot, or with threads or unpinned slots the bounded write queue) and, when the
    device copies each batch straight into a slot, waiting for the batches in flight on the device
    (``gpu_wait``: the teacher is the bound, as it should be). Summed over the dispatcher or writer threads:
    waiting for the device and writing. Of the loop's start: ``first_batch``, the part of ``loader_wait`` spent on
    the first batch, and ``slots``, allocating the writer processes' shared slots and registering them with CUDA.
    Of its end (with writer processes; part of ``backpressure``): ``last_writes``, waiting for the batches handed
    over to be written, ``join``, for the processes to exit, and ``free``, unregistering and freeing the slots."""

    def __init__(self):
        self.loader_wait = self.backpressure = self.gpu_wait = self.device_wait = self.write = 0.0
        self.first_batch = self.slots = self.last_writes = self.join = self.free = 0.0
        self._lock = threading.Lock()

    def add(self, device_wait: float, write: float) -> None:
        with self._lock:
            self.device_wait += device_wait
            self.write += write

    def to_dict(self) -> dict[str, float]:
        return {"loader_wait": self.loader_wait, "backpressure": self.backpressure, "gpu_wait": self.gpu_wait,
                "device_wait": self.device_wait, "write": self.write, "first_batch": self.first_batch,
                "slots": self.slots, "last_writes": self.last_writes, "join": self.join, "free": self.free}

    def wait_in_flight(self, futures: list[Future], limit: int, on_device: bool) -> None:
        """Wait for the oldest of ``futures`` until at most ``limit`` are left. With ``on_device`` each only waits
        for its batch's copy out of the device and hands the slot over (``gpu_wait``); else it also writes or
        waits for a free slot (``backpressure``)."""
        t = time.perf_counter()
        while len(futures) > limit:
            futures.pop(0).result()
        waited = time.perf_counter() - t
        if on_device:
            self.gpu_wait += waited
        else:
            self.backpressure += waited


class _HostCopier:
    """Copies a batch's encoded tensors to pinned host memory on a side CUDA stream, so the next batch's
    forward pass does not wait for the copy; the writer thread waits for the copy's event instead."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def copy(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
        if self.stream is None:  # already on the host
            return tensors, None
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        host = []
        with torch.cuda.stream(self.stream):
            for t in tensors:
                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                h.copy_(t, non_blocking=True)
                t.record_stream(self.stream)  # its memory is not reused before the copy has read it
                host.append(h)
            event = torch.cuda.Event()
            event.record(self.stream)
        return host, event


def _write_batch(root: OpenArrays, bucket: str, rows: list[int], level_names, encoding: FeatureEncoding,
                 host, stages: _Stages) -> None:
    """Writer thread: wait for one batch's host copy, then write its views (``write_rows``).

    ``host``: ``(tensors, event)`` from ``_HostCopier``; tensors are per level the features as ``encoding``
    carries them (and their scales when it is scaled), then the masks of every level.
    """
    tensors, event = host
    t0 = time.perf_counter()
    if event is not None:
        event.synchronize()  # releases the GIL while the device finishes the batch
    t1 = time.perf_counter()
    feats, scales, masks = split_batch(tensors, len(level_names), encoding.scaled)
    write_rows(root, bucket, rows, level_names, [encoding.to_numpy(f) for f in feats],
               [None if sc is None else sc.numpy() for sc in scales], [m.numpy() for m in masks])
    stages.add(t1 - t0, time.perf_counter() - t1)


def _dispatch(procs: WriterProcesses, bucket: str, rows: list[int], level_names, encoding: FeatureEncoding,
              host, stages: _Stages) -> None:
    """Dispatcher thread: wait for one batch's host copy, copy its bytes into a free shared-memory slot (waiting
    for one if the writer processes are behind) and hand it to them; they see the features as ``encoding``
    stores them (its ``numpy_dtype``)."""
    tensors, event = host
    t0 = time.perf_counter()
    if event is not None:
        event.synchronize()
    t1 = time.perf_counter()
    dtypes = batch_dtypes(len(level_names), encoding.numpy_dtype, encoding.scaled)
    layout = Layout.of([(t.shape, d) for t, d in zip(tensors, dtypes)], encoding.scaled)
    slot, buffer = procs.slot()
    t2 = time.perf_counter()
    dst = torch.frombuffer(buffer, dtype=torch.uint8, count=layout.nbytes)
    for (offset, _, _), t in zip(layout.arrays, tensors):
        src = t.reshape(-1).view(torch.uint8)
        dst[offset : offset + src.numel()].copy_(src)
    del dst
    procs.put(slot, bucket, rows, level_names, layout)
    stages.add(t1 - t0, time.perf_counter() - t2)


def _copy_to_slot(procs: WriterProcesses, copier: _HostCopier, tensors: list[torch.Tensor],
                  encoding: FeatureEncoding, levels: int) -> tuple[int, Layout, torch.cuda.Event]:
    """Main thread, slots registered with CUDA (``WriterProcesses.pin``): take a free slot (waiting for one if the
    writer processes are behind) and copy one batch's device tensors straight into it on the copier's side stream.
    Returns the slot, the batch's layout in it and the event that marks the copy done."""
    layout = Layout.of([(t.shape, d) for t, d in zip(tensors, batch_dtypes(levels, encoding.numpy_dtype,
                                                                           encoding.scaled))], encoding.scaled)
    slot, _ = procs.slot()
    dst = procs.pinned(slot)
    stream = copier.stream
    stream.wait_stream(torch.cuda.current_stream(stream.device))
    with torch.cuda.stream(stream):
        for (offset, _, _), t in zip(layout.arrays, tensors):
            src = t.reshape(-1).view(torch.uint8)
            dst[offset : offset + src.numel()].copy_(src, non_blocking=True)
            t.record_stream(stream)  # its memory is not reused before the copy has read it
        event = torch.cuda.Event()
        event.record(stream)
    return slot, layout, event


def _hand_over(procs: WriterProcesses, slot: int, layout: Layout, event: torch.cuda.Event, bucket: str,
               rows: list[int], level_names, stages: _Stages) -> None:
    """Dispatcher thread: wait for the copy into ``slot``, then hand the slot to the writer processes."""
    t0 = time.perf_counter()
    event.synchronize()
    t1 = time.perf_counter()
    procs.put(slot, bucket, rows, level_names, layout)
    stages.add(t1 - t0, time.perf_counter() - t1)


def _batch_layout(levels, level_sizes, batch: int, encoding: FeatureEncoding) -> Layout:
    """The shared-memory layout of a full batch of one bucket (the largest a slot must hold)."""
    shapes = []
    for lv, (h, w) in zip(levels, level_sizes):
        shapes.append((batch, encoding.stored_channels(lv.channels), h, w))
        if encoding.scaled:
            shapes.append((batch, lv.channels))
    shapes += [(batch, h, w) for h, w in level_sizes]
    dtypes = batch_dtypes(len(levels), encoding.numpy_dtype, encoding.scaled)
    return Layout.of(list(zip(shapes, dtypes)), encoding.scaled)


def _reject(root: zarr.Group, faults) -> int:
    """Mark the views ``verify`` rejected as not done (state ``writing`` first, so a kill here leaves no
    "complete" cache with views missing). A shard that does not decode (truncated: its index is gone) cannot be
    written into, since zarr reads a shard back to update part of it: it is deleted whole and every view it
    held is marked not done, so the resumed run writes it whole again. Returns how many views were marked."""
    from zarr.core.sync import sync

    root.attrs["state"] = "writing"
    marked = set()
    for f in faults:
        marked.add((f.bucket, f.row))
        root[f"buckets/{f.bucket}/done"][f.row] = 0
        for name, what in f.problems:
            if what != UNREADABLE:
                continue
            arr = root[f"buckets/{f.bucket}/{name}"]
            per_shard = (arr.shards or arr.chunks)[0]
            shard = f.row // per_shard
            key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
            sync(arr.store.delete(f"{arr.path}/{key}"))
            stop = min(arr.shape[0], (shard + 1) * per_shard)
            root[f"buckets/{f.bucket}/done"][shard * per_shard : stop] = 0
            marked.update((f.bucket, r) for r in range(shard * per_shard, stop))
    return len(marked)


def write_teacher_cache(recipe, path: str, *, resume: bool = False, ctx: DistContext | None = None,
                        progress: Progress | None = None, write_threads: int = 4,
                        write_processes: int | None = None, resize_on_device: bool | None = None,
                        pass_options: PassOptions | None = None) -> CacheWriteSummary:
    """Cache the teacher of ``recipe`` over ``recipe.cache.split`` at ``path`` (see ``cache.schema``).

    ``path``: a local directory or an fsspec URL (a Zarr v3 group either way). A complete cache is left
    untouched, unless ``resume``: then it is verified and the views verify rejects are rewritten. With
    ``recipe.cache.check_teacher_images`` > 0 the teacher is first scored on that many val images, and
    nothing is written when its AP is below ``recipe.cache.min_teacher_map`` (ModelError).
    Raises StorageError when a write fails (disk full); what was written stays, ``resume`` continues it.
    One writer per cache: LockError, naming the holder, while another writer holds ``path`` (``frs_cli.lock``).
    Writing happens in ``write_processes`` worker processes (default ``recipe.cache.write_processes``, "auto"
    resolved by ``CacheConfig.writer_processes``), or in ``write_threads`` threads of this process when that
    is 0. On a GPU, loader workers only decode and the GPU resizes (``resize_on_device``, default
    ``recipe.cache.resize_on_gpu`` on CUDA devices).
    ``pass_options``: how the teacher runs (``cache.teacher_pass``); default: from the recipe and the device
    (``PassOptions.for_device``). Its ``amp`` is the precision the cache records (``teacher.autocast``).
    """
    if is_hdf5(path):
        raise ConfigError(f"teacher-cache --out {path!r}: expected a Zarr path or URL, got an HDF5 file name",
                          hint="write the Zarr cache, then: frs cache export CACHE OUT.h5")
    cfg = recipe.cache
    cfg.check_training_scales(recipe.train.min_sizes, recipe.geometry)  # a cache the student could not train on
    ctx = ctx or setup()
    n_procs = cfg.writer_processes(ctx.local_world_size) if write_processes is None else write_processes
    if str(path).startswith("memory://"):
        n_procs = 0  # an in-memory store exists in this process only
    with job_lock(path, ctx, what="teacher-cache --out"):  # one writer per cache (rank 0 holds it for the job)
        local = _local_path(str(path))
        empty_folder = _empty_folder(local)
        new = empty_folder or not exists(path)
        # started first, so they import while the teacher loads
        procs = WriterProcesses(path, url_options(path), n_procs) if n_procs else None
        try:
            return _write(recipe, path, resume, ctx, progress, write_threads, procs, resize_on_device, pass_options)
        except DataError:  # an image that does not decode or fit its annotation, found when the writer read it
            if new and local is not None and ctx.world_size == 1:
                if procs is not None:
                    with contextlib.suppress(Exception):  # the batches in flight land before the folder goes
                        procs.close(wait=True)
                _discard_unwritten(local, empty_folder)
            raise
        finally:
            if procs is not None:
                procs.close(wait=False)  # after an error; the normal path has closed them already


def _discard_unwritten(local: str, keep_folder: bool) -> None:
    """Remove the cache this run created at ``local`` when it holds no written view: its index and teacher head
    are all it has, and a cache left there would make the next run (the image replaced, or left out of the
    annotation file) ask for --resume or refuse another dataset. A cache with views written stays resumable."""
    try:
        if TeacherCache(local, require_complete=False).done().any():
            return
    except (CacheFormatError, OSError, ValueError, KeyError):  # not created yet, or half-created: nothing of worth
        pass
    shutil.rmtree(local, ignore_errors=True)
    if keep_folder:  # the empty folder the user gave stays
        os.makedirs(local, exist_ok=True)


def _write(recipe, path: str, resume: bool, ctx: DistContext | None, progress: Progress | None, write_threads: int,
           procs: WriterProcesses | None, resize_on_device: bool | None,
           options: PassOptions | None) -> CacheWriteSummary:
    progress = progress or NullProgress()
    ctx = ctx or setup()
    cfg = recipe.cache
    options = options or PassOptions.for_device(ctx.device, cfg.amp, cfg.channels_last, cfg.cuda_graphs)
    dataset = CocoViews.from_config(recipe.data, cfg.split, recipe.geometry)
    dataset.check_files()
    # a cache no student can use is waste
    check_distillable(recipe.student, recipe.teacher, dataset.index.num_classes, command="teacher-cache")
    if ctx.is_main:
        warn_untrained_teacher(recipe.teacher, "teacher-cache")
    teacher = build_teacher(recipe.teacher, dataset.index.num_classes).to(ctx.device).eval().requires_grad_(False)
    if ctx.is_main:
        warn_other_categories(teacher, dataset.index.categories, "teacher-cache")
    fingerprints = cache_fingerprints(recipe.teacher, teacher, dataset.index, recipe.geometry)
    check_same_job(ctx, "teacher-cache", {**recipe.to_dict(), "--out": str(path), "--resume": resume,
                                          "the dataset (fingerprint)": fingerprints["dataset"]})
    encoding = FeatureEncoding(cfg.dtype)
    for lv in teacher.levels:  # a packed encoding the teacher's channels do not fit is refused before any work
        encoding.stored_channels(lv.channels)
    plan = make_plan(dataset, cfg.views, teacher.strides)
    dataset.require_images("teacher-cache", cfg.split, hint="cache a split with images")
    _check_space(path, plan, [lv.channels for lv in teacher.levels], cfg, resume, ctx)  # before the teacher check
    check = None
    if cfg.check_teacher_images > 0:
        from frs_cli.eval.teacher_check import check_teacher

        val = CocoViews.from_config(recipe.data, recipe.data.val, recipe.geometry, scored=True)
        check = check_teacher(teacher, val, cfg.check_teacher_images, cfg.min_teacher_map, ctx, split=recipe.data.val,
                              fingerprint=fingerprints["teacher"], batch_size=cfg.batch_size, workers=cfg.workers,
                              amp=cfg.amp, progress=progress)
    hint = "free space (or fix the store), then run the same command with --resume"
    with storage_errors(f"cache {path}", hint=hint):  # a full disk: one line, the cache stays resumable
        already_complete, rejected, repaired, options = _open_store(path, resume, ctx, plan, teacher, recipe,
                                                                    fingerprints, dataset, check, progress, options)
        options = broadcast_object(ctx, options)  # the pass the cache's written views were computed with
        if broadcast_object(ctx, already_complete):  # nothing to do, and nothing is touched
            return CacheWriteSummary(path, len(plan), 0, 0.0, 0.0, True, 0, (), check)
        root = open_group(path, mode="r+")
        # the fast pass changes the teacher's weights in place: only after they were fingerprinted and stored
        run = TeacherPass(teacher, encoding, options).prepare()
        written, nbytes, seconds, stages = _write_pending(root, path, plan, run, dataset, cfg, ctx, progress,
                                                          write_threads, procs, resize_on_device)
        barrier(ctx)
        complete = False
        if ctx.is_main:
            complete = bool(TeacherCache(path, require_complete=False).done().all())
            if complete and root.attrs.get("state") != "complete":
                # the image files as the cache is completed: a file replaced before (one that did not decode, then
                # --resume) is read as it is now; one replaced after is refused by every reader
                sizes = np.asarray(dataset.file_sizes(), dtype=np.int64)  # names a file that changed later
                root.require_group("index").create_array(
                    "file_bytes", shape=sizes.shape, dtype=sizes.dtype, chunks=sizes.shape, compressors=None,
                    fill_value=-1, overwrite=True)[...] = sizes
                root.attrs["dataset"] = {**root.attrs["dataset"], "image_files": image_files_record(dataset)}
                root.attrs["state"] = "complete"
        barrier(ctx)
        gathered = all_gather_objects(ctx, (written, nbytes))
        total_written, total_bytes = sum(g[0] for g in gathered), sum(g[1] for g in gathered)
        return CacheWriteSummary(path, len(plan), total_written, seconds, written / seconds if seconds > 0 else 0.0,
                                 complete, broadcast_object(ctx, rejected), tuple(broadcast_object(ctx, repaired)),
                                 check, stages.to_dict(), len(procs) if procs is not None else 0, total_bytes)


def _space_needed(path: str, plan: Plan, channels, cfg, resume: bool) -> tuple[int, int, bool] | None:
    """(bytes, views, fresh) still to write at ``path``: every planned view when nothing is there (``fresh``); with
    ``resume``, of an existing cache of this recipe's views, dtype and plan, the views not marked done. None for
    anything else there (another cache, an incomplete one without ``resume``, not a cache): the checks that follow
    name it, and no size would be right."""
    need = view_bytes(plan, channels, FeatureEncoding(cfg.dtype))
    if not exists(path) or _empty_folder(path):  # an empty folder is filled
        return int(need.sum()), len(need), True
    if not resume:
        return None
    try:
        existing = TeacherCache(path, require_complete=False)
        if (existing.views != list(cfg.views) or existing.dtype != cfg.dtype or len(existing) != len(plan)
                or existing.attrs.get("state") == "creating"):
            return None
        pending = need[~existing.done()]
    except (CacheFormatError, OSError, ValueError, KeyError):  # not a cache this recipe resumes: the checks after say so
        return None
    return int(pending.sum()), len(pending), False


def _empty_folder(local: str | None) -> bool:
    """Whether ``local`` (a local path, or None for a URL) is a folder with nothing in it."""
    return local is not None and os.path.isdir(local) and not os.listdir(local)


def _local_path(path: str) -> str | None:
    """The local file-system path a cache at ``path`` is written to (a plain path or a ``file://`` URL), or None."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if is_url(path) else path


def _check_space(path: str, plan: Plan, channels, cfg, resume: bool, ctx: DistContext) -> None:
    """StorageError before any work when the views still to write cannot fit on the local disk of ``path`` (a
    COCO cache is terabytes: better refused at once than stopped by a full disk hours in); with a compressing
    codec the sizes are upper bounds, so a warning. Remote stores are not checked."""
    problem = None
    local = _local_path(str(path))
    sized = _space_needed(local, plan, channels, cfg, resume) if ctx.is_main and local is not None else None
    if sized is not None:
        need, views, fresh = sized
        free = free_bytes(local)
        if free is not None and need > free:
            shown = sizes_apart(need, free)
            message = (f"teacher-cache --out {path!r}: the {views} views still to write need about {shown[0]} "
                       f"({cfg.dtype}, no codec), the disk there has {shown[1]} free")
            hint = "free space"
            if fresh:  # another path or dtype is a choice only before anything is written
                smaller = [f"{d} about {size_text(view_bytes(plan, channels, FeatureEncoding(d)).sum())}"
                           for d in ("int8", "int5") if FeatureEncoding(d).bits < FeatureEncoding(cfg.dtype).bits]
                hint += " or write elsewhere" + (f"; cache.dtype {', '.join(smaller)}" if smaller else "")
            problem = (message, hint)
    problem = broadcast_object(ctx, problem)
    if problem is None:
        return
    if cfg.codec != "none":
        if ctx.is_main:
            log.warning("%s; with codec %s it may fit (%s)", problem[0], cfg.codec, problem[1])
        return
    raise StorageError(problem[0], hint=problem[1])


def _verb_and_pronoun(n: int) -> tuple[str, str]:
    """("is", "it") for one thing, ("are", "them") for more: the words a count's sentence agrees with."""
    return ("is", "it") if n == 1 else ("are", "them")


def _open_store(path: str, resume: bool, ctx: DistContext, plan: Plan, teacher, recipe, fingerprints: dict, dataset,
                check: dict | None, progress: Progress,
                options: PassOptions) -> tuple[bool, int, list[str], PassOptions]:
    """Process 0 creates the cache, or checks the existing one is this recipe's (and with ``resume`` verifies
    and repairs it). Returns (already complete, views ``verify`` rejected, arrays recreated, the teacher pass to
    add views with: ``options``, or the cache's own when it began with another); other processes get
    (False, 0, [], options)."""
    cfg = recipe.cache
    if not ctx.is_main:
        return False, 0, [], options
    root = open_existing(path, mode="r")
    if root is None or root.attrs.get("state") == "creating":
        _create(path, plan, teacher, recipe, fingerprints, dataset, check, options)
        return False, 0, [], options
    backend = open_backend(path)
    refuse_misshapen(path, backend, dict(root.attrs))
    missing = [n for n in required_cache_arrays(backend.attrs) if not backend.has(n)]
    refuse_renamed(path, backend, dict(backend.attrs), missing)  # before --resume writes views under an edited name
    _check_same(path, root, backend, recipe, teacher, dataset, cfg.views)
    warning = None
    if resume:  # before anything is touched: a cache holds the views of one teacher pass
        written = _any_written(path)
        options, warning = resumed_pass(path, dict(root.attrs.get("teacher", {})), options, written)
        if not written:  # no view yet: this run's pass is the cache's
            group = open_group(path, mode="r+")
            group.attrs["teacher"] = {**dict(group.attrs["teacher"]), "autocast": "bfloat16" if options.amp else None,
                                      "pass": pass_record(options)}
    if root.attrs.get("state") != "complete" and not resume:
        raise CacheFormatError(f"cache {path!r}: exists and is incomplete",
                               hint="add --resume to continue it, or delete it")
    already_complete, rejected = root.attrs.get("state") == "complete", 0
    if not resume:
        if missing:
            raise CacheFormatError(f"cache {path!r}: is damaged: {len(missing)} arrays the format "
                                   f"requires are missing ({', '.join(missing[:3])})",
                                   hint="add --resume to recreate them")
        damaged = damaged_arrays(backend, dict(backend.attrs))
        if damaged:
            raise CacheFormatError(f"cache {path!r}: is damaged: {len(damaged)} index or teacher-head arrays do not "
                                   f"match their checksums ({', '.join(damaged[:3])})",
                                   hint="add --resume to recreate them")
        refuse_edited(path, backend, dict(backend.attrs))
        return already_complete, 0, [], options
    _remove_unfinished_writes(path)
    report = verify_cache(path, progress=progress)
    broken = [*report.missing_arrays, *report.damaged_arrays]
    if broken:
        log.warning("cache %s: %s %s missing or damaged; recreating %s", path, plural(len(broken), "array"),
                    *_verb_and_pronoun(len(broken)))
        _repair_arrays(open_group(path, mode="r+"), broken, plan, teacher, cfg)
        already_complete = False
        report = verify_cache(path, progress=progress)  # the views, now that every array exists
    if report.attribute_faults:  # no view was checked: nothing to rewrite, and --resume does not mend attributes
        raise attributes_error(path, report.kind, report.attribute_faults)
    if report.faults:
        log.warning("cache %s: %s %s missing or corrupt; rewriting %s", path,
                    plural(len(report.faults), "written view"), *_verb_and_pronoun(len(report.faults)))
        rejected = _reject(open_group(path, mode="r+"), report.faults)
        already_complete = False
    if already_complete and report.views_done < report.views_total:  # marked complete, yet views not marked done
        log.warning("cache %s: is marked complete, but %d of its %d views are not marked written (their done flags "
                    "were lost); writing them", path, report.views_total - report.views_done, report.views_total)
        open_group(path, mode="r+").attrs["state"] = "writing"
        already_complete = False
    if warning and not already_complete:  # said only when views are added
        log.warning(warning)
    return already_complete, rejected, broken, options


def _any_written(path: str) -> bool:
    """Whether any view of the cache at ``path`` is marked written (a cache too damaged to tell: taken as yes)."""
    try:
        return bool(TeacherCache(path, require_complete=False).done().any())
    except (CacheFormatError, OSError, KeyError, ValueError):
        return True


_UNFINISHED = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's name for a chunk or shard being written


def _remove_unfinished_writes(path: str) -> None:
    """Delete the files a killed writer left half-written in a local store: zarr writes each chunk or shard to
    ``<name>.<32 hex digits>.partial`` and renames it when whole. Called under the job's lock, so no write of
    another job is under way; they hold nothing the cache reads, but take disk space (and ``cache info`` counts it)."""
    local = local_path(path)
    if local is None or not local.is_dir():
        return
    found = [p for p in local.rglob("*.partial") if _UNFINISHED.search(p.name) and p.is_file()]
    freed = 0
    for p in found:
        with contextlib.suppress(FileNotFoundError):
            freed += p.stat().st_size
            p.unlink()
    if found:
        log.info("cache %s: removed %d half-written files a stopped writer left (%s)", path, len(found),
                 size_text(freed))


def _my_batches(plan: Plan, num_buckets: int, is_pending: np.ndarray, batch_size: int, ctx: DistContext) -> list:
    """This process's plan batches (row lists) that hold a pending view.

    Batches are fixed by the plan (consecutive rows of one bucket, i.e. one padded size), whatever is pending: a
    resumed or multi-process run feeds the teacher exactly the batches an uninterrupted run does, so the cached
    numbers do not depend on where a run stopped. A batch with any pending view is recomputed; only its pending
    views are written."""
    batches = []
    for b in range(num_buckets):
        rows = np.flatnonzero(plan.bucket == b)
        batches += [rows[k : k + batch_size].tolist() for k in range(0, len(rows), batch_size)]
    return [bt for bt in batches[ctx.rank :: ctx.world_size] if is_pending[bt].any()]


def _write_pending(root: zarr.Group, path: str, plan: Plan, run: TeacherPass, dataset, cfg, ctx: DistContext,
                   progress: Progress, write_threads: int, procs: WriterProcesses | None,
                   resize_on_device: bool | None) -> tuple[int, int, float, _Stages]:
    """Run the teacher over this process's pending batches and write them; (views written, bytes of their encoded
    features and masks, seconds, stages)."""
    buckets = root.attrs["buckets"]
    is_pending = ~TeacherCache(path, require_complete=False).done()  # the stored index is in plan order
    mine = _my_batches(plan, len(buckets), is_pending, cfg.batch_size, ctx)
    # on a GPU, workers only decode and the GPU resizes: CPU resizing cannot keep up with the teacher
    on_gpu = (ctx.device.type == "cuda" and cfg.resize_on_gpu) if resize_on_device is None else resize_on_device
    keys = ListSampler([[(int(plan.position[i]), view_name(plan.view[i], cfg.views)) for i in bt] for bt in mine])
    common = {"num_workers": cfg.workers, "pin_memory": ctx.device.type == "cuda",
              "prefetch_factor": 4 if cfg.workers > 0 else None,
              "worker_init_fn": leave_stop_to_parent if cfg.workers > 0 else None}
    if on_gpu:  # a worker decodes each file of a batch once: a plan batch holds both views of its images
        loader = torch.utils.data.DataLoader(OriginalBatches(dataset), sampler=keys, batch_size=None,
                                             collate_fn=collate_originals, **common)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=keys, collate_fn=collate, **common)
    levels = run.teacher.levels
    batches_in = iter(zip(mine, loader))  # the workers start decoding while the teacher warms up
    run.warm_up(sorted({(len(bt), *buckets[int(plan.bucket[bt[0]])]["padded"]) for bt in mine}), ctx.device)
    progress.start(share("teacher-cache", ctx.world_size), int(sum(is_pending[bt].sum() for bt in mine)), unit="view")
    t0 = time.perf_counter()
    written = nbytes = 0
    stages = _Stages()
    futures: list[Future] = []
    copier = _HostCopier(ctx.device)
    arrays = OpenArrays(root)  # the writer threads' arrays, opened once
    direct = False  # the device copies each batch straight into a shared-memory slot
    if procs is not None:
        t_slots = time.perf_counter()
        procs.allocate(max(_batch_layout(levels, b["level_sizes"], cfg.batch_size, run.encoding).nbytes
                           for b in buckets), slots=2 * len(procs))
        direct = copier.stream is not None and procs.pin()
        stages.slots = time.perf_counter() - t_slots
    in_flight = 2 if procs is not None else 2 * write_threads  # batches waiting in host memory, at most
    # zarr encodes a shard's inner chunks concurrently up to this limit (its default, 10, starves the writer)
    with ThreadPoolExecutor(max_workers=1 if procs is not None else write_threads) as pool, \
            zarr.config.set(WRITE_CONFIG):
        while True:
            t_wait = time.perf_counter()
            item = next(batches_in, None)
            stages.loader_wait += time.perf_counter() - t_wait
            if not futures:  # nothing handed over yet: the first batch
                stages.first_batch = time.perf_counter() - t_wait
            if item is None:
                break
            rows, batch = item
            bucket = buckets[int(plan.bucket[rows[0]])]
            keep = [j for j, i in enumerate(rows) if is_pending[i]]
            tensors = _encoded_batch(run, batch, on_gpu, ctx.device, bucket, keep, len(rows))
            names, where = [lv.name for lv in levels], [int(plan.row[rows[j]]) for j in keep]
            t_wait = time.perf_counter()
            if direct:
                slot, layout, event = _copy_to_slot(procs, copier, tensors, run.encoding, len(levels))
                stages.backpressure += time.perf_counter() - t_wait  # waiting for a free slot
                futures.append(pool.submit(_hand_over, procs, slot, layout, event, bucket["name"], where, names,
                                           stages))
            else:
                args = (bucket["name"], where, names, run.encoding, copier.copy(tensors), stages)
                futures.append(pool.submit(_dispatch, procs, *args) if procs is not None
                               else pool.submit(_write_batch, arrays, *args))
            stages.wait_in_flight(futures, in_flight, on_device=direct)
            written += len(keep)
            nbytes += sum(t.nbytes for t in tensors)  # sizes only: no wait for the device
            progress.update(len(keep))
        t_wait = time.perf_counter()
        for f in futures:
            f.result()
        if procs is not None:
            procs.close()  # waits for the writer processes to finish every batch
            stages.last_writes, stages.join, stages.free = (procs.seconds[k] for k in ("wait", "join", "free"))
        stages.backpressure += time.perf_counter() - t_wait
    progress.stop()
    return written, nbytes, time.perf_counter() - t0, stages


def _encoded_batch(run: TeacherPass, batch, on_gpu: bool, device: torch.device, bucket: dict, keep: list[int],
                   rows: int) -> list[torch.Tensor]:
    """One loader batch through the teacher pass: its tensors in ``batch_dtypes`` order, only the ``keep`` views,
    on the device (the host copy follows on a side stream: the next batch's forward does not wait for it)."""
    if on_gpu:
        images, image_sizes = resize_batch(batch, device)
    else:
        batch = batch.to(device)
        images, image_sizes = batch.images, batch.image_sizes
    tensors = run(images, image_sizes)
    got = [tuple(m.shape[-2:]) for m in tensors[-len(bucket["level_sizes"]):]]  # the masks' grids
    if got != [tuple(s) for s in bucket["level_sizes"]]:
        raise CacheFormatError(f"teacher-cache: the teacher's level grids {got} differ from the "
                               f"planned {bucket['level_sizes']} for padded size {bucket['padded']}")
    if len(keep) < rows:
        index = torch.tensor(keep, device=device)
        tensors = [t.index_select(0, index) for t in tensors]
    return tensors
