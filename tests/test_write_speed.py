"""The teacher side of teacher-cache at inference speed (``cache.teacher_pass``): weights cast to bf16 once give
autocast's numbers bit for bit, channels-last stays within bf16 rounding, nothing synchronises with the device,
and the bench that measures it runs."""

from __future__ import annotations

import ast
import json
import os
import runpy
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.cache.teacher_pass import PassOptions, TeacherPass, cast_weights_once
from frs_cli.models import ModelConfig, build_detector

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"retinanet": ("retinanet_small_fpn", 16), "fcos": ("fcos_small_fpn", 0),
         "faster_rcnn": ("fasterrcnn_small_fpn", 16), "gfl": ("gfl_small_fpn", 0)}


class _Ops(TorchDispatchMode):
    """Counts dispatched aten ops by name, and the dtype casts of a tensor whose storage is in ``weights``."""

    def __init__(self, weights: set[int]):
        super().__init__()
        self.weights = weights
        self.names: dict[str, int] = {}
        self.weight_casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.names[name] = self.names.get(name, 0) + 1
        if name == "_to_copy" and args[0].untyped_storage().data_ptr() in self.weights:
            self.weight_casts += 1
        return out


def _teacher(family: str = "retinanet") -> nn.Module:
    arch, anchor = SMALL[family]
    torch.manual_seed(0)
    return build_detector(ModelConfig(arch=arch, anchor_size=anchor), 5).eval().requires_grad_(False)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=g), [(64, 96), (48, 80)]


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_weights_cast_once_give_the_autocast_pass_bit_for_bit_with_no_weight_cast(family):
    """bf16 autocast on the CPU: the pass over float32 weights casts weights on every forward; with the weights
    cast once beforehand it casts none, and every encoded tensor (int8 codes, scales, masks) is identical."""
    images, sizes = _batch()
    slow = TeacherPass(_teacher(family), FeatureEncoding("int8"), PassOptions(amp=True)).prepare()
    fast = TeacherPass(_teacher(family), FeatureEncoding("int8"), PassOptions(amp=True, bf16_weights=True)).prepare()
    with _Ops(_storages(slow.teacher)) as ops_slow:
        want = slow(images, sizes)
    with _Ops(_storages(fast.teacher)) as ops_fast:
        got = fast(images, sizes)
    assert ops_slow.weight_casts >= sum(isinstance(m, nn.Conv2d) for m in slow.teacher.modules()) > 0  # each, once
    assert ops_fast.weight_casts == 0
    assert ops_fast.names["_to_copy"] < ops_slow.names["_to_copy"]
    assert [t.dtype for t in got] == [torch.int8, torch.float32] * 5 + [torch.float16] * 5
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape and torch.equal(g, w)


def test_cast_weights_once_casts_convolutions_and_keeps_norm_layers_float32():
    t = _teacher("retinanet")
    convs = [m for m in t.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in t.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    n = cast_weights_once(t)
    assert n == sum(1 + (m.bias is not None) for m in convs)
    assert {m.weight.dtype for m in convs} == {torch.bfloat16}
    assert norms and {p.dtype for m in norms for p in m.parameters()} == {torch.float32}
    assert cast_weights_once(t) == 0  # a second call finds nothing left to cast


@pytest.mark.parametrize("family", ["retinanet", "gfl"])
def test_channels_last_pass_is_as_close_to_float32_as_the_autocast_pass(family):
    """NHWC sums in another order: against the float32 pass, its features and masks are as far off as the NCHW
    autocast pass's (bf16 rounding), not further; it stores NCHW-contiguous tensors."""
    images, sizes = _batch()
    fp32 = TeacherPass(_teacher(family), FeatureEncoding("float32"), PassOptions()).prepare()(images, sizes)
    amp = TeacherPass(_teacher(family), FeatureEncoding("float32"), PassOptions(amp=True)).prepare()(images, sizes)
    nhwc = TeacherPass(_teacher(family), FeatureEncoding("float32"),
                       PassOptions(amp=True, bf16_weights=True, channels_last=True)).prepare()(images, sizes)

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    for f, a, c in zip(fp32, amp, nhwc, strict=True):
        assert c.shape == f.shape and c.is_contiguous()
        assert 0 < rel(a, f) < 2e-2
        assert rel(c, f) <= 1.2 * rel(a, f)
        assert rel(c, a) <= rel(a, f)


def test_teacher_pass_never_waits_for_the_device():
    """Forward, masks, int5 quantisation and packing: no op that reads a value back to the host."""
    images, sizes = _batch()
    run = TeacherPass(_teacher(), FeatureEncoding("int5"),
                      PassOptions(amp=True, bf16_weights=True, channels_last=True)).prepare()
    with _Ops(set()) as ops:
        out = run(images, sizes)
    assert out[0].dtype == torch.uint8 and out[0].shape == (2, 64 * 5 // 8, 8, 12)
    syncs = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "allclose", "unique"}
    assert ops.names and not syncs & set(ops.names)


def test_options_on_the_cpu_are_the_plain_float32_pass_and_on_cuda_the_fast_one():
    assert PassOptions.for_device(torch.device("cpu"), True, True, True) == PassOptions()
    assert PassOptions.for_device(torch.device("cuda"), True, True, False) == PassOptions(
        amp=True, bf16_weights=True, channels_last=True, cuda_graphs=False)
    assert PassOptions.for_device(torch.device("cuda"), False, False, True) == PassOptions(cuda_graphs=True)


def test_writer_with_weights_cast_once_writes_the_autocast_cache_and_stores_float32_weights(
        synth_root, teacher_ckpt, tmp_path, monkeypatch):
    """The writer casts the weights only after it fingerprinted them and stored the head: the cache is the
    autocast pass's bit for bit, its head holds the checkpoint's float32 weights, it records bf16 autocast."""
    from conftest import assert_same_cache_arrays, write_recipe

    from frs_cli.cache import writer
    from frs_cli.cache.identity import teacher_fingerprint
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup
    from frs_cli.train.checkpoint import load_detector

    seen = []

    class Spy(TeacherPass):
        def __call__(self, images, image_sizes):
            seen.append({m.weight.dtype for m in self.teacher.modules() if isinstance(m, nn.Conv2d)})
            return super().__call__(images, image_sizes)

    monkeypatch.setattr(writer, "TeacherPass", Spy)
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    r = replace(r, cache=replace(r.cache, dtype="int8", views=("orig",)))
    ref, fast = str(tmp_path / "autocast.zarr"), str(tmp_path / "fast.zarr")
    writer.write_teacher_cache(r, ref, ctx=setup("cpu"), pass_options=PassOptions(amp=True))
    assert seen and all(s == {torch.float32} for s in seen)
    seen.clear()
    writer.write_teacher_cache(r, fast, ctx=setup("cpu"), pass_options=PassOptions(amp=True, bf16_weights=True))
    assert seen and all(s == {torch.bfloat16} for s in seen)
    assert_same_cache_arrays(fast, ref)
    cache = TeacherCache(fast)
    teacher, _ = load_detector(teacher_ckpt)
    assert cache.teacher_autocast and cache.fingerprints["teacher"] == teacher_fingerprint(r.teacher, teacher)
    head = cache.build_head().state_dict()
    for name, t in teacher.cls_head().state_dict().items():
        assert head[name].dtype == torch.float32 and torch.equal(head[name], t), name


def test_bench_tiny_mode_writes_rates_ratios_and_op_counts(tmp_path, monkeypatch):
    out = tmp_path / "rate.json"
    monkeypatch.setattr(sys, "argv", ["teacher_cache_rate.py", "--tiny", "--out", str(out), "--work",
                                      str(tmp_path / "work"), "--dtypes", "int5", "--images", "2", "--passes", "1"])
    runpy.run_path(str(ROOT / "bench" / "teacher_cache_rate.py"), run_name="__main__")
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["views"] == 4 and res["padded_sizes"] == ["(64, 96)"]
    row = res["teachers"]["tiny"]
    assert row["inference_img_s"] > 0 and row["inference_bf16_cl_img_s"] > 0
    assert set(row["variants"]) == {"autocast", "bf16_cl"}  # no CUDA graphs on the CPU
    before, after = row["variants"]["autocast"]["dispatch_per_batch"], row["variants"]["bf16_cl"]["dispatch_per_batch"]
    assert before["weight_casts"] > 0 and after["weight_casts"] == 0 and after["ops"] < before["ops"]
    assert before["host_syncs"] == after["host_syncs"] == 0
    assert after["layout_conversions"] == 5  # the five levels made NCHW once, for the store
    for variant, c in row["caches"]["int5"].items():
        assert c["views"] == 4 and c["views_s"] > 0, variant
        assert c["over_inference"] == pytest.approx(c["views_s"] / row["inference_img_s"])
        assert c["over_best_inference"] <= c["over_inference"]
        assert res["target_0_9"]["tiny/int5"][variant] == {
            "over_inference": c["over_inference"], "met": c["over_inference"] >= 0.9,
            "steady_over_inference": c["steady_over_inference"], "steady_met": c["steady_over_inference"] >= 0.9}
        assert c["write_processes"] == 0  # the recipe's, resolved (the tiny mode writes in threads)
        assert 0 < c["mb_per_view"] < 1  # the bytes its 4 views take in the store, measured before it is removed
        d = c["dirty_pages"]  # the host's unwritten page cache, sampled over the write (Linux: /proc/meminfo)
        assert d["samples"] >= 2 and d["peak_gb"] >= max(d["start_gb"], d["end_gb"]) >= 0
        assert d["peak_with_writeback_gb"] >= d["peak_gb"]
    assert res["host"]["dirty_ratio"] > 0 and res["host"]["mem_available_gb"] > 0  # the limits the kernel keeps


def test_dirty_pages_reads_meminfo_in_decimal_gb(tmp_path, monkeypatch):
    bench = runpy.run_path(str(ROOT / "bench" / "teacher_cache_rate.py"))
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       131072000 kB\nMemAvailable:   121437500 kB\nDirty:          12402880 kB\n"
                    "Writeback:        500000 kB\n")
    module = bench["meminfo_gb"].__globals__  # the globals of the module that reads /proc/meminfo (host_load's)
    monkeypatch.setitem(module, "MEMINFO", fake)  # put back after the test: that module stays imported
    assert bench["meminfo_gb"]("Dirty", "MemTotal") == {"MemTotal": pytest.approx(134.217728),
                                                       "Dirty": pytest.approx(12.70054912)}
    with bench["DirtyPages"](period=0.01) as dirty:
        time.sleep(0.05)
    f = dirty.figures()
    assert f["samples"] >= 2 and f["start_gb"] == f["end_gb"] == f["peak_gb"] == pytest.approx(12.70054912)
    assert f["peak_with_writeback_gb"] == pytest.approx(12.70054912 + 0.512)
    monkeypatch.setitem(module, "MEMINFO", tmp_path / "absent")  # not Linux: no figures, and the bench goes on
    with bench["DirtyPages"](period=0.01) as dirty:
        pass
    assert dirty.figures() is None and bench["meminfo_gb"]("Dirty") is None



def test_timeline_rate_is_the_second_half_of_the_teacher_cache_hand_overs(monkeypatch):
    bench = runpy.run_path(str(ROOT / "bench" / "teacher_cache_rate.py"))
    clock = iter([0.0, 1.0, 5.0, 6.0, 7.0, 8.0, 10.5])
    monkeypatch.setattr(bench["time"], "perf_counter", lambda: next(clock))
    timeline = bench["Timeline"]()
    timeline.start("verify", 99)  # another task of the same progress: not recorded
    timeline.update(99)
    timeline.stop()
    timeline.start("teacher-cache", 8)  # t 0
    for _ in range(4):
        timeline.update(2)  # 2 views at t 1 (slow start-up), 4 at 5, 6 at 6, 8 at 7
    timeline.stop()  # t 8: one second of drain
    assert timeline.points == [(0.0, 0), (1.0, 2), (5.0, 4), (6.0, 6), (7.0, 8)]
    assert timeline.steady_views_s() == 2.0 and timeline.drain_seconds() == 1.0  # (8 - 4) views in 7 - 5 s
    assert timeline.first_handovers(3) == [1.0, 5.0, 6.0] and timeline.first_handovers() == [1.0, 5.0, 6.0, 7.0]

def test_bench_writes_once_per_writer_count_in_turn_for_the_chosen_variants(tmp_path, monkeypatch):
    out = tmp_path / "rate.json"
    monkeypatch.setattr(sys, "argv", ["teacher_cache_rate.py", "--tiny", "--out", str(out), "--work",
                                      str(tmp_path / "work"), "--dtypes", "int8", "--images", "2", "--passes", "1",
                                      "--variants", "bf16_cl,autocast,bf16_cl", "--write-processes", "0,0",
                                      "--no-pass-figures", "--batch", "1"])
    runpy.run_path(str(ROOT / "bench" / "teacher_cache_rate.py"), run_name="__main__")
    res = json.loads(out.read_text())
    # which version wrote (an A/B of two runs tells them apart), and the output by its name: no path of the machine
    assert res["library"] == os.path.relpath(ROOT / "frs_cli") and res["args"]["out"] == "rate.json"
    assert res["teachers"]["tiny"]["variants"] == {} and res["teachers"]["tiny"]["inference_img_s"] > 0
    caches = res["teachers"]["tiny"]["caches"]["int8"]
    # every variant in the order given, repeats included, each with every writer count in turn
    assert list(caches) == ["bf16_cl_w0_0", "bf16_cl_w0_1", "autocast_w0_2", "autocast_w0_3", "bf16_cl_w0_4",
                            "bf16_cl_w0_5"]
    assert all(c["write_processes"] == 0 and c["views"] == 4 and c["views_s"] > 0 for c in caches.values())
    for c in caches.values():  # four hand-overs of one view: the steady rate over the last two
        inference = res["teachers"]["tiny"]["inference_img_s"]
        assert c["steady_views_s"] > 0 and c["drain_seconds"] >= 0
        assert len(c["first_handovers_s"]) == 4 and c["first_handovers_s"] == sorted(c["first_handovers_s"])
        assert c["steady_over_inference"] == pytest.approx(c["steady_views_s"] / inference)
        start, end = c["wall"]  # the write's span, for bench/host_load.py's per-write figures
        assert end - start >= c["loop_seconds"] > 0


def _turn(views_s: float, inference: float, backpressure: float, steady: float | None = None) -> dict:
    row = {"views_s": views_s, "over_inference": views_s / inference, "stage_seconds": {"backpressure": backpressure}}
    if steady is not None:
        row["steady_over_inference"] = steady / inference
    return {"teachers": {"x101": {"caches": {"int8": {"bf16_cl": row}}}}}


def test_library_ab_gives_each_version_its_turns_medians_and_ratio_to_the_first(tmp_path, capsys):
    for name, res in {"tcr_1_a.json": _turn(200.0, 200.0, 0.3), "tcr_2_b.json": _turn(160.0, 200.0, 2.0, 180.0),
                      "tcr_3_b.json": _turn(170.0, 170.0, 2.2, 170.0), "tcr_4_a.json": _turn(210.0, 210.0, 0.5),
                      "notes.json": {}}.items():
        (tmp_path / name).write_text(json.dumps(res))
    runpy.run_path(str(ROOT / "bench" / "library_ab.py"), run_name="not_main")["main"]([str(tmp_path)])
    out = json.loads((tmp_path / "library_ab.json").read_text())
    assert out["base"] == "a"
    a, b = out["rows"]
    assert (a["library"], a["views_s"], a["median_views_s"], a["over_base"]) == ("a", [200.0, 210.0], 205.0, 1.0)
    assert (b["library"], b["views_s"], b["median_views_s"]) == ("b", [160.0, 170.0], 165.0)
    assert b["over_base"] == pytest.approx(165 / 205) and b["median_over_inference"] == pytest.approx((0.8 + 1.0) / 2)
    assert b["median_backpressure_s"] == pytest.approx(2.1)
    # the steady rate where every turn has it (b), "–" where a turn lacks it (a: results from before it)
    assert b["median_steady_over_inference"] == pytest.approx((0.9 + 1.0) / 2) and a["median_steady_over_inference"] is None
    printed = capsys.readouterr().out
    assert "| x101 | int8 | bf16_cl | b | 160.0, 170.0 | 165.0 | 0.90 | 0.95 | 2.10 | 0.80 |" in printed
    assert "| x101 | int8 | bf16_cl | a | 200.0, 210.0 | 205.0 | 1.00 | – | 0.40 | 1.00 |" in printed


def test_tcr_turns_gives_each_write_its_verdicts_and_each_setting_its_medians(tmp_path, capsys):
    def write(views_s: float, steady: float, writers: int, gpu: float) -> dict:
        return {"views": 2560, "views_s": views_s, "over_inference": views_s / 400, "write_processes": writers,
                "steady_over_inference": steady / 400, "loop_seconds": 7.0,
                "stage_seconds": {"loader_wait": 0.1, "backpressure": 0.5, "gpu_wait": gpu}}
    rates = {"device": "H", "date": "d", "teachers": {"r50v2": {"caches": {"int8": {
        "graphs_w8_0": {**write(380.0, 372.0, 8, 4.0), "mb_per_view": 4.68,
                        "dirty_pages": {"start_gb": 0.04, "end_gb": 12.1, "peak_gb": 18.73}},
        "bf16_cl_w8_1": write(340.0, 380.0, 8, 1.0),
        "bf16_cl_w8_2": write(300.0, 350.0, 8, 1.0), "graphs_w8_3": write(360.0, 368.0, 8, 4.0)}}}},
        "host": {"dirty_ratio": 20, "dirty_background_ratio": 10, "mem_available_gb": 124.36}}
    load = {"by_write": {"r50v2/int8/graphs_w8_0": {"mean_cores": {"main_thread": 0.35, "spawned": 4.0, "forked": 2.5}}}}
    (tmp_path / "tcr.json").write_text(json.dumps(rates))
    (tmp_path / "load.json").write_text(json.dumps(load))
    main = runpy.run_path(str(ROOT / "bench" / "tcr_turns.py"), run_name="not_main")["main"]
    main([str(tmp_path / "tcr.json"), "--load", str(tmp_path / "load.json"), "--out", str(tmp_path / "out.json")])
    out = json.loads((tmp_path / "out.json").read_text())
    assert [(w["turn"], w["variant"]) for w in out["writes"]] == [(0, "graphs"), (1, "bf16_cl"), (2, "bf16_cl"),
                                                                  (3, "graphs")]
    graphs, eager = out["settings"]
    assert (graphs["variant"], graphs["turns"], graphs["writers"]) == ("graphs", [0, 3], 8)
    assert graphs["median_over_inference"] == pytest.approx(370 / 400) and graphs["met"] == 2  # 0.95, 0.90
    assert graphs["median_steady_over_inference"] == pytest.approx(370 / 400) and graphs["steady_met"] == 2
    assert eager["median_over_inference"] == pytest.approx(320 / 400) and eager["met"] == 0
    assert eager["steady_met"] == 1  # 0.95 met, 0.875 missed
    printed = capsys.readouterr().out
    assert "| r50v2 | int8 | 0 | graphs | 8 | 2560 | 380.0 | 0.95 | met | 0.93 | met | 0.10 | 0.50 | 4.00 | 7.00 " \
           "| 4.68 | 18.7 | 0.35, 4.00, 2.50 |" in printed  # MB a view, the dirty page cache's peak
    assert "| r50v2 | int8 | 1 | bf16_cl | 8 | 2560 | 340.0 | 0.85 | missed | 0.95 | met | 0.10 | 0.50 | 1.00 | 7.00 " \
           "| – | – | – |" in printed  # a write without them: results from before they were recorded
    assert "host: vm.dirty_background_ratio 10, vm.dirty_ratio 20, 124.4 GB available at the start" in printed
    assert out["writes"][0]["mb_per_view"] == 4.68 and out["writes"][0]["dirty_peak_gb"] == 18.73
    assert "| r50v2 | int8 | bf16_cl | 8 | 1, 2 | 0.80 | 0 of 2 | 0.91 | 1 of 2 |" in printed
    with pytest.raises(SystemExit, match="expected a teacher_cache_rate.py result"):
        main([str(tmp_path / "load.json")])


def test_tcr_turns_takes_the_verdicts_teacher_cache_rate_stored_and_files_without_a_steady_rate_miss_it(
        tmp_path, capsys):
    tcr = runpy.run_path(str(ROOT / "bench" / "teacher_cache_rate.py"), run_name="not_main")
    old = {"views": 1280, "views_s": 361.0, "over_inference": 361.0 / 400, "loop_seconds": 3.5, "stage_seconds": {}}
    new = {**old, "steady_over_inference": 359.0 / 400}
    caches = {"bf16_cl_w4_0": old, "bf16_cl_w4_1": new}
    rates = {"teachers": {"x101": {"caches": {"int8": caches}}},
             "target_0_9": {"x101/int8": {"bf16_cl_w4_1": tcr["verdicts"](new)}}}  # the older write has none stored
    assert rates["target_0_9"]["x101/int8"]["bf16_cl_w4_1"] == {
        "over_inference": 361.0 / 400, "met": True, "steady_over_inference": 359.0 / 400, "steady_met": False}
    (tmp_path / "tcr.json").write_text(json.dumps(rates))
    runpy.run_path(str(ROOT / "bench" / "tcr_turns.py"), run_name="not_main")["main"]([str(tmp_path / "tcr.json")])
    printed = capsys.readouterr().out
    assert "| x101 | int8 | 0 | bf16_cl | None | 1280 | 361.0 | 0.90 | met | – | missed |" in printed
    assert "| x101 | int8 | 1 | bf16_cl | None | 1280 | 361.0 | 0.90 | met | 0.90 | missed |" in printed  # 0.8975


def test_library_ab_says_what_it_expected_in_a_folder_without_results(tmp_path):
    with pytest.raises(SystemExit, match="expected tcr_<turn>_<label>.json"):
        runpy.run_path(str(ROOT / "bench" / "library_ab.py"), run_name="not_main")["main"]([str(tmp_path)])



_SPINNERS = """
import multiprocessing as mp, os, sys, time

def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass

if __name__ == "__main__":
    writer = mp.get_context("spawn").Process(target=spin, args=(1.6,))
    writer.start()
    pid = os.fork()
    if pid == 0:
        spin(1.6)
        os._exit(0)
    time.sleep(1.6)  # the first thread only waits
    writer.join()
    os.waitpid(pid, 0)
    sys.exit(3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_host_load_gives_each_role_its_cores_and_each_write_its_samples(tmp_path, capsys):
    script = tmp_path / "spinners.py"
    script.write_text(_SPINNERS)
    main = runpy.run_path(str(ROOT / "bench" / "host_load.py"), run_name="not_main")["main"]
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"teachers": {"t": {"caches": {"int8": {"w1": {"views_s": 5.0, "wall": [0, 1]}}}}}}))
    out = tmp_path / "load.json"
    code = main(["--out", str(out), "--interval", "0.2", "--by-write", str(rates), "--", sys.executable, str(script)])
    assert code == 3  # the command's own status
    res = json.loads(out.read_text())
    cores = res["summary"]["mean_cores"]
    # a spinning spawned child and a spinning forked one; the first thread sleeps. Two cores here at least
    # give each spinner most of one; allow for start-up and for sharing the cores with the other tests' load
    assert cores["spawned"] > 0.25 and cores["forked"] > 0.25
    assert cores["main_thread"] < 0.25 and cores["spawned"] > 2 * cores["main_thread"]
    assert res["summary"]["samples"] == len(res["samples"]) >= 4
    assert all(0 <= s["busy_share"] <= 1 and s["wall"] > 1e9 for s in res["samples"])
    assert res["by_write"]["t/int8/w1"]["samples"] == 0  # a span long before the run holds no sample
    assert "host_load t/int8/w1: 0 samples" in capsys.readouterr().out
    assert main(["--out", str(out)]) == 2  # no command


def test_open_arrays_opens_each_array_once_and_writes_every_chunk_even_an_all_zero_one(tmp_path, monkeypatch):
    import zarr

    from frs_cli.cache.shard_writer import WRITE_CONFIG, OpenArrays, write_rows

    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
    g = root.require_group("buckets").require_group("b")
    keys = {"name": "default", "separator": "."}
    g.require_group("P3").create_array("features", shape=(4, 2, 3, 3), chunks=(1, 2, 3, 3), shards=(2, 2, 3, 3),
                                       dtype="int8", fill_value=0, compressors=None, chunk_key_encoding=keys)
    g.require_group("P3").create_array("mask", shape=(4, 3, 3), chunks=(1, 3, 3), shards=(2, 3, 3),
                                       dtype="float16", fill_value=0, compressors=None, chunk_key_encoding=keys)
    g.create_array("done", shape=(4,), chunks=(2,), dtype="uint8", fill_value=0, chunk_key_encoding=keys)
    g.create_array("crc", shape=(4, 2), chunks=(2, 2), dtype="uint32", fill_value=0, chunk_key_encoding=keys)
    opened = []
    real = zarr.Group.__getitem__
    monkeypatch.setattr(zarr.Group, "__getitem__", lambda self, k: opened.append(k) or real(self, k))
    arrays = OpenArrays(zarr.open_group(str(tmp_path / "c.zarr"), mode="r+"))
    feats = np.arange(2 * 2 * 9, dtype=np.int8).reshape(2, 2, 3, 3)
    with zarr.config.set(WRITE_CONFIG):
        for rows in ([0, 1], [2, 3]):
            zeros = rows == [2, 3]  # an all-fill batch: zarr would leave its chunks out without write_empty_chunks
            write_rows(arrays, "b", rows, ["P3"], [feats * (not zeros)], [None], [np.ones((2, 3, 3), np.float16)])
    assert sorted(opened) == sorted(f"buckets/b/{n}" for n in ("P3/features", "P3/mask", "crc", "done"))
    stored = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert (stored["buckets/b/P3/features"][:2] == feats).all() and (stored["buckets/b/P3/features"][2:] == 0).all()
    assert (stored["buckets/b/done"][:] == 1).all()
    index = np.frombuffer((tmp_path / "c.zarr/buckets/b/P3/features/c.1.0.0.0").read_bytes()[-36:-4], "<u8")
    assert index.reshape(2, 2)[:, 1].tolist() == [18, 18]  # both all-zero views stored, none marked empty

def test_write_bound_counts_the_bytes_a_written_cache_holds_per_view(cache_path):
    import zarr

    from frs_cli.cache.reader import TeacherCache

    mb_per_view = runpy.run_path(str(ROOT / "bench" / "write_bound.py"), run_name="not_main")["mb_per_view"]
    cache, root = TeacherCache(cache_path), zarr.open_group(cache_path, mode="r")
    (channels,) = {lv.channels for lv in cache.levels}
    strides = [lv.stride for lv in cache.levels]
    for b in cache.buckets:
        stored = 0
        for lv in cache.levels:
            for name in ("features", "scale", "mask") if cache.encoding.scaled else ("features", "mask"):
                a = root[f"buckets/{b.name}/{lv.name}/{name}"]
                stored += int(np.prod(a.shape[1:])) * a.dtype.itemsize
        assert mb_per_view(b.padded, cache.dtype, channels, strides) * 1e6 == pytest.approx(stored, abs=0.5), b.name
    # RetinaNet's P3-P7 at 800x1088: 18134 cells, 256 channels (int5 packs 8 channels in 5 bytes)
    assert mb_per_view((800, 1088), "int8") * 1e6 == pytest.approx(256 * 18134 + 5 * 256 * 4 + 2 * 18134)
    assert mb_per_view((800, 1088), "int5") * 1e6 == pytest.approx(160 * 18134 + 5 * 256 * 4 + 2 * 18134)
    assert mb_per_view((800, 1088), "float16") * 1e6 == pytest.approx(2 * 256 * 18134 + 2 * 18134)


def test_write_bound_sets_the_disk_against_each_teachers_inference_rate(tmp_path, capsys):
    for name, (inference, rate) in {"tcr_1_a.json": (400.0, 200.0), "tcr_2_b.json": (100.0, 90.0),
                                    "tcr_3_a.json": (440.0, 220.0)}.items():
        res = {"teachers": {"t": {"inference_img_s": inference, "caches": {"int8": {"bf16_cl": {"views_s": rate}}}}}}
        (tmp_path / name).write_text(json.dumps(res))
    (tmp_path / "step.json").write_text(json.dumps({"disk": {"write_mb_s": 1000.0}}))
    main = runpy.run_path(str(ROOT / "bench" / "write_bound.py"), run_name="not_main")["main"]
    main(["--padded", "800,1088", "--rates", str(tmp_path), "--library", "a", "--disk", str(tmp_path / "step.json"),
          "--dtypes", "int8", "--out", str(tmp_path / "bound.json")])
    (row,) = json.loads((tmp_path / "bound.json").read_text())["rows"]
    mb = (256 * 18134 + 5 * 256 * 4 + 2 * 18134) / 1e6
    assert row["inference_img_s"] == 420.0 and row["measured_views_s"] == 210.0  # medians of library a's turns
    assert row["need_mb_s"] == pytest.approx(0.9 * 420 * mb) and row["disk_views_s"] == pytest.approx(1000 / mb)
    assert row["disk_allows_target"] is False  # 213 views/s against 378 needed
    assert "| t | int8 | 4.68 | 420 |" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["writer.py", "shard_writer.py", "teacher_pass.py"])
def test_no_function_of_the_cache_writer_is_longer_than_90_lines(module):
    tree = ast.parse((ROOT / "frs_cli" / "cache" / module).read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 90}
    assert long == {}


def _assert_same_within_one_step(got, want, name="") -> None:
    """Two encoded tensors from passes that may pick other kernels: codes within one step, floats within 1 %
    of the largest value (a stale or foreign batch differs by far more)."""
    assert got.shape == want.shape and got.dtype == want.dtype, name
    if want.dtype == torch.uint8:  # packed codes: compare the codes
        int5 = FeatureEncoding("int5")
        got, want = int5.unpack(got), int5.unpack(want)
    diff = (got.float() - want.float()).abs().max()
    tol = 1.0 if not want.is_floating_point() else 1e-2 * float(want.float().abs().max())
    assert float(diff) <= tol, (name, float(diff), tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["int8", "int5", "float16", "bfloat16"])
def test_cuda_graph_replays_give_the_eager_pass_for_every_batch(dtype):
    """Two batch shapes, each seen three times: the replays hold each batch's own values (not the capture's, not
    the previous batch's), those of the same pass run eagerly."""
    options = PassOptions(amp=True, bf16_weights=True, channels_last=True)
    eager = TeacherPass(_teacher().cuda(), FeatureEncoding(dtype), options).prepare()
    graphed = TeacherPass(_teacher().cuda(), FeatureEncoding(dtype), replace(options, cuda_graphs=True))
    graphed.prepare().warm_up([(2, 64, 96)], torch.device("cuda"))
    g = torch.Generator().manual_seed(2)
    for shape in [(2, 3, 64, 96), (3, 3, 64, 64)] * 3:
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).cuda()
        sizes = [tuple(shape[-2:])] * shape[0]
        want, got = eager(images, sizes), graphed(images, sizes)
        for k, (w, t) in enumerate(zip(want, got, strict=True)):
            _assert_same_within_one_step(t, w, f"{shape} tensor {k}")
    assert sum(v is not None for v in graphed._graphs.values()) == 2


def test_held_bytes_counts_each_tensor_once_and_skips_none():
    from frs_cli.graphs import held_bytes

    assert held_bytes([torch.zeros(3, dtype=torch.float16), None], [torch.zeros(2, 2)], ()) == 3 * 2 + 4 * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_pass_graphs_stop_at_their_memory_limit_and_later_shapes_run_eagerly(monkeypatch):
    from frs_cli.cache import teacher_pass

    options = PassOptions(amp=True, bf16_weights=True, channels_last=True, cuda_graphs=True)
    graphed = TeacherPass(_teacher().cuda(), FeatureEncoding("int8"), options).prepare()
    eager = TeacherPass(_teacher().cuda(), FeatureEncoding("int8"), replace(options, cuda_graphs=False)).prepare()
    monkeypatch.setattr(teacher_pass, "MAX_GRAPH_BYTES", 1)  # the first capture's memory already reaches it
    graphed.warm_up([(2, 64, 96), (2, 64, 64)], torch.device("cuda"))
    assert graphed.graph_bytes > 0
    assert [g is not None for g in graphed._graphs.values()] == [True, False]
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    for w, t in zip(eager(images.cuda(), [(64, 64)] * 2), graphed(images.cuda(), [(64, 64)] * 2), strict=True):
        _assert_same_within_one_step(t, w, "eager shape")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_cache_with_cuda_graphs_is_the_eager_cache(synth_root, teacher_ckpt, tmp_path):
    from conftest import cache_arrays, write_recipe

    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup

    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    eager, graphs = str(tmp_path / "eager.zarr"), str(tmp_path / "graphs.zarr")
    write_teacher_cache(replace(r, cache=replace(r.cache, dtype="int8", cuda_graphs=False)), eager, ctx=setup("cuda"))
    write_teacher_cache(replace(r, cache=replace(r.cache, dtype="int8", cuda_graphs=True)), graphs, ctx=setup("cuda"))
    want, got = cache_arrays(eager), cache_arrays(graphs)
    assert set(got) == set(want)
    for name in want:
        if name.endswith("/crc"):
            continue  # checksums of values that may differ in a last bit
        if name.startswith("buckets/") and not name.endswith("/done"):
            _assert_same_within_one_step(torch.from_numpy(got[name]), torch.from_numpy(want[name]), name)
        else:
            assert (got[name] == want[name]).all(), name
