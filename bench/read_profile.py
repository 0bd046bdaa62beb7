"""What reading a cache costs per view, and what of it grows with the cache: zarr-python against direct reads.

Writes one small cache with the real writer (a seeded random small teacher over generated images; the cache's
own shard size), tiles it to each size in --sizes (the same views under new image ids and rows, written with
the source arrays' chunks, shards and codecs), then at each size and for each read path (``zarr``: every
array through zarr-python; ``direct``: ``cache.direct``'s positional reads) measures:

- per view: store calls (zarr: calls into the store, of which shard-index reads; direct: preads, of which
  shard-index reads), objects (re)opened, bytes read, and milliseconds in each stage: store read, checks (CRC-32
  + finiteness, ``check_view``), collate (``CachedTargets.collate``, per view of a batch);
- per process: opening the cache and its first bucket, and what the previous reader did once per process and
  epoch: read the bucket's whole ``crc`` table (its size grows with the cache);
- a DataLoader epoch over a sample of views (``--workers`` processes started per epoch, as ``distill`` does).

It also times collating one COCO-size fp16 batch (8 views of 800x1088, P3-P7, 256 channels) the old way
(zeroed batch, then a copy into shared memory when the worker hands it over) and the new way (built in shared
memory, only the padding zeroed). Runs in about a minute on two CPU cores. Example:

    python3 bench/read_profile.py --work /tmp/read_profile --out docs/results/read_profile_$(date +%F).json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_name

COCO_LEVELS = [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]  # an 800x1088 padded view, P3-P7


# -- the caches ----------------------------------------------------------------------------------------------
def write_base_cache(work: Path, views: int, image_size: int, dtype: str) -> Path:
    """A complete cache of ``views`` views (two per generated image) from the real writer, CPU, small teacher."""
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import recipe_from_dict
    from frs_cli.data.coco import CocoIndex
    from frs_cli.data.geometry import GeometryConfig
    from frs_cli.data.synth import SynthConfig, generate
    from frs_cli.dist import setup
    from frs_cli.models import ModelConfig, build_detector
    from frs_cli.train.checkpoint import save_model

    data, path = work / "data", work / f"base_{dtype}.zarr"
    if path.exists():
        return path
    if not data.exists():
        generate(data, SynthConfig(train=views // 2, val=1, size=image_size, seed=0, min_object=12, max_objects=3))
    index = CocoIndex(data / "annotations" / "instances_train.json")
    torch.manual_seed(0)
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16)
    geometry = GeometryConfig(image_size, image_size, 32)
    save_model(work / "teacher.pt", build_detector(cfg, index.num_classes), cfg, index, geometry)
    recipe = recipe_from_dict({"data": {"root": str(data)}, "geometry": geometry.to_dict(),
                               "teacher": {"arch": cfg.arch, "anchor_size": 16, "weights": str(work / "teacher.pt")},
                               "cache": {"dtype": dtype, "batch_size": 8, "workers": 0, "write_processes": 0}})
    write_teacher_cache(recipe, str(path), ctx=setup("cpu"))
    return path


def tile_cache(src: Path, dst: Path, copies: int) -> Path:
    """``src`` repeated ``copies`` times: every bucket array's rows tiled, the index extended with new image ids
    and rows, every other array and attribute as in ``src`` (counts updated). Each array keeps its chunks,
    shards, codecs and chunk key encoding, so the result reads as the writer's own caches do."""
    import zarr

    if dst.exists():
        return dst
    s = zarr.open_group(str(src), mode="r")
    d = zarr.open_group(str(dst), mode="w")
    attrs = dict(s.attrs)
    counts = {b["name"]: b["count"] for b in attrs["buckets"]}
    step = int(s["index/image_id"][...].max()) + 1

    def copy(name: str, values: np.ndarray, like) -> None:
        meta = like.metadata.to_dict()
        d.create_array(name, shape=values.shape, dtype=values.dtype, chunks=like.chunks, shards=like.shards,
                       compressors=like.compressors, fill_value=like.fill_value,
                       chunk_key_encoding=meta["chunk_key_encoding"]).__setitem__(Ellipsis, values)

    for name, arr in _walk(s):
        v = arr[...]
        if name.startswith("buckets/"):
            v = np.concatenate([v] * copies)
        elif name == "index/image_id":
            v = np.concatenate([v + k * step for k in range(copies)])
        elif name == "index/row":
            bucket = s["index/bucket"][...]
            sizes = np.array([counts[attrs["buckets"][int(b)]["name"]] for b in bucket])
            v = np.concatenate([v + k * sizes for k in range(copies)]).astype(v.dtype)
        elif name.startswith("index/"):
            v = np.concatenate([v] * copies)
        copy(name, v, arr)
    attrs["buckets"] = [{**b, "count": b["count"] * copies} for b in attrs["buckets"]]
    attrs["num_views"] = attrs["num_views"] * copies
    d.attrs.update(attrs)
    return dst


def _walk(group, prefix: str = ""):
    for name, arr in sorted(group.arrays()):
        yield prefix + name, arr
    for name, sub in sorted(group.groups()):
        yield from _walk(sub, prefix + name + "/")


# -- counting what zarr-python asks of the store ----------------------------------------------------------------
class StoreCalls:
    """Calls into zarr's LocalStore while installed: gets (of which shard-index suffix reads and ``zarr.json``
    metadata reads, i.e. objects opened), other calls, bytes returned."""

    def __init__(self):
        self.gets = self.index_reads = self.metadata_reads = self.other = self.bytes = 0

    @contextmanager
    def installed(self):
        from zarr.abc.store import SuffixByteRequest
        from zarr.storage import LocalStore

        original = {n: getattr(LocalStore, n) for n in ("get", "exists", "list_prefix", "list_dir")}

        async def get(store, key, prototype=None, byte_range=None):
            self.gets += 1
            self.index_reads += isinstance(byte_range, SuffixByteRequest)
            self.metadata_reads += key.endswith("zarr.json")
            out = await original["get"](store, key, prototype, byte_range)
            self.bytes += 0 if out is None else len(out)
            return out

        async def exists(store, key):
            self.other += 1
            return await original["exists"](store, key)

        LocalStore.get, LocalStore.exists = get, exists
        try:
            yield self
        finally:
            for n, f in original.items():
                setattr(LocalStore, n, f)


# -- measurements ---------------------------------------------------------------------------------------------
def per_view(cache, keys: list[int], batch: int) -> dict:
    """Mean milliseconds per view in each stage of ``TeacherCache.read(raw=True)`` + ``CachedTargets.collate``."""
    from frs_cli.cache.reader import check_view
    from frs_cli.data.targets import CachedTargets

    store = check = collate = 0.0
    items = []
    for k in keys:
        name = cache.buckets[int(cache.bucket[k])].name
        row = int(cache.row[k])
        t0 = time.perf_counter()
        arrays = cache._bucket(name)
        crcs = cache._checksums(name, row)
        got = [(np.ascontiguousarray(f[row]), None if s is None else np.ascontiguousarray(s[row]),
                np.ascontiguousarray(m[row])) for f, s, m in arrays]
        t1 = time.perf_counter()
        for lv, (f, s, m) in enumerate(got):
            check_view(cache, k, cache.levels[lv].name, f, s, m, crcs[2 * lv], crcs[2 * lv + 1])
        t2 = time.perf_counter()
        items.append(CachedTargets([cache.encoding.from_numpy(f) for f, _, _ in got],
                                   [torch.from_numpy(m) for *_, m in got],
                                   [torch.from_numpy(s) for _, s, _ in got] if cache.encoding.scaled else None))
        if len(items) == batch:
            CachedTargets.collate(items)
            items = []
        t3 = time.perf_counter()
        store, check, collate = store + t1 - t0, check + t2 - t1, collate + t3 - t2
    n = len(keys)
    return {"store_ms": 1e3 * store / n, "check_ms": 1e3 * check / n, "collate_ms": 1e3 * collate / n,
            "total_ms": 1e3 * (store + check + collate) / n}


class _Views(torch.utils.data.Dataset):
    def __init__(self, cache, keys):
        self.cache, self.keys = cache, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.cache.read(self.keys[i], raw=True)


def loader_epoch(path: str, keys: list[int], direct: bool, workers: int, batch: int) -> dict:
    """Views per second of one DataLoader epoch over ``keys`` (workers started for it, as distill does)."""
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.data.targets import CachedTargets

    cache = TeacherCache(path)
    cache.direct = direct
    loader = torch.utils.data.DataLoader(_Views(cache, keys), batch_size=batch, num_workers=workers,
                                         collate_fn=CachedTargets.collate, prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    n = sum(len(b.masks[0]) for b in loader)
    return {"views_per_s": n / (time.perf_counter() - t), "workers": workers}


def profile_size(path: Path, size: int, sample: int, batch: int, workers: int, seed: int) -> dict:
    from frs_cli.cache import direct as direct_mod
    from frs_cli.cache.reader import TeacherCache

    rng = np.random.default_rng(seed)
    keys = sorted(rng.choice(size, size=min(sample, size), replace=False).tolist())
    rng.shuffle(keys)  # random order, as a shuffled epoch reads them
    out = {"views": size, "sampled_views": len(keys)}
    for mode in ("zarr", "direct"):
        calls, direct_mod.COUNTS = StoreCalls(), direct_mod.ReadCounts()
        with calls.installed():
            t = time.perf_counter()
            cache = TeacherCache(str(path))
            cache.direct = mode == "direct"
            cache.read(keys[0], raw=True)
            opened = time.perf_counter() - t
            before = (calls.gets, calls.index_reads, calls.metadata_reads, calls.bytes)
            direct_before = direct_mod.ReadCounts(**vars(direct_mod.COUNTS))
            stages = per_view(cache, keys, batch)
            n = len(keys)
            row = {"open_and_first_view_ms": 1e3 * opened, **stages,
                   "zarr_store_gets_per_view": (calls.gets - before[0]) / n,
                   "zarr_shard_index_reads_per_view": (calls.index_reads - before[1]) / n,
                   "zarr_objects_opened_per_view": (calls.metadata_reads - before[2]) / n,
                   "preads_per_view": (direct_mod.COUNTS.data_reads - direct_before.data_reads) / n,
                   "direct_shard_index_reads_per_view": (direct_mod.COUNTS.index_reads - direct_before.index_reads) / n,
                   "files_opened_per_view": (direct_mod.COUNTS.opens - direct_before.opens) / n,
                   "bytes_read_per_view": ((calls.bytes - before[3]) + (direct_mod.COUNTS.bytes_read
                                                                          - direct_before.bytes_read)) / n,
                   "objects_opened_at_start": before[2]}
        row["loader"] = loader_epoch(str(path), keys, mode == "direct", workers, batch)
        out[mode] = row
    # what the previous reader did in every process and epoch before its first view: the whole crc table
    cache, calls = TeacherCache(str(path)), StoreCalls()
    with calls.installed():
        t = time.perf_counter()
        for b in cache.buckets:
            cache.backend.array(f"buckets/{b.name}/crc")[...]
        out["whole_crc_tables"] = {"ms": 1e3 * (time.perf_counter() - t), "store_gets": calls.gets}
    return out


def coco_collate(batch: int = 8) -> dict:
    """Milliseconds to collate one COCO-size fp16 batch in a worker and hand it over: old and new way."""
    import torch.utils.data as tud

    from frs_cli.data.targets import CachedTargets

    gen = torch.Generator().manual_seed(0)
    sizes = [[(h - (i % 2), w - (i % 3)) for h, w in COCO_LEVELS] for i in range(batch)]  # mixed grids: padding
    items = [CachedTargets([torch.randn(256, h, w, generator=gen).half() for h, w in s],
                           [torch.rand(h, w, generator=gen).half() for h, w in s]) for s in sizes]

    def old():
        out = []
        for lv in range(len(COCO_LEVELS)):
            h = max(it.features[lv].shape[-2] for it in items)
            w = max(it.features[lv].shape[-1] for it in items)
            for key in ("features", "masks"):
                parts = [getattr(it, key)[lv] for it in items]
                t = parts[0].new_zeros((batch, *parts[0].shape[:-2], h, w))
                for i, p in enumerate(parts):
                    t[i, ..., : p.shape[-2], : p.shape[-1]] = p
                out.append(t.share_memory_())  # what torch does to a worker's batch that is not in shared memory
        return out

    def new():
        original = tud.get_worker_info
        tud.get_worker_info = lambda: True  # as inside a worker: the batch goes to shared memory at once
        try:
            out = CachedTargets.collate(items)
        finally:
            tud.get_worker_info = original
        return out.features + out.masks

    res = {"batch_MB": sum(t.nbytes for it in items for t in it.features + it.masks) / 1e6}
    for name, fn in (("old", old), ("new", new)):
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
            del out
        res[f"{name}_ms"] = 1e3 * min(times)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", default="128,1024,4096", help="cached views of each profiled cache")
    p.add_argument("--sample", type=int, default=128, help="views read per size and read path")
    p.add_argument("--image-size", type=int, default=64, help="generated images (square): the view size")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)  # as in one DataLoader worker
    from frs_cli.cache.checksum import IMPLEMENTATION

    sizes = [int(s) for s in args.sizes.split(",")]
    base_views = 128 if all(s % 128 == 0 for s in sizes) else min(sizes)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = write_base_cache(args.work, base_views, args.image_size, args.dtype)
    res = {"machine": f"{cpu_name()}, {os.cpu_count()} cores (shared)", "date": time.strftime("%Y-%m-%d"),
           "command": "python3 bench/read_profile.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                  for k, v in vars(args).items()),
           "crc32": IMPLEMENTATION, "dtype": args.dtype, "sizes": {}}
    from frs_cli.cache.reader import TeacherCache

    view = TeacherCache(str(base)).read(0, raw=True)
    res["view_bytes"] = sum(t.nbytes for t in view.features + view.masks + (view.scales or []))
    for size in sizes:
        path = tile_cache(base, args.work / f"tiled_{args.dtype}_{size}.zarr", size // base_views)
        res["sizes"][size] = profile_size(path, size, args.sample, args.batch, args.workers, seed=size)
        print(json.dumps({"views": size, **{m: {k: (round(v, 3) if isinstance(v, float) else v)
                                                 for k, v in res["sizes"][size][m].items()}
                                             for m in ("zarr", "direct")},
                          "whole_crc_tables": res["sizes"][size]["whole_crc_tables"]}), flush=True)
    res["coco_collate"] = coco_collate(args.batch)
    print(json.dumps({"coco_collate": res["coco_collate"]}), flush=True)
    res["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(table(res))


def table(res: dict) -> str:
    """The profile as a markdown table: one row per size and read path."""
    lines = [("| views | path | store calls / view (index reads) | objects opened / view | KB read / view | store ms "
              "| check ms | collate ms | total ms / view | loader views/s | open + first view ms |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, row in res["sizes"].items():
        for mode in ("zarr", "direct"):
            r = row[mode]
            calls = (f"{r['zarr_store_gets_per_view']:.1f} ({r['zarr_shard_index_reads_per_view']:.1f})"
                     if mode == "zarr" else
                     f"{r['preads_per_view'] + r['direct_shard_index_reads_per_view']:.1f} "
                     f"({r['direct_shard_index_reads_per_view']:.2f})")
            opened = r["zarr_objects_opened_per_view"] if mode == "zarr" else r["files_opened_per_view"]
            lines.append(f"| {size} | {mode} | {calls} | {opened:.2f} | {r['bytes_read_per_view'] / 1e3:.1f} | "
                         f"{r['store_ms']:.2f} | {r['check_ms']:.2f} | {r['collate_ms']:.2f} | {r['total_ms']:.2f} | "
                         f"{r['loader']['views_per_s']:.0f} | {r['open_and_first_view_ms']:.0f} |")
    lines.append("")
    lines.append("| views | whole crc tables (the old per-process read), ms | store calls |")
    lines.append("|---|---|---|")
    for size, row in res["sizes"].items():
        lines.append(f"| {size} | {row['whole_crc_tables']['ms']:.0f} | {row['whole_crc_tables']['store_gets']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
