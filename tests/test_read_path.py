"""The cache's read path (issue 13): direct positional reads, cheap checks, the shared-memory collate, and the
benchmark scripts that measure it (bench/cached_step.py, bench/gpu_hours.py, bench/cache_verdicts.py)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import load_bench as _bench

from frs_cli.cache import direct
from frs_cli.cache.checksum import crc32, view_crc
from frs_cli.cache.direct import DirectArray
from frs_cli.cache.reader import TeacherCache
from frs_cli.data.targets import CachedTargets
from frs_cli.errors import CacheFormatError


# -- direct reads -----------------------------------------------------------------------------------------------
def _array(root: Path, name: str, values: np.ndarray, shards: int | None, rows: int = 1, **kw):
    g = zarr.open_group(str(root), mode="a")
    a = g.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(rows, *values.shape[1:]),
                       shards=None if shards is None else (shards, *values.shape[1:]), compressors=kw.pop("compressors", None),
                       fill_value=0, chunk_key_encoding={"name": "default", "separator": "."}, **kw)
    a[...] = values
    return root / name


@pytest.mark.parametrize("dtype", ["float16", "int8", "uint8", "float32", "uint32"])
def test_direct_rows_equal_zarrs_for_sharded_unsharded_partial_and_unwritten_rows(tmp_path, dtype):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((11, 3, 4, 5)) * 50).astype(dtype)
    values[5] = 0  # an all-zero row: zarr does not store that inner chunk (its index marks it empty)
    sharded = DirectArray.open(_array(tmp_path / "g.zarr", "s", values, shards=4))  # the last shard holds 3 of 4
    plain = DirectArray.open(_array(tmp_path / "g.zarr", "p", values.reshape(11, -1), shards=None, rows=4))
    assert sharded.sharded and not plain.sharded
    ref = zarr.open_group(str(tmp_path / "g.zarr"), mode="r")
    for row in range(11):
        got = sharded[row]
        assert got.dtype == np.dtype(dtype) and got.shape == (3, 4, 5) and got.flags.writeable
        np.testing.assert_array_equal(got, ref["s"][row])
        np.testing.assert_array_equal(plain[row], ref["p"][row])
    np.testing.assert_array_equal(sharded[...], values)  # anything but one row goes to zarr
    index = np.frombuffer((tmp_path / "g.zarr" / "s" / "c.1.0.0.0").read_bytes()[-68:-4], "<u8").reshape(4, 2)
    assert (index[1] == 2**64 - 1).all()  # row 5 really is an unwritten inner chunk


def test_direct_open_declines_layouts_it_does_not_read(tmp_path):
    from zarr.codecs import ZstdCodec

    values = np.arange(24, dtype="float16").reshape(2, 3, 4)
    assert DirectArray.open(_array(tmp_path / "g.zarr", "zstd", values, shards=2, compressors=[ZstdCodec()])) is None
    assert DirectArray.open(_array(tmp_path / "g.zarr", "rows2", values, shards=2, rows=2)) is None  # 2 rows a chunk
    assert DirectArray.open(tmp_path / "nothing") is None
    assert DirectArray.open(_array(tmp_path / "g.zarr", "ok", values, shards=2)) is not None


def test_reader_reads_a_local_cache_with_one_pread_per_array_and_no_zarr_call(cache_path, monkeypatch):
    from zarr.storage import LocalStore

    ref = TeacherCache(cache_path)
    ref.direct = False
    expected = [ref.read(k, raw=True) for k in range(len(ref))]
    cache = TeacherCache(cache_path)
    cache._bucket(cache.buckets[0].name)  # opened (zarr.json read directly)

    async def no_zarr(*args, **kwargs):
        raise AssertionError("a store call through zarr")

    monkeypatch.setattr(LocalStore, "get", no_zarr)
    before = direct.ReadCounts(**vars(direct.COUNTS))
    got = [cache.read(k, raw=True) for k in range(len(cache))]
    levels = len(cache.levels)
    assert direct.COUNTS.data_reads - before.data_reads == len(cache) * (2 * levels + 1)  # features, mask; crc row
    shards = len(cache) // cache.attrs["storage"]["views_per_shard"]
    assert direct.COUNTS.index_reads - before.index_reads == shards * 2 * levels  # each shard index read once
    for a, b in zip(got, expected):
        for x, y in zip(a.features + a.masks, b.features + b.masks, strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)


def test_direct_read_of_a_truncated_shard_names_the_view_and_the_repair(cache_path, tmp_path):
    c = tmp_path / "c.zarr"
    shutil.copytree(cache_path, c)
    shard = c / "buckets" / "64x64" / "P4" / "features" / "c.1.0.0.0"
    shard.write_bytes(shard.read_bytes()[:-100])  # the index at its end is cut
    cache = TeacherCache(str(c))
    k = int(np.flatnonzero((cache.row // 4) == 1)[0])  # a view of that shard
    with pytest.raises(CacheFormatError, match=r"\(bucket 64x64, row 4\): level P4 is unreadable \(cache file .*"
                                               r"c\.1\.0\.0\.0': (is truncated or corrupt: its shard index|expected a "
                                               r"shard index).*teacher-cache") as caught:
        cache.read(k)
    # the bytes taken for an index are other bytes: no offsets beyond the file are quoted (before: "at byte
    # 11413992775827891677")
    assert not re.search(r"\d{12}", str(caught.value)), str(caught.value)
    cache.read(int(np.flatnonzero((cache.row // 4) == 0)[0]))  # the other shards read as before


def test_crc32_is_zlibs_crc32_and_view_crc_continues_over_scales():
    rng = np.random.default_rng(1)
    a, s = rng.integers(-128, 127, (40, 7, 9), dtype=np.int8), rng.random(40, dtype=np.float32)
    assert crc32(a.tobytes()) == zlib.crc32(a.tobytes())
    assert view_crc(a, s) == zlib.crc32(s.tobytes(), zlib.crc32(a.tobytes()))
    assert view_crc(a[:, ::2]) == zlib.crc32(np.ascontiguousarray(a[:, ::2]).tobytes())  # strided input


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_collate_in_a_worker_builds_the_batch_in_shared_memory_padded_with_zeros():
    gen = torch.Generator().manual_seed(0)
    items = [CachedTargets([torch.randn(4, h, w, generator=gen).half()], [torch.rand(h, w, generator=gen).half()],
                           [torch.rand(4, generator=gen)]) for h, w in ((3, 5), (6, 2))]
    (batch,) = list(torch.utils.data.DataLoader(_Items(items), batch_size=2, num_workers=1,
                                                collate_fn=CachedTargets.collate))
    f, m = batch.features[0], batch.masks[0]
    assert f.shape == (2, 4, 6, 5) and m.shape == (2, 6, 5) and f.is_shared() and m.is_shared()
    assert torch.equal(f[0, :, :3, :5], items[0].features[0]) and torch.equal(f[1, :, :6, :2], items[1].features[0])
    assert not f[0, :, 3:].any() and not f[1, :, :, 2:].any() and not m[0, 3:].any() and not m[1, :, 2:].any()
    assert torch.equal(batch.scales[0], torch.stack([it.scales[0] for it in items]))
    assert torch.equal(CachedTargets.collate(items).features[0], f)  # the main process builds the same batch


def test_collate_zeroes_the_padding_of_a_batch_built_in_reused_memory(monkeypatch):
    from frs_cli.data import packed

    monkeypatch.setattr(packed, "allocate_buffer", lambda nbytes: torch.full((nbytes,), 7, dtype=torch.uint8))
    items = [CachedTargets([torch.ones(2, h, w)], [torch.ones(h, w)]) for h, w in ((3, 5), (6, 2))]
    out = CachedTargets.collate(items)
    assert out.features[0].sum() == 2 * (15 + 12) and out.masks[0].sum() == 15 + 12  # no 7 left anywhere


def _smoke_step(step, tmp_path, monkeypatch, *flags: str) -> dict:
    """``bench/cached_step.py --smoke`` with ``flags``, out to tmp_path/out: its step.json."""
    monkeypatch.setattr(sys, "argv", ["cached_step.py", "--smoke", "--out", str(tmp_path / "out"), "--work",
                                      str(tmp_path / "work"), *flags])
    step.main()
    return json.loads((tmp_path / "out" / "step.json").read_text())


# -- the benchmark scripts ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cached_step_smoke_on_the_cpu_writes_every_row_and_figure(tmp_path, monkeypatch, capsys):
    step = _bench("cached_step")
    res = _smoke_step(step, tmp_path, monkeypatch, "--graphs-ab", "--warm-only", "float16")
    assert res["device"] == "cpu" and res["views_in_split"] >= 16 and res["disk"]["read"]["cold"] is False
    assert res["teachers"]["tiny"]["cache"]["int5"]["over_inference"] == pytest.approx(
        res["teachers"]["tiny"]["cache"]["int5"]["views_s"] / res["teachers"]["tiny"]["inference_img_s"])
    assert {m for m in res["pairs"]["tiny-tiny"]} == {"plain", "online"}
    rows = {(r["dtype"], r["views"], r["page_cache"]): r for r in res["cached"]}
    assert set(rows) == {(d, s, c) for d in ("float16", "int5") for s in (8, 16) for c in ("warm", "cold")}
    plain = res["pairs"]["tiny-tiny"]["plain"]["step_ms"]
    for (dtype, size, state), r in rows.items():
        if state == "cold":  # float16 is timed warm only; the smoke never drops this machine's page cache
            why = "warm only (--warm-only)" if dtype == "float16" else "cold rows off (--no-cold)"
            assert r["skipped"] == why and "step_ms" not in r
            continue
        assert r["steps"] == 1 and r["step_ms"] > 0 and 0 <= r["data_wait_share"] < 1 and r["loader_views_s"] > 0
        assert r["plain_step_ms"] > 0 and r["paired_block"] == 10  # paired by default: its own interleaved plain step
        assert {m: len(t) for m, t in r["step_times_ms"].items()} == {"plain": r["steps"], "cached": r["steps"]}
        assert r["cuda_graphs"] is False and r["graphs_step_ms"] > 0  # --graphs-ab: the same row with graphs on
        assert r["need_mb_s"] == pytest.approx(r["mb_per_view"] * 2 / (plain / 1e3))
    old = res["zarr_path"]  # fp16 read through zarr-python, as before the direct reads
    assert (old["dtype"], old["views"], old["read"], old["steps"]) == ("float16", 16, "zarr", 1) and old["step_ms"] > 0
    assert res["worker_sweep"] == [] and res["seconds"] > 0
    # int5 stores 5 bits a value against fp16's 16 (plus the same fp16 masks and 4-byte scales)
    assert rows["int5", 8, "warm"]["mb_per_view"] < 0.6 * rows["float16", 8, "warm"]["mb_per_view"]
    # what it printed rebuilds the same result (bench/step_from_log.py), to the verdicts
    printed = capsys.readouterr().out.splitlines()
    rebuilt = _bench("step_from_log").parse(["UserWarning: noise", *printed])
    assert rebuilt["cached"] == [r for r in res["cached"] if "step_ms" in r]  # skipped rows are not printed
    assert rebuilt["pairs"] == res["pairs"]
    assert rebuilt["zarr_path"] == res["zarr_path"] and rebuilt["worker_sweep"] == res["worker_sweep"] == []
    for t, v in res["teachers"].items():  # the rates as printed, before the full caches are written
        rates = {d: (c["views_s"], c["over_inference"]) for d, c in v["cache"].items() if "views_s" in c}
        assert {d: (c["views_s"], c["over_inference"]) for d, c in rebuilt["teachers"][t]["cache"].items()} == rates
    assert rebuilt["disk"]["read"]["mb_s"] == round(res["disk"]["read"]["mb_s"])
    verdicts = _bench("cache_verdicts").verdicts
    assert verdicts(rebuilt)["targets"] == verdicts(res)["targets"]


def test_in_step_copies_move_each_batch_as_it_is_taken_and_count_the_loader_wait():
    speed = _bench("speed")
    moved = []

    class Batch:
        def __init__(self, i):
            self.i = i

        def to(self, device, non_blocking=False):
            moved.append((self.i, device, non_blocking))
            return self

    it = speed.feeder([Batch(0), Batch(1)], "cpu", prefetch=False)
    assert isinstance(it, speed.InStepCopies) and moved == []  # nothing is copied ahead
    assert next(it).i == 0 and moved == [(0, "cpu", True)]
    assert next(it).i == 1 and moved == [(0, "cpu", True), (1, "cpu", True)]
    assert it.data_seconds >= 0 and type(speed.feeder([], "cpu")).__name__ == "DevicePrefetcher"
    with pytest.raises(StopIteration):
        next(it)


def _cached_step_with_feeder_spy(monkeypatch):
    """bench/cached_step.py with its ``feeder`` recording each call's ``prefetch`` flag: (module, flags)."""
    step = _bench("cached_step")
    flags, real = [], step.feeder

    def spy(batches, dev, prefetch=True):
        flags.append(prefetch)
        return real(batches, dev, prefetch)

    monkeypatch.setattr(step, "feeder", spy)
    return step, flags


def test_cached_step_feeds_every_step_as_device_prefetch_says(tmp_path, monkeypatch):
    step, flags = _cached_step_with_feeder_spy(monkeypatch)
    res = _smoke_step(step, tmp_path, monkeypatch, "--no-device-prefetch", "--no-zarr-row")
    assert res["args"]["device_prefetch"] in (False, "False")
    assert len(flags) >= 3 and not any(flags)  # the plain, online and every cached row
    assert all(r["step_ms"] > 0 for r in res["cached"] if "step_ms" in r)


def test_cached_step_pairs_the_online_step_and_times_plain_and_graphed_also_without_the_prefetcher(tmp_path,
                                                                                                    monkeypatch):
    step, flags = _cached_step_with_feeder_spy(monkeypatch)
    res = _smoke_step(step, tmp_path, monkeypatch, "--graphs-ab", "--feeder-ab", "--online-paired")
    rows = [r for r in res["cached"] if "step_ms" in r]
    assert len(rows) == 4  # float16 and int5 at both smoke sizes, warm
    for r in rows:
        assert r["inline_of"] == "cached_graphs" and r["inline_step_ms"] > 0 and r["inline_plain_step_ms"] > 0
        assert r["graphs_step_ms"] > 0 and r["plain_step_ms"] > 0 and 0 <= r["inline_data_wait_share"] < 1
        assert r["online_step_ms"] > 0 and r["online_step_ms"] != res["pairs"]["tiny-tiny"]["online"]["step_ms"]
    # plain and online once each; per row: plain, cached, cached_graphs and online prefetched, plain and graphed
    # inline; the smoke's zarr row last
    assert flags == [True, True] + [True, True, True, True, False, False] * 4 + [True]


def test_cached_step_split_times_the_plain_step_on_cached_batches_and_each_modes_launches(tmp_path, monkeypatch):
    step = _bench("cached_step")
    fed = []
    real = step.step_objective

    def spy(mode, student, recipe, coco, num_classes, store=None):
        objective, dataset = real(mode, student, recipe, coco, num_classes, store)
        fed.append((mode, type(objective).__name__, type(dataset).__name__))
        return objective, dataset

    monkeypatch.setattr(step, "step_objective", spy)
    res = _smoke_step(step, tmp_path, monkeypatch, "--split")
    rows = [r for r in res["cached"] if "step_ms" in r and "split" in r]
    assert len(rows) == 4  # float16 and int5 at both smoke sizes, warm (the zarr row is not paired)
    for row in rows:
        assert set(row["split"]) == {"plain", "cached", "gt_cached"}
        for m, figures in row["split"].items():
            assert set(figures) == {"step_ms", "data_wait_ms", "forward_ms", "backward_ms", "optimizer_ms"}, m
            assert all(v > 0 for k, v in figures.items() if k != "data_wait_ms"), m
        assert row["split"]["cached"]["step_ms"] == row["step_ms"]
        assert row["split"]["plain"]["step_ms"] == row["plain_step_ms"]
    # per row the plain objective on the cached views, the FRS objective on them, and the plain one on the images
    assert fed.count(("gt_cached", "GTObjective", "CachedViews")) == 4
    assert fed.count(("cached", "FRSObjective", "CachedViews")) == 5  # and the zarr row's
    assert fed.count(("plain", "GTObjective", "CocoViews")) == 5  # the pair's plain row and each row's plain side


def test_cached_step_channels_last_lays_out_what_trains_in_every_step_as_the_trainer_does(tmp_path, monkeypatch):
    """``--channels-last``: every timed objective (plain, online and cached) has its student's and adapters' 4-D
    weights channels-last, as ``train.channels_last`` lays them out, and the cached teacher's head as built; without
    the flag every trainable weight stays contiguous."""
    step = _bench("cached_step")
    seen = []
    real = step.step_objective

    def spy(mode, student, recipe, coco, num_classes, store=None):
        objective, dataset = real(mode, student, recipe, coco, num_classes, store)
        trains = [p for p in objective.parameters() if p.dim() == 4 and p.requires_grad]
        side = getattr(objective, "teacher_side", None)
        head = [p for p in side.parameters() if p.dim() == 4] if side is not None and mode != "online" else []
        seen.append((mode, recipe.train.channels_last, len(trains),
                     all(p.is_contiguous(memory_format=torch.channels_last) for p in trains),
                     all(p.is_contiguous(memory_format=torch.channels_last) for p in head)))
        return objective, dataset

    monkeypatch.setattr(step, "step_objective", spy)
    res = _smoke_step(step, tmp_path, monkeypatch, "--channels-last", "--online-paired")
    assert res["args"]["channels_last"] == "True"
    assert {m for m, *_ in seen} == {"plain", "online", "cached"}
    assert all(flag and n > 0 and nhwc for _, flag, n, nhwc, _ in seen)
    # the cached head on the CPU stays as CachedTeacher lays it out there (contiguous): train.channels_last leaves it
    heads = [head for m, *_, head in seen if m == "cached"]
    assert heads and not any(heads)
    seen.clear()
    _smoke_step(step, tmp_path, monkeypatch, "--online-paired")
    assert seen and all(not flag and not nhwc for _, flag, _, nhwc, _ in seen)


class _HeldCount(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> int:
        from frs_cli.data import packed

        packed.allocate_buffer(8)
        return len(packed._held)


def test_cached_step_hold_ab_times_both_steps_again_with_workers_that_hold_no_buffer(tmp_path, monkeypatch):
    import functools

    step = _bench("cached_step")
    holds, real = [], step._loader

    def spy(args, dataset, batches, dev, hold=None):
        holds.append(hold)
        return real(args, dataset, batches, dev, hold)

    monkeypatch.setattr(step, "_loader", spy)
    res = _smoke_step(step, tmp_path, monkeypatch, "--hold-ab", "--no-zarr-row")
    rows = [r for r in res["cached"] if "step_ms" in r]
    assert len(rows) == 4
    for r in rows:
        assert r["hold0_step_ms"] > 0 and r["hold0_plain_step_ms"] > 0 and 0 <= r["hold0_data_wait_share"] < 1
    # per row: plain and cached as the package holds (None), then both holding none; no other loader holds any
    assert holds.count(0) == 2 * len(rows) and set(holds) == {None, 0}
    # the workers of such a loader hold none of their buffers; the package's own hold the last ones
    from frs_cli.data.packed import hold_in_worker

    held = torch.utils.data.DataLoader(_HeldCount(), batch_size=None, num_workers=1,
                                       worker_init_fn=functools.partial(hold_in_worker, 0))
    assert list(held) == [0, 0, 0]
    assert list(torch.utils.data.DataLoader(_HeldCount(), batch_size=None, num_workers=1)) == [1, 2, 3]


def _hand_made_step(**over) -> dict:
    step = {"device": "hand", "date": "2026-12-02", "command": "by hand", "views_in_split": 8192,
            "args": {"batch": "10", "dtypes": "float16,int8,int5"},
            "teachers": {"x101": {"arch": "retinanet_resnext101_32x8d_fpn", "inference_img_s": 40.0,
                                  "cache": {"int8": {"views_s": 20.0, "over_inference": 0.5},
                                            "int5": {"views_s": 36.0, "over_inference": 0.9}},
                                  "full_cache": {"float16": {"views_s": 10.0}}},
                         "r50v2": {"arch": "retinanet_resnet50_fpn_v2", "inference_img_s": 100.0,
                                   "cache": {"int8": {"views_s": 95.0, "over_inference": 0.95},
                                             "int5": {"views_s": 89.99, "over_inference": 0.8999}}}},
            "pairs": {"x101-r50": {"plain": {"step_ms": 400.0, "data_wait_share": 0.01, "data_wait_share_median": 0.01},
                                   "online": {"step_ms": 1000.0, "data_wait_share": 0.05, "data_wait_share_median": 0.01}},
                      "r50v2-r50": {"online": {"step_ms": 800.0, "data_wait_share": 0.0501,
                                               "data_wait_share_median": 0.01}}},
            "cached": []}
    for dtype, ms in (("float16", 500.0), ("int8", 440.0), ("int5", 400.0)):
        for views in (128, 1024, 8192):
            for state in ("warm", "cold"):
                step["cached"].append({"pair": "x101-r50", "dtype": dtype, "views": views, "page_cache": state,
                                       "step_ms": ms + (100.0 if state == "cold" and dtype == "float16" else 0.0),
                                       "data_wait_share": 0.02, "data_wait_share_median": 0.01,
                                       "mb_per_view": 4.0 * 400 / ms, "need_mb_s": 4.0 * 400 / ms * 10 / 0.4,
                                       **({"loader_views_s": float(views)} if state == "warm" else {})})
    step["disk"] = {"read": {"mb_s": 2500.0, "cold": True}}
    step.update(over)
    return step


def test_gpu_hours_from_hand_made_rates():
    gpu_hours = _bench("gpu_hours")
    # 36 000 images x 1 epoch at batch 10: 3600 steps a student; 1000 ms online = 1 h; cache of 72 000 views
    out = gpu_hours.hours(_hand_made_step(), images=36_000, epochs=1)
    rows = {(r["pair"], r["method"]): r for r in out["rows"]}
    assert out["schedule"] == {"images": 36_000, "epochs": 1, "batch": 10, "steps_per_student": 3600,
                               "cached_views": 72_000}
    online = rows["x101-r50", "online"]
    assert [online[f"students_{n}"] for n in (1, 3, 10)] == pytest.approx([1.0, 3.0, 10.0])
    int5 = rows["x101-r50", "cache int5"]  # 72 000 / 36 views/s = 2000 s to cache; 400 ms a step = 0.4 h a student
    assert int5["step_row"] == "8192 views, cold" and int5["cache_hours"] == pytest.approx(2000 / 3600)
    assert int5["students_10"] == pytest.approx(2000 / 3600 + 4.0)
    assert int5["saving_10"] == pytest.approx(1 - (2000 / 3600 + 4.0) / 10.0)
    fp16 = rows["x101-r50", "cache float16"]  # the cold fp16 row (600 ms), the full cache's rate (10 views/s)
    assert fp16["step_ms"] == 600.0 and fp16["students_1"] == pytest.approx(2.0 + 0.6)
    assert rows["r50v2-r50", "cache int8"]["students_3"] == pytest.approx(72_000 / 95 / 3600 + 3 * 0.44)
    assert ("r50v2-r50", "cache float16") not in rows  # no fp16 rate for that teacher
    assert rows["any", "plain (no teacher)"]["students_10"] == pytest.approx(4.0)
    faster = gpu_hours.hours(_hand_made_step(), {"teachers": {"x101": {"int5": {"cache_views_s": 72.0}}}}, 36_000, 1)
    assert {(r["pair"], r["method"]): r for r in faster["rows"]}["x101-r50", "cache int5"]["cache_hours"] == \
        pytest.approx(1000 / 3600)


def test_gpu_hours_takes_the_online_and_plain_steps_paired_with_the_cached_row_of_their_pair():
    """A cached row that timed its online and plain steps beside it (``--online-paired``) gives its pair's online and
    plain figures (the same blocks of one process), not the pair's separate rows; another pair keeps its own."""
    gpu_hours = _bench("gpu_hours")
    step = _hand_made_step()
    for r in step["cached"]:  # the row gpu_hours takes for float16 is 8192 views, cold
        r.update(online_step_ms=r["step_ms"] * 1.5, plain_step_ms=r["step_ms"] * 0.9)
    out = gpu_hours.hours(step, images=36_000, epochs=1)
    rows = {(r["pair"], r["method"]): r for r in out["rows"]}
    assert rows["x101-r50", "online"]["step_ms"] == pytest.approx(600.0 * 1.5)  # the fp16 row, first of the dtypes
    assert rows["x101-r50", "online"]["step_row"] == "paired, float16 row"
    assert rows["any", "plain (no teacher)"]["step_ms"] == pytest.approx(600.0 * 0.9)
    assert rows["r50v2-r50", "online"]["step_ms"] == 800.0  # the cached rows are x101-r50's
    assert rows["x101-r50", "cache int5"]["saving_1"] == pytest.approx(1 - (2000 / 3600 + 0.4) / 0.9)
    # r50v2's online step ran apart from the paired cached step: its hours, but no saving against it
    other = rows["r50v2-r50", "cache int8"]
    assert other["students_3"] == pytest.approx(72_000 / 95 / 3600 + 3 * 0.44)
    assert "saving_1" not in other and other["saving_note"].startswith("no saving")
    assert "| r50v2-r50 (retinanet_resnet50_fpn_v2) | cache int8 | 440.0 |" in gpu_hours.table(out)
    assert gpu_hours.table(out).splitlines()[-2].endswith("| – |")  # the last r50v2 row, before plain


def test_cache_verdicts_miss_by_any_margin_and_when_not_measured(tmp_path, capsys):
    verdicts = _bench("cache_verdicts")
    v = verdicts.verdicts(_hand_made_step())
    # step: fp16 warm 500/400 = 1.25 misses (fp16 cold is no target); online / cached >= 2.0 everywhere;
    # teacher-cache: x101 int8 0.5 and r50v2 int5 0.8999 miss 0.9; data wait: r50v2 online 5.01 % misses 5 %
    assert list(v["targets"].values()) == ["missed", "met", "missed", "missed"]
    by = {(r["dtype"], r["views"], r["page_cache"]): r for r in v["step"]}
    assert len(by) == 15 and ("float16", 128, "cold") not in by
    assert by["int8", 8192, "cold"]["over_plain"] == pytest.approx(1.10) and by["int8", 8192, "cold"]["verdict"] == "met"
    assert by["float16", 1024, "warm"]["verdict"] == "missed"
    assert [r["verdict"] for r in v["teacher_cache"]] == ["met", "missed", "missed", "met"]  # r50v2, then x101
    assert [r["row"] for r in v["data_wait"] if r["verdict"] == "missed"] == ["r50v2-r50 online"]
    paired = _hand_made_step()  # a row with its own interleaved online step (--online-paired) is judged by it
    row = next(r for r in paired["cached"] if (r["dtype"], r["views"], r["page_cache"]) == ("int8", 1024, "cold"))
    row["online_step_ms"] = 1.39 * row["step_ms"]
    online = {(r["dtype"], r["views"], r["page_cache"]): r for r in verdicts.verdicts(paired)["online_over_cached"]}
    assert online["int8", 1024, "cold"]["online_ms"] == pytest.approx(1.39 * 440.0)
    assert online["int8", 1024, "cold"]["online_over_plain"] == pytest.approx(1.39 * 440.0 / 400.0)
    assert online["int8", 1024, "cold"]["verdict"] == "missed" and online["int8", 1024, "warm"]["online_ms"] == 1000.0

    step = _hand_made_step()
    for r in step["cached"]:
        if r["dtype"] == "float16":
            r["step_ms"] = 440.0  # now every step row is within 1.10
    assert verdicts.verdicts(step)["targets"][next(iter(v["targets"]))] == "met"
    step["cached"] = [r for r in step["cached"] if not (r["dtype"] == "int8" and r["page_cache"] == "cold"
                                                          and r["views"] == 8192)]
    v2 = verdicts.verdicts(step)
    assert next(iter(v2["targets"].values())) == "missed"
    assert {(r["dtype"], r["views"], r["page_cache"]): r for r in v2["step"]}["int8", 4096, "cold"]["verdict"] == \
        "not measured"
    step = _hand_made_step()
    paired = next(r for r in step["cached"] if (r["dtype"], r["views"], r["page_cache"]) == ("int8", 128, "warm"))
    paired["plain_step_ms"] = 399.0  # a paired row is judged against its own interleaved plain step: 440 / 399
    by = {(r["dtype"], r["views"], r["page_cache"]): r for r in verdicts.verdicts(step)["step"]}
    assert by["int8", 128, "warm"]["plain_ms"] == 399.0 and by["int8", 128, "warm"]["verdict"] == "missed"
    assert by["int8", 1024, "warm"]["plain_ms"] == 400.0 and by["int8", 1024, "warm"]["verdict"] == "met"
    step = _hand_made_step()
    step["cached"][-1]["step_ms"] = 1000.0 / 1.4 + 0.01  # int5 8192 cold: online / cached 1.39998
    assert list(verdicts.verdicts(step)["targets"].values())[1] == "missed"

    (tmp_path / "step.json").write_text(json.dumps(_hand_made_step(pairs={})))  # no pair timed: one line, no file
    with pytest.raises(SystemExit, match=r"expected a bench/cached_step.py step.json .* got no pairs in .*step.json"):
        verdicts.main(tmp_path / "step.json")
    assert not (tmp_path / "verdicts.json").exists()
    (tmp_path / "step.json").write_text(json.dumps(_hand_made_step()))
    verdicts.main(tmp_path / "step.json")
    assert json.loads((tmp_path / "verdicts.json").read_text())["targets"] == v["targets"]
    printed = capsys.readouterr().out
    assert "| int8 | 8192 | cold | 440.0 | 400.0 | 1.10 | met |" in printed and "missed  teacher-cache" in printed
    assert "| int5 | 4.00 | 100 (400.0 ms) | 2500 (yes) | 8192 (8192) |" in printed  # 4 MB x batch 10 / 0.4 s
    step = _hand_made_step()  # a paired row's own plain steps, faster than the unpaired row, set the pace
    step["cached"][3]["plain_step_ms"] = 320.0
    fast = {r["dtype"]: r for r in verdicts.verdicts(step)["bandwidth"]}
    assert fast["int5"]["need_mb_s"] == pytest.approx(4.0 * 10 / 0.32) and fast["int8"]["plain_pace_ms"] == 320.0
    del step["args"]  # a record without its batch keeps the rate it recorded
    assert verdicts.verdicts(step)["bandwidth"][0]["need_mb_s"] == pytest.approx(4.0 * 400 / 500 * 10 / 0.4)


def test_cache_verdicts_show_the_spread_of_a_rows_blocks_and_judge_the_row_by_its_medians(capsys, tmp_path):
    verdicts = _bench("cache_verdicts")
    step = _hand_made_step()
    row = next(r for r in step["cached"] if (r["dtype"], r["views"], r["page_cache"]) == ("int8", 1024, "warm"))
    # three blocks of 2 steps: cached / plain per block 1.0, 1.2 and 105 / 96 (each block against its own turn's
    # plain steps); the row's own medians 104 / 100
    row.update({"paired_block": 2, "step_ms": 104.0, "plain_step_ms": 100.0,
                "step_times_ms": {"plain": [100.0, 100.0, 100.0, 100.0, 96.0, 96.0],
                                  "cached": [99.0, 101.0, 120.0, 120.0, 104.0, 106.0]}})
    assert verdicts.block_ratios(row) == pytest.approx([1.0, 1.2, 105 / 96])
    assert verdicts.block_ratios({"paired_block": 2}) is None and verdicts.block_ratios(row, "online") is None
    by = {(r["dtype"], r["views"], r["page_cache"]): r for r in verdicts.verdicts(step)["step"]}
    got = by["int8", 1024, "warm"]
    assert got["verdict"] == "met" and got["over_plain"] == pytest.approx(1.04)  # one block over 1.10 misses nothing
    assert (got["block_ratio_min"], got["block_ratio_max"], got["blocks"], got["blocks_within"]) == \
        pytest.approx((1.0, 1.2, 3, 2))
    assert "blocks" not in by["int8", 128, "warm"]
    (tmp_path / "step.json").write_text(json.dumps(step))
    verdicts.main(tmp_path / "step.json")
    printed = capsys.readouterr().out
    assert "| int8 | 1024 | warm | 104.0 | 100.0 | 1.04 | met | 1.00–1.20, 2 of 3 |" in printed
    assert "| int8 | 128 | warm | 440.0 | 400.0 | 1.10 | met | – |" in printed


def test_verdicts_across_runs_count_each_rows_meets_and_take_each_runs_medians(tmp_path, capsys):
    across = _bench("verdicts_across")
    first, second = _hand_made_step(), _hand_made_step()  # fp16 warm rows 500 / 400 = 1.25: missed in both
    for r in second["cached"]:
        if r["dtype"] == "int8" and r["views"] == 1024 and r["page_cache"] == "cold":
            r["plain_step_ms"] = 399.0  # 440 / 399: missed in the second run only
    second["cached"] = [r for r in second["cached"] if not (r["dtype"] == "int5" and r["views"] == 128
                                                            and r["page_cache"] == "warm")]
    paths = []
    for n, run in enumerate((first, second)):
        path = tmp_path / "s14" / f"call{n + 1}" / "step" / "step.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(run))
        paths.append(path)
    result = across.main([str(p) for p in paths] + ["--out", str(tmp_path / "across.json")])
    rows = {(r["dtype"], r["views"], r["page_cache"]): r for r in result["rows"]}
    assert len(rows) == 15 and rows["float16", 128, "warm"]["met"] == 0
    assert rows["int8", 1024, "cold"]["verdicts"] == ["met", "missed"] and rows["int8", 1024, "cold"]["met"] == 1
    assert rows["int5", 128, "warm"]["verdicts"] == ["met", "not measured"]
    assert rows["int5", 128, "warm"]["over_plain"][1] is None and rows["int5", 128, "warm"]["met"] == 1
    assert rows["int8", 4096, "cold"]["over_plain"] == pytest.approx([1.10, 1.10])  # the 8192-view row
    assert result["median_over_plain"]["float16"] == pytest.approx([1.25, 1.25])
    assert result["median_over_plain"]["int8"] == pytest.approx([1.10, 1.10])
    assert json.loads((tmp_path / "across.json").read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    printed = capsys.readouterr().out
    assert "| dtype | views | page cache | s14/call1 | s14/call2 | met |" in printed
    assert "| int8 | 1024 | cold | 1.100 (met) | 1.103 (missed) | 1 of 2 |" in printed
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="expected a cached_step.py step.json at .*bad.json, found no 'cached' rows"):
        across.main([str(tmp_path / "bad.json")])


def test_nbytes_stored_of_a_local_cache_sums_its_files_as_zarr_counts_them(cache_path):
    from frs_cli.cache.backend import ZarrBackend

    b = ZarrBackend(cache_path)
    for group in ("", "buckets", "index"):
        assert b.nbytes_stored(group) == sum(int(arr.nbytes_stored()) for _, arr in b.walk(group)) > 0


def test_cached_step_bench_batches_by_canvas_as_training_does_or_consecutively():
    step = _bench("cached_step")
    canvas = {(p, v): (64, 96) if p % 3 else (96, 64) for p in range(12) for v in ("orig", "hflip")}
    grouped = step.batches_for(24, 9, 4, canvas.__getitem__)
    plain = step.batches_for(24, 9, 4)
    assert [len(b) for b in grouped] == [4] * 9 and [len(b) for b in plain] == [4] * 9
    first_epoch = [k for b in grouped[:6] for k in b]
    assert sorted(first_epoch) == sorted(canvas)  # six batches are one epoch of the 24 views, each once
    assert sum(len({canvas[k] for k in b}) > 1 for b in grouped[:6]) <= 1  # two canvases: at most one leftover mix
    assert sum(len({canvas[k] for k in b}) > 1 for b in plain[:6]) >= 3  # a shuffled epoch mixes most batches
    assert [k for b in plain[:6] for k in b] == next(step.epochs(24))  # consecutive keys of the same epoch order


def test_cache_verdicts_judge_the_graphed_variant_of_each_row_against_its_own_plain_step(tmp_path):
    """--graphs: each cached row's graphs_* figures replace its own; a row without them is not measured."""
    verdicts = _bench("cache_verdicts")
    step = _hand_made_step()
    for r in step["cached"]:
        r.update(plain_step_ms=400.0, graphs_step_ms=r["step_ms"] - 60.0, graphs_step_ms_mean=r["step_ms"] - 60.0,
                 graphs_data_wait_share=0.03, graphs_data_wait_share_median=0.02,
                 step_times_ms={"plain": [400.0] * 4, "cached": [500.0] * 4}, paired_block=2)
    fp16 = next(r for r in step["cached"] if (r["dtype"], r["views"], r["page_cache"]) == ("float16", 1024, "warm"))
    fp16["graphs_step_ms"] = 441.0  # 1.1025: missed by a hair
    (tmp_path / "step.json").write_text(json.dumps(step))
    v = verdicts.main(tmp_path / "step.json", graphs=True)
    by = {(r["dtype"], r["views"], r["page_cache"]): r for r in v["step"]}
    assert by["int8", 128, "warm"]["step_ms"] == 380.0 and by["int8", 128, "warm"]["over_plain"] == pytest.approx(0.95)
    assert by["float16", 1024, "warm"]["verdict"] == "missed" and by["float16", 128, "warm"]["verdict"] == "met"
    assert all("blocks" not in r for r in v["step"])  # the stored block times are the eager mode's, not shown
    assert v["variant"] == "distill.cuda_graphs on" and all(r["mean"] == 0.03 for r in v["data_wait"][3:])
    assert json.loads((tmp_path / "verdicts_graphs.json").read_text())["step"] == v["step"]
    assert not (tmp_path / "verdicts.json").exists()
    del fp16["graphs_step_ms"]
    v = verdicts.verdicts(verdicts.graphs_variant(step))
    assert {(r["dtype"], r["views"], r["page_cache"]): r for r in v["step"]}["float16", 1024, "warm"]["verdict"] == \
        "not measured"


def test_cache_verdicts_judge_the_rows_without_the_hold_against_their_own_plain_step_without_it(tmp_path):
    """--hold0: each cached row's hold0_* cached and plain figures replace its own (the plain step too, as both ran
    with workers holding no buffer); its blocks' spread is not shown; a row without them is not measured."""
    verdicts = _bench("cache_verdicts")
    step = _hand_made_step()
    for r in step["cached"]:
        r.update(plain_step_ms=400.0, hold0_step_ms=r["step_ms"] + 10.0, hold0_step_ms_mean=r["step_ms"] + 12.0,
                 hold0_plain_step_ms=390.0, hold0_plain_step_ms_mean=391.0, hold0_data_wait_share=0.04,
                 hold0_data_wait_share_median=0.03, step_times_ms={"plain": [400.0] * 4, "cached": [380.0] * 4},
                 paired_block=2)
    fp16 = next(r for r in step["cached"] if (r["dtype"], r["views"], r["page_cache"]) == ("float16", 1024, "warm"))
    fp16["hold0_step_ms"] = 429.1  # 1.1003 of 390: missed by a hair
    (tmp_path / "step.json").write_text(json.dumps(step))
    v = verdicts.main(tmp_path / "step.json", hold0=True)
    by = {(r["dtype"], r["views"], r["page_cache"]): r for r in v["step"]}
    int8 = by["int8", 128, "warm"]
    assert int8["plain_ms"] == 390.0 and int8["step_ms"] == 450.0 and int8["over_plain"] == pytest.approx(450 / 390)
    assert "blocks" not in int8 and by["float16", 1024, "warm"]["verdict"] == "missed"
    assert v["variant"] == "loader workers holding no buffer" and all(r["mean"] == 0.04 for r in v["data_wait"][3:])
    assert json.loads((tmp_path / "verdicts_hold0.json").read_text())["step"] == v["step"]
    assert not (tmp_path / "verdicts.json").exists()
    del fp16["hold0_plain_step_ms"]
    v = verdicts.verdicts(verdicts.hold0_variant(step))
    assert {(r["dtype"], r["views"], r["page_cache"]): r for r in v["step"]}["float16", 1024, "warm"]["verdict"] == \
        "not measured"


def test_gpu_hours_graphs_takes_each_cached_rows_graphed_step(tmp_path, monkeypatch):
    gpu_hours = _bench("gpu_hours")
    step = _hand_made_step()
    for r in step["cached"]:
        r.update(graphs_step_ms=r["step_ms"] / 2, graphs_step_ms_mean=r["step_ms"] / 2, graphs_data_wait_share=0.0,
                 graphs_data_wait_share_median=0.0)
    (tmp_path / "step.json").write_text(json.dumps(step))
    for flag, int5_ms in (([], 400.0), (["--graphs"], 200.0)):
        monkeypatch.setattr(sys, "argv", ["gpu_hours.py", str(tmp_path / "step.json"), *flag])
        gpu_hours.main()
        out = json.loads((tmp_path / "gpu_hours.json").read_text())
        rows = {(r["pair"], r["method"]): r for r in out["rows"]}
        assert rows["x101-r50", "cache int5"]["step_ms"] == int5_ms
        assert out["source"]["cached_rows"] == ("distill.cuda_graphs on" if flag else "as run")


@pytest.mark.parametrize("ahead", [False, True])
def test_timed_steps_ahead_waits_for_each_step_only_after_the_next_is_launched(monkeypatch, ahead):
    """``timed_steps(ahead=True)`` launches step k+1 before it waits for step k's end, as the trainer does; the last
    step's end is waited for after the loop. Without it no step end is waited for that way (``stream_time``).
    Warm-up steps are left out of the figures either way."""
    speed = _bench("speed")
    launched, waited = [], []

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, batch, step):
            launched.append(batch)
            return {"a": self.w * batch}

    class Feeder:
        data_seconds = 0.0

        def __init__(self):
            self.n = 0

        def __next__(self):
            self.n += 1
            self.data_seconds += 0.5  # each batch waited half a second for the loader
            return torch.tensor(float(self.n))

    class End:
        def __init__(self, dev):
            self.step = len(launched)  # the step whose end this is (1-based)

        def wait(self):
            waited.append((self.step, len(launched)))  # its step, and the steps launched when it was waited for
            return float(len(waited))

    monkeypatch.setattr(speed, "StepEnd", End)
    steps, waits, last = speed.timed_steps(Objective(), Feeder(), torch.device("cpu"), {"device_type": "cpu",
                                           "enabled": False}, warmup=2, steps=4, ahead=ahead)
    assert len(steps) == 4 and waits == [0.5] * 4 and float(last) == 6.0
    if ahead:
        assert waited == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 6)]
        assert steps == [1.0] * 4  # from one seen end to the next (End.wait's clock ticks once a wait)
    else:
        assert waited == []


def test_cached_step_hostcopy_ab_times_the_steps_again_with_the_box_coding_copying_from_the_host(tmp_path,
                                                                                                  monkeypatch):
    """--hostcopy-ab: each row's plain, cached and online steps run again, interleaved, with the GT loss coding its
    boxes through torchvision's box coder (its host copies; the tiny student's GIoU loss decodes with it), and only
    those; the package's own coding is itself again after."""
    from torchvision.models.detection._utils import BoxCoder

    from frs_cli.models import retinanet_loss

    step = _bench("cached_step")
    calls, real = [], BoxCoder.decode_single

    def spy(self, deltas, anchors):
        calls.append(len(deltas))
        return real(self, deltas, anchors)

    monkeypatch.setattr(BoxCoder, "decode_single", spy)
    own = retinanet_loss.coder_weights, retinanet_loss.decode_deltas
    res = _smoke_step(step, tmp_path, monkeypatch, "--hostcopy-ab", "--online-paired", "--no-zarr-row")
    rows = [r for r in res["cached"] if "step_ms" in r]
    assert len(rows) == 4
    for r in rows:
        for prefix in ("hostcopy_", "hostcopy_plain_", "hostcopy_online_"):
            assert r[f"{prefix}step_ms"] > 0 and 0 <= r[f"{prefix}data_wait_share"] < 1, prefix
    # per row three modes of warm-up + timed steps (1 + 1), one GT loss each, every one through the coder
    assert len(calls) == 4 * 3 * 2 and all(n > 0 for n in calls)
    assert (retinanet_loss.coder_weights, retinanet_loss.decode_deltas) == own


def test_cache_verdicts_hostcopy_judges_online_over_cached_only_where_the_online_step_copied_too(tmp_path):
    verdicts = _bench("cache_verdicts")
    step = _hand_made_step()
    for r in step["cached"]:
        r.update(plain_step_ms=400.0, online_step_ms=600.0, hostcopy_step_ms=r["step_ms"] + 20.0,
                 hostcopy_step_ms_mean=r["step_ms"] + 21.0, hostcopy_plain_step_ms=420.0,
                 hostcopy_plain_step_ms_mean=421.0, hostcopy_data_wait_share=0.02,
                 hostcopy_data_wait_share_median=0.02)
        if r["dtype"] == "int8":
            r.update(hostcopy_online_step_ms=700.0, hostcopy_online_step_ms_mean=701.0,
                     hostcopy_online_data_wait_share=0.01, hostcopy_online_data_wait_share_median=0.01)
    (tmp_path / "step.json").write_text(json.dumps(step))
    v = verdicts.main(tmp_path / "step.json", hostcopy=True)
    by = {(r["dtype"], r["views"], r["page_cache"]): r for r in v["step"]}
    assert by["int8", 128, "warm"]["plain_ms"] == 420.0 and by["int8", 128, "warm"]["step_ms"] == 460.0
    online = {(r["dtype"], r["views"], r["page_cache"]): r for r in v["online_over_cached"]}
    assert online["int8", 128, "warm"]["online_ms"] == 700.0
    assert online["int8", 128, "warm"]["online_over_cached"] == pytest.approx(700 / 460)
    # int5 timed no online step with the copies: neither its own nor the run's unpaired one stands in
    assert online["int5", 128, "warm"]["verdict"] == "not measured" and "online_ms" not in online["int5", 128, "warm"]
    assert "x101-r50 online" not in [r["row"] for r in v["data_wait"]]
    assert json.loads((tmp_path / "verdicts_hostcopy.json").read_text())["online_over_cached"] == \
        v["online_over_cached"]


def test_cached_step_runs_each_step_through_the_step_graphs_and_step_graphs_ab_times_them_eagerly_too(
        tmp_path, monkeypatch):
    """As the trainer does by default (train.cuda_graphs), every step of a one-canvas batch (paired or not) goes through
    ``StepGraphs`` (on the CPU run without capture); --step-graphs-ab times the plain, cached and online steps again
    without it (eager_* figures), and only those skip it."""
    from frs_cli.train.step_graphs import StepGraphs

    step = _bench("cached_step")
    runs, real = [], StepGraphs._run

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        runs.append(out[0][-1])  # the last term's name: frs_head for FRS, the GT loss's last for plain
        return out

    monkeypatch.setattr(StepGraphs, "_run", spy)
    res = _smoke_step(step, tmp_path, monkeypatch, "--step-graphs-ab", "--online-paired", "--no-zarr-row")
    rows = [r for r in res["cached"] if "step_ms" in r]
    assert len(rows) == 4
    for r in rows:
        for prefix in ("eager_", "eager_plain_", "eager_online_"):
            assert r[f"{prefix}step_ms"] > 0 and 0 <= r[f"{prefix}data_wait_share"] < 1, prefix
        assert r["step_graphs_captured"] == {"plain": 0, "cached": 0, "online": 0}  # no capture off CUDA
    # per row three modes through the step graphs (plain, cached, online), warm-up + timed steps (1 + 1) each; and
    # the rows timed apart from the paired blocks run as the trainer runs them too: the pair's own plain and online
    # rows, and the cached row read through zarr-python (the smoke keeps it)
    assert len(runs) == 4 * 3 * 2 + 3 * 2
    assert runs.count("frs_head") == 4 * 2 * 2 + 2 * 2
    assert [res["pairs"]["tiny-tiny"][m]["step_graphs_captured"] for m in ("plain", "online")] == [0, 0]
    assert res["zarr_path"]["step_graphs_captured"] == 0

    verdicts = _bench("cache_verdicts")
    v = verdicts.main(tmp_path / "out" / "step.json", eager=True)
    assert (tmp_path / "out" / "verdicts_eager.json").is_file() and "every step eager" in v["variant"]


def test_speed_bench_times_its_steps_on_batches_of_one_canvas_as_the_trainer_makes_them(jitter_root):
    """``bench/speed.py``'s step rows (the issue-13 command) read batches as ``frs distill`` does by default: each
    batch of one canvas but one cut from the epoch's leftovers, its images tensor that canvas, each image once an
    epoch, and as many epochs in one stream as the warm-up and timed steps need (--repeat 1 holds fewer)."""
    from frs_cli.data.coco import CocoIndex, CocoViews
    from frs_cli.data.geometry import GeometryConfig

    coco = CocoViews(CocoIndex(jitter_root / "annotations" / "instances_train.json"), jitter_root / "train",
                     GeometryConfig(min_size=48, max_size=64, size_divisible=16))
    canvases = {coco.geometry_of(i, "orig").padded_size for i in range(len(coco))}
    assert len(canvases) == 3  # the set mixes three canvases: a mixed batch would show
    loader = _bench("speed").step_loader(coco, coco, 2, 0, torch.device("cpu"), len(coco) // 2 + 1)
    assert len(loader) == 2 * (len(coco) // 2)  # more batches than one epoch holds: two epochs in one stream
    batches = list(loader)[: len(coco) // 2]  # the first epoch
    one_canvas = [b for b in batches if len({g.padded_size for g in b.geometries}) == 1]
    # only the epoch's leftovers (at most one view of each canvas, so one batch of two) may mix canvases
    assert len(one_canvas) >= len(batches) - 1
    for batch in one_canvas:
        assert batch.geometries[0].padded_size == tuple(batch.images.shape[-2:])
    ids = [i for b in batches for i in b.image_ids]
    assert len(ids) == len(set(ids))  # one view of each image an epoch
