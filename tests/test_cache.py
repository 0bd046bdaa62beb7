import dataclasses
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import assert_same_cache_arrays, first_batch_features, write_recipe

from frs_cli.cache.identity import geometry_fingerprint
from frs_cli.cache.reader import CachedViews, TeacherCache
from frs_cli.cache.schema import FORMAT_NAME, FORMAT_VERSION
from frs_cli.cache.writer import write_teacher_cache
from frs_cli.config import load_recipe
from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.geometry import GeometryConfig
from frs_cli.data.targets import CachedTargets
from frs_cli.dist import setup
from frs_cli.errors import CacheFormatError, CacheMismatchError
from frs_cli.losses import frs_masks
from frs_cli.models import ModelConfig, build_detector
from frs_cli.models.fold import fold_batchnorm


def test_cache_layout_attributes_and_index(cache_path, recipe, teacher_ckpt):
    root = zarr.open_group(cache_path, mode="r")
    a = dict(root.attrs)
    assert a["format"] == FORMAT_NAME and a["format_version"] == 1 and a["state"] == "complete"
    assert a["views"] == ["orig", "hflip"] and a["num_views"] == 48
    assert [lv["name"] for lv in a["levels"]] == ["P3", "P4", "P5", "P6", "P7"]
    assert [lv["stride"] for lv in a["levels"]] == [8, 16, 32, 64, 128]
    teacher = build_detector(ModelConfig(arch="retinanet_small_fpn", anchor_size=16, weights=str(teacher_ckpt)), 5)
    assert a["fingerprints"]["teacher"] == "file:" + hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest()[:16]
    assert a["fingerprints"]["geometry"] == geometry_fingerprint(GeometryConfig(64, 64, 32))
    assert a["teacher"]["head_spec"] == teacher.cls_head_spec()
    assert a["storage"]["dtype"] == "float16"
    ids = root["index/image_id"][...]
    views = root["index/view"][...]
    assert sorted(zip(ids.tolist(), views.tolist())) == sorted((i, v) for i in range(1, 25) for v in (0, 1))
    # one bucket (all images 64x64 -> padded 64x64), one chunk per view, arrays sized to the stride multiple
    assert [b["name"] for b in a["buckets"]] == ["64x64"]
    feats = root["buckets/64x64/P3/features"]
    assert feats.shape == (48, 64, 8, 8) and feats.chunks == (1, 64, 8, 8) and feats.dtype == np.float16
    # a shard is one plan batch (cache.batch_size = 4): one file per batch, which one writer writes whole
    assert feats.shards == (4, 64, 8, 8) and a["storage"]["views_per_shard"] == 4
    shard_files = sorted(p.name for p in (Path(cache_path) / "buckets/64x64/P3/features").iterdir() if p.name != "zarr.json")
    assert shard_files == [f"c.{k}.0.0.0" for k in sorted(range(12), key=str)]
    assert root["buckets/64x64/done"].chunks == (4,) and root["buckets/64x64/crc"].chunks == (4, 10)
    assert root["buckets/64x64/P7/mask"].shape == (48, 1, 1)
    assert root["buckets/64x64/done"][...].all()
    # the teacher's classification head is stored whole
    head = {k: v for k, v in teacher.cls_head().state_dict().items()}
    stored = {name: arr[...] for name, arr in root["teacher_head"].arrays()}
    assert set(stored) == set(head)
    for k, v in head.items():
        np.testing.assert_array_equal(stored[k], v.numpy())


def test_cached_targets_are_the_teacher_output_stored_in_fp16(cache_path, recipe):
    cache = TeacherCache(cache_path)
    ds = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    teacher = build_detector(recipe.teacher, 5).eval()
    fold_batchnorm(teacher)  # as teacher-cache runs it
    # the writer's first batch: plan rows 0-3 = images 1 and 2, each orig then hflip
    keys = [(0, "orig"), (0, "hflip"), (1, "orig"), (1, "hflip")]
    b = collate([ds[k] for k in keys])
    with torch.no_grad():
        out = teacher(b.images, b.image_sizes, detect=False)
    for j, (pos, view) in enumerate(keys):
        got = cache.read(cache.find(pos + 1, view))
        for f_ref, f, m_ref, m in zip(out.features, got.features, frs_masks(out.cls_logits), got.masks):
            assert f.dtype == torch.float16 and m.dtype == torch.float16 and f.shape == f_ref.shape[1:]
            assert torch.equal(f, f_ref[j].half())  # the same numbers, rounded once to fp16: bit-exact
            assert torch.equal(m, m_ref[j].half())
    # another batch composition changes fp32 results only at rounding level
    single = collate([ds[(6, "hflip")]])
    with torch.no_grad():
        ref = teacher(single.images, single.image_sizes, detect=False)
    got = cache.read(cache.find(7, "hflip"))
    for f_ref, f in zip(ref.features, got.features):
        torch.testing.assert_close(f.float(), f_ref[0], rtol=1e-3, atol=1e-3)


def test_head_recomputed_from_cached_features_gives_teacher_logits(cache_path, recipe):
    cache = TeacherCache(cache_path)
    head = cache.build_head()
    teacher = build_detector(recipe.teacher, 5).eval()
    ds = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    b = collate([ds[(2, "orig")]])
    with torch.no_grad():
        ref = teacher(b.images, b.image_sizes, detect=False).cls_logits
        got = head([f.float()[None] for f in cache.read(cache.find(3, "orig")).features])
    for r, g in zip(ref, got):
        rel = (r - g).norm() / r.norm()
        assert rel < 2e-3, f"relative difference {rel:.2e} beyond fp16 feature rounding"


def test_complete_cache_is_not_rewritten(cache_path, synth_root, teacher_ckpt, tmp_path):
    files = [p for p in Path(cache_path).rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    summary = write_teacher_cache(r, cache_path, ctx=setup("cpu"))
    assert summary.views_written == 0 and summary.complete
    assert {p: p.stat().st_mtime_ns for p in files} == before


@pytest.mark.parametrize("write_processes", [0, 2])
def test_teacher_cache_killed_at_random_moments_and_resumed_is_identical_to_uninterrupted(synth_root, teacher_ckpt,
                                                                                      tmp_path, write_processes):
    """SIGKILL three times at seeded random moments of the write (after a random number of views is marked done,
    plus a random few milliseconds, so kills land between any two chunk writes), resume after each kill. With
    writer processes, they die with the killed command (nothing keeps writing into the resumed run)."""
    recipe_file = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    recipe_file.write_text(recipe_file.read_text().replace("write_processes = 0", f"write_processes = {write_processes}"))
    r = load_recipe(recipe_file)
    # one thread, here and in the killed processes: the same numbers, and no slowdown from a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_teacher_cache(r, str(tmp_path / "reference.zarr"), ctx=setup("cpu"))
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "frs_cli", "teacher-cache", "--pipeline", str(recipe_file), "--out", str(out),
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done_dir = out / "buckets" / "64x64" / "done"
    rng = random.Random(6)
    # done flags are chunked by plan batch (4 views): kill after 1-8 of the 12 batches are marked done. At least
    # four batches stay to be written: the last two of these tiny views can be written within the few
    # milliseconds a kill takes to land, and then the kill would find no view left pending
    moments = [(n, rng.uniform(0.0, 0.03)) for n in sorted(rng.sample(range(1, 9), 3))]
    for attempt, (batches_done, extra_s) in enumerate(moments):
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            # done flags set so far: chunk files c.<batch>, not zarr's in-flight c.<uuid>.partial
            if done_dir.is_dir() and sum(p.suffix != ".partial" for p in done_dir.glob("c.*")) >= batches_done:
                time.sleep(extra_s)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"kill {attempt + 1}: the writer finished before it was killed"
        partial = TeacherCache(str(out), require_complete=False)
        assert 4 * batches_done <= partial.done().sum() < 48 and partial.attrs["state"] == "writing"
        with pytest.raises(CacheFormatError, match="incomplete"):
            TeacherCache(str(out))
        with pytest.raises(CacheFormatError, match="exists and is incomplete.*--resume"):  # never silently
            write_teacher_cache(r, str(out), ctx=setup("cpu"))
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_cache_arrays(out, tmp_path / "reference.zarr")
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"


def test_multi_size_dataset_gets_one_bucket_per_padded_size(jitter_root, teacher_ckpt, tmp_path):
    r = load_recipe(write_recipe(tmp_path / "r.toml", jitter_root, str(teacher_ckpt)),
                    ["cache.views=[\"orig\"]", "geometry.size_divisible=16"])
    path = str(tmp_path / "c.zarr")
    write_teacher_cache(r, path, ctx=setup("cpu"))
    cache = TeacherCache(path)
    sizes = {b.name: b.padded for b in cache.buckets}
    assert set(sizes) == {"64x64", "48x64", "64x48"}
    for k in range(len(cache)):
        g = cache.view_geometry(k)
        bucket = cache.buckets[int(cache.bucket[k])]
        assert bucket.padded == g.padded_size  # no padding beyond the image's own stride multiple
        feats = cache.read(k).features
        assert tuple(feats[0].shape[-2:]) == (g.padded_h // 8, g.padded_w // 8)
    # a batch of views of different sizes is zero-padded to the largest grid per level
    ds = CachedViews(CocoViews.from_config(r.data, "train", r.geometry), cache)
    items = [ds[(p, "orig")] for p in range(len(ds))]
    wide = next(s for s in items if s.geometry.padded_size == (48, 64))
    tall = next(s for s in items if s.geometry.padded_size == (64, 48))
    t = CachedTargets.collate([wide.teacher, tall.teacher])
    assert tuple(t.features[0].shape) == (2, 64, 8, 8)
    assert t.features[0][0, :, 6:, :].abs().sum() == 0 and t.masks[0][1, :, 6:].abs().sum() == 0


def test_reader_refuses_cache_of_another_teacher(cache_path, recipe, synth_root, tmp_path):
    from frs_cli.train.run import distill_student

    torch.manual_seed(123)
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16)
    other = build_detector(cfg, 5)
    from frs_cli.train.checkpoint import atomic_save, model_payload

    path = tmp_path / "other_teacher.pt"
    atomic_save(model_payload(other, cfg, [1, 2, 3, 4, 5], list("abcde"), GeometryConfig(64, 64, 32)), path)
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(path)))
    with pytest.raises(CacheMismatchError, match="another teacher"):
        distill_student(r, tmp_path / "run", cache=cache_path, ctx=setup("cpu"))
    r = load_recipe(write_recipe(tmp_path / "r2.toml", synth_root, str(recipe.teacher.weights)),
                    ["geometry.min_size=48", "geometry.max_size=48"])
    with pytest.raises(CacheMismatchError, match="another geometry"):
        distill_student(r, tmp_path / "run2", cache=cache_path, ctx=setup("cpu"))


def test_writer_refuses_existing_cache_of_another_teacher(cache_path, synth_root, tmp_path):
    torch.manual_seed(5)
    from frs_cli.train.checkpoint import atomic_save, model_payload

    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16)
    path = tmp_path / "t.pt"
    atomic_save(model_payload(build_detector(cfg, 5), cfg, [1, 2, 3, 4, 5], list("abcde"), GeometryConfig(64, 64, 32)),
                path)
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(path)))
    with pytest.raises(CacheMismatchError, match="another teacher"):
        write_teacher_cache(r, cache_path, ctx=setup("cpu"))


def test_path_that_is_not_a_cache_is_refused(tmp_path):
    with pytest.raises(CacheFormatError, match="found nothing there"):
        TeacherCache(str(tmp_path / "missing.zarr"))
    g = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    g.attrs["hello"] = 1
    with pytest.raises(CacheFormatError, match="expected an frs teacher cache"):
        TeacherCache(str(tmp_path / "plain.zarr"))


def test_cache_of_newer_format_is_refused(cache_path, tmp_path):
    import shutil

    copy = tmp_path / "newer.zarr"
    shutil.copytree(cache_path, copy)
    g = zarr.open_group(str(copy), mode="r+")
    g.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheFormatError, match=f"format version {FORMAT_VERSION + 1} is newer"):
        TeacherCache(str(copy))


def test_unknown_view_or_image_is_a_clear_error(cache_path):
    cache = TeacherCache(cache_path)
    with pytest.raises(CacheFormatError, match=r"holds no image 999 \(it holds the 24 images of split 'train', "
                                               r"ids 1\.\.24\)"):
        cache.find(999, "orig")
    with pytest.raises(CacheFormatError, match=r"holds no view 'orig@32' of image 1 \(its views: orig, hflip\)"):
        cache.find(1, "orig@32")


def test_int8_cache_stores_per_channel_scales_and_reads_back_within_half_a_step(synth_root, teacher_ckpt, tmp_path):
    from frs_cli.cache.shard_writer import view_crc

    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)))
    r = dataclasses.replace(r, cache=dataclasses.replace(r.cache, dtype="int8"))
    path = str(tmp_path / "int8.zarr")
    assert write_teacher_cache(r, path, ctx=setup("cpu")).complete
    root = zarr.open_group(path, mode="r")
    assert root.attrs["storage"]["dtype"] == "int8"
    feats, scale = root["buckets/64x64/P3/features"], root["buckets/64x64/P3/scale"]
    assert feats.dtype == np.int8 and scale.shape == (48, 64) and scale.dtype == np.float32
    assert np.abs(feats[...]).max() == 127  # each channel's largest magnitude maps to +-127
    cache = TeacherCache(path)
    got = cache.read(cache.find(1, "orig"))
    for lv, (f_ref, f) in enumerate(zip(first_batch_features(r), got.features)):
        step = f_ref[0].abs().amax(dim=(-2, -1)) / 127  # (C,)
        err = (f.float() - f_ref[0]).abs()
        assert f.dtype == torch.float16 and (err <= step[:, None, None] * 0.5 + 1e-3 * f_ref[0].abs() + 1e-6).all()
        stored = root[f"buckets/64x64/{cache.levels[lv].name}/scale"][0]
        np.testing.assert_allclose(stored, step.numpy(), rtol=1e-6)
        crc = root["buckets/64x64/crc"][0, 2 * lv]
        assert crc == view_crc(root[f"buckets/64x64/{cache.levels[lv].name}/features"][0], stored)


def test_reader_in_another_process_reopens_the_store_instead_of_using_the_parents_arrays(cache_path):
    cache = TeacherCache(cache_path)
    first = cache.read(0)
    parent_arrays = cache._open()
    cache._pid = -1  # as in a DataLoader worker forked after the parent read
    again = cache.read(0)
    assert cache._open() is not parent_arrays and cache._pid == os.getpid()
    for a, b in zip(first.features + first.masks, again.features + again.masks):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16", "int5"])
def test_writer_processes_write_the_cache_the_writer_threads_write(synth_root, teacher_ckpt, tmp_path, dtype):
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)), [f"cache.dtype='{dtype}'"])
    threads = write_teacher_cache(r, str(tmp_path / "threads.zarr"), ctx=setup("cpu"), write_processes=0)
    procs = write_teacher_cache(r, str(tmp_path / "procs.zarr"), ctx=setup("cpu"), write_processes=2)
    assert procs.complete and procs.views_written == threads.views_written == 48
    assert_same_cache_arrays(tmp_path / "procs.zarr", tmp_path / "threads.zarr")  # crc and done flags included
    assert set(procs.stage_seconds) == {"loader_wait", "backpressure", "gpu_wait", "device_wait", "write",
                                        "first_batch", "slots", "last_writes", "join", "free"}
    assert procs.stage_seconds["gpu_wait"] == 0.0  # on the CPU no batch is in flight on a device
    # the loop's start: the first batch's share of the loader wait, and the writer slots (allocated, no CUDA here)
    assert 0 < procs.stage_seconds["first_batch"] <= procs.stage_seconds["loader_wait"]
    assert procs.stage_seconds["slots"] > 0 and threads.stage_seconds["slots"] == 0.0
    # the loop's end: the last writes, the processes' exits and the slots freed, within the write side's wait
    end = [procs.stage_seconds[k] for k in ("last_writes", "join", "free")]
    assert all(t > 0 for t in end) and sum(end) <= procs.stage_seconds["backpressure"]
    assert [threads.stage_seconds[k] for k in ("last_writes", "join", "free")] == [0.0, 0.0, 0.0]
    assert (procs.write_processes, threads.write_processes) == (2, 0)  # what each ran, for the hint
    # the bytes handed to the writers: every view's stored bytes but its checksums and done flag (a crc a level and
    # array, one flag), whichever side wrote them; the rate the hint gives is theirs over the loop's seconds
    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.schema import make_plan, view_bytes

    cache = TeacherCache(str(tmp_path / "procs.zarr"))
    plan = make_plan(cache.dataset(), ("orig", "hflip"), [lv.stride for lv in cache.levels])
    stored = int(view_bytes(plan, [lv.channels for lv in cache.levels], FeatureEncoding(dtype)).sum())
    assert procs.bytes_written == threads.bytes_written == stored - 48 * (4 * 2 * len(cache.levels) + 1)
    assert procs.mb_per_second == pytest.approx(procs.bytes_written / procs.seconds / 1e6)


def test_the_main_threads_wait_for_batches_in_flight_is_the_gpus_only_when_they_wait_for_nothing_else():
    """Copied straight into a writer slot, a batch in flight waits only for the device: the main thread's wait
    for it is ``gpu_wait``, not the write side's (which would tell the user to add writer processes)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from frs_cli.cache.writer import _Stages

    for on_device in (True, False):
        stages = _Stages()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(time.sleep, 0.2) for _ in range(3)]
            stages.wait_in_flight(futures, 1, on_device=on_device)
        assert len(futures) == 1
        waited, other = (stages.gpu_wait, stages.backpressure) if on_device else (stages.backpressure, stages.gpu_wait)
        assert 0.15 < waited < 1.0 and other == 0.0


def test_decoding_once_per_image_and_resizing_on_the_device_writes_the_same_cache(synth_root, teacher_ckpt, tmp_path):
    """The GPU loader (each file of a batch decoded once, resized on the device, flipped for hflip), run here on
    the CPU with two decoding workers, writes exactly the cache the per-view CPU pipeline writes."""
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)), ["cache.workers=2"])
    per_view = write_teacher_cache(r, str(tmp_path / "per_view.zarr"), ctx=setup("cpu"), write_processes=0,
                                   resize_on_device=False)
    once = write_teacher_cache(r, str(tmp_path / "once.zarr"), ctx=setup("cpu"), write_processes=0,
                               resize_on_device=True)
    assert once.complete and once.views_written == per_view.views_written == 48
    assert_same_cache_arrays(tmp_path / "once.zarr", tmp_path / "per_view.zarr")


def test_a_write_failing_in_a_writer_process_is_one_storage_error_and_resume_completes_it(recipe_path, cache_path,
                                                                                       tmp_path):
    """A shard file that cannot be written (a directory stands at its path): the writer process's OSError comes
    back as one line, the cache stays resumable, and --resume completes it once the path is free."""
    out = tmp_path / "c.zarr"
    shutil.copytree(cache_path, out)
    shard = out / "buckets" / "64x64" / "P3" / "features" / "c.0.0.0.0"
    shard.unlink()
    shard.mkdir()
    (shard / "x").write_text("in the way")
    cmd = [sys.executable, "-m", "frs_cli", "teacher-cache", "--pipeline", str(recipe_path), "--out", str(out),
           "--device", "cpu", "--resume", "--set", "cache.write_processes=2"]
    failed = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert failed.returncode == 1, failed.stderr
    lines = [ln for ln in failed.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "c.zarr" in errors[0] and "Traceback" not in failed.stderr, failed.stderr
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "writing"
    shutil.rmtree(shard)
    resumed = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_cache_arrays(out, cache_path)


def test_writer_processes_that_cannot_start_are_one_line_naming_the_way_around(recipe_path, tmp_path, monkeypatch):
    """A writer process that cannot be started (here its start raises as the parent's pipe to a child that died at
    once does, e.g. an interpreter this user may not run): one line with the setting that avoids them, and the
    processes already started are stopped (before: a BrokenPipeError that the command-line layer took for a closed
    terminal, exit 1 with nothing said)."""
    import multiprocessing.context
    import os

    from conftest import assert_one_line_error
    from typer.testing import CliRunner

    from frs_cli.cli.app import app

    started, real_start = [], multiprocessing.context.SpawnProcess.start

    def start(self):
        if started:
            raise BrokenPipeError(32, os.strerror(32))
        real_start(self)
        started.append(self)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start)
    result = CliRunner().invoke(app, ["teacher-cache", "--pipeline", str(recipe_path), "--out", str(tmp_path / "c.zarr"),
                                      "--device", "cpu", "--set", "cache.write_processes=2"])
    assert_one_line_error(result, "cache writer processes: 2 could not start", "Broken pipe",
                          "(set cache.write_processes = 0 to write from this process)")
    started[0].join(timeout=30)
    assert len(started) == 1 and not started[0].is_alive()
    out = tmp_path / "c.zarr"  # nothing looks complete
    assert not out.exists() or zarr.open_group(str(out), mode="r").attrs.get("state") != "complete"


def test_writer_processes_leave_ctrl_c_to_the_parent_and_print_no_traceback(tmp_path, capfd):
    """Ctrl-C reaches every process of the terminal's group. The writer processes ignore it (the parent stops
    the job and them, in one line); before, each printed its own KeyboardInterrupt traceback."""
    import os
    import signal
    import time

    from frs_cli.cache.shard_writer import WriterProcesses

    procs = WriterProcesses(str(tmp_path / "c.zarr"), None, 2)
    try:
        time.sleep(3)  # the new interpreters are up and waiting for batches
        for p in procs._procs:
            os.kill(p.pid, signal.SIGINT)
        time.sleep(1.5)
        assert all(p.is_alive() for p in procs._procs)
    finally:
        procs.close()
    assert all(p.exitcode == 0 for p in procs._procs)  # stopped by close, not by the signal
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_writer_slots_are_registered_with_cuda_as_they_are_first_taken(tmp_path, monkeypatch):
    """Registering all 16 slots before the first batch took 0.42 s of an 8192-view R50-FPN v2 write's start on an
    H100 (``stage_seconds.slots`` in docs/results/issue13_2026-12-07_h100_s40/call3/tcr.json). Now ``pin`` registers
    the slot taken first and each other one as it is first taken; one CUDA refuses is used as it is, asked once;
    close unregisters exactly the slots registered. CUDA's two calls are recorded here instead."""
    from frs_cli.cache.shard_writer import WriterProcesses

    calls, refuse = [], set()

    class Cudart:
        class cudaError:
            success = 0

        def cudaHostRegister(self, ptr, size, flags):
            calls.append(("register", ptr, size))
            return 1 if ptr in refuse else 0

        def cudaHostUnregister(self, ptr):
            calls.append(("unregister", ptr))
            return 0

    monkeypatch.setattr(torch.cuda, "cudart", Cudart)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(torch, "ones", lambda *args, **kwargs: torch.zeros(1))  # the refusal's error, let fail
    procs = WriterProcesses(str(tmp_path / "c.zarr"), None, 1)
    try:
        procs.allocate(64, slots=4)
        ptrs = [torch.frombuffer(shm.buf, dtype=torch.uint8).data_ptr() for shm in procs._shm]
        refuse.add(ptrs[1])
        assert procs.pin() and calls == [("register", ptrs[3], 64)]  # the slot taken first, alone
        assert procs.slot()[0] == 3 and procs.pinned(3).data_ptr() == ptrs[3] and len(calls) == 1
        assert procs.pinned(2).data_ptr() == procs.pinned(2).data_ptr() == ptrs[2]
        assert calls[1:] == [("register", ptrs[2], 64)]  # on first use, once
        refused = procs.pinned(1)  # CUDA refuses: the slot's bytes as they are, not asked again
        assert refused.data_ptr() == ptrs[1] and refused.numel() == 64 and procs.pinned(1).data_ptr() == ptrs[1]
        assert calls[2:] == [("register", ptrs[1], 64)]
    finally:
        procs.close(wait=False)
    assert sorted(c for c in calls if c[0] == "unregister") == sorted([("unregister", ptrs[3]),
                                                                       ("unregister", ptrs[2])])


def test_close_unregisters_each_slot_as_it_comes_back_and_lets_the_workers_stop_behind_the_last_batch(
        tmp_path, monkeypatch):
    """The write's drain: ``close`` tells the workers to stop behind the batches queued, and unregisters each slot
    a worker hands back while another batch is still being written (before, all after every worker had exited).
    A worker that has stopped with exit code 0 while another slot is out is no failure. CUDA's calls are recorded
    by a stand-in; a batch is out while the test holds its slot."""
    import threading
    import time

    from frs_cli.cache.shard_writer import WriterProcesses

    calls = []
    procs = WriterProcesses(str(tmp_path / "c.zarr"), None, 1)

    class Cudart:
        class cudaError:
            success = 0

        def cudaHostRegister(self, ptr, size, flags):
            return 0

        def cudaHostUnregister(self, ptr):
            calls.append((ptr, sorted(procs._free)))  # the slots back when it is unregistered
            return 0

    monkeypatch.setattr(torch.cuda, "cudart", Cudart)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    procs.allocate(64, slots=3)
    ptrs = [torch.frombuffer(shm.buf, dtype=torch.uint8).data_ptr() for shm in procs._shm]
    assert procs.pin()
    taken = [procs.slot()[0] for _ in range(2)]
    for slot in taken:
        procs.pinned(slot)
    assert taken == [2, 1] and procs._free == [0]
    procs._results.put((2, None))  # one batch written; slot 1's is still being written, by a second worker
    written = threading.Event()

    class Busy:  # the second worker, writing slot 1's batch
        name, exitcode = "frs-cache-writer-1", None

        def is_alive(self):
            return not written.is_set()

        def join(self, timeout=None):
            written.wait(timeout)

    procs._procs.append(Busy())

    def write_the_last_batch():
        procs._procs[0].join(timeout=60)  # the first worker took its stop and exited
        time.sleep(1.5)  # close's wait for a slot times out once with it exited, the other one still writing
        procs._results.put((1, None))
        written.set()

    last = threading.Thread(target=write_the_last_batch)
    last.start()
    procs.close(wait=True)
    last.join()
    assert procs._procs[0].exitcode == 0
    assert calls == [(ptrs[2], [0, 2]), (ptrs[1], [0, 1, 2])]  # slot 2 while slot 1 was out, then slot 1
    assert set(procs.seconds) == {"wait", "join", "free"} and procs.seconds["wait"] > 1.5


WORKER_EXIT_PROBE = """
import atexit, multiprocessing as mp, os, sys

if __name__ == "__mp_main__":  # the spawned worker: a teardown at its exit would leave this file behind
    atexit.register(lambda: open(os.path.join(sys.argv[1], "teardown"), "w").close())

if __name__ == "__main__":
    from frs_cli.cache.shard_writer import _worker

    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    worker = ctx.Process(target=_worker, args=(os.path.join(sys.argv[1], "absent.zarr"), None, tasks, results))
    worker.start()
    tasks.put((5, "frs-no-such-slot", "b0", [0], ["p3"], None))
    tasks.put(None)
    slot, error = results.get(timeout=60)
    worker.join(60)
    print(slot, worker.exitcode, error is not None)
"""


def test_a_writer_process_hands_back_every_result_then_exits_without_the_interpreters_teardown(tmp_path):
    """A worker's exit skips the interpreter's teardown (atexit handlers, zarr's and numpy's finalisation: 0.07 to
    0.16 s of the write's end per worker on an H100 machine), after its results queue has flushed what it put:
    the parent gets the failed batch's slot back, with its error, and exit code 0."""
    probe = tmp_path / "probe.py"
    probe.write_text(WORKER_EXIT_PROBE)
    out = subprocess.run([sys.executable, str(probe), str(tmp_path)], check=False, capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "0", "True"]
    assert not (tmp_path / "teardown").exists()


def test_a_cache_written_from_a_relative_data_root_is_read_from_any_folder(synth_root, teacher_ckpt, tmp_path,
                                                                           monkeypatch):
    """The cache records its annotation file's absolute path: ``eval --cache`` and ``visualize`` run from another
    folder find the dataset (before: the recipe's relative path, refused as 'where it was written from')."""
    from typer.testing import CliRunner

    from frs_cli.cache.backend import open_backend
    from frs_cli.cli.app import app

    monkeypatch.chdir(synth_root.parent)
    recipe = write_recipe(tmp_path / "r.toml", Path(synth_root.name), str(teacher_ckpt))
    cache = tmp_path / "c.zarr"
    result = CliRunner().invoke(app, ["teacher-cache", "--pipeline", str(recipe), "--out", str(cache), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    recorded = open_backend(str(cache)).attrs["dataset"]["annotation_file"]
    assert recorded == str(synth_root / "annotations" / "instances_train.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(app, ["eval", "--cache", "../c.zarr", "--max-views", "2"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["visualize", "--cache", "../c.zarr", "--out", "m.png"])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "m.png").is_file()


def test_the_writer_processes_module_imports_no_torch():
    """The cache's writer processes start by importing ``frs_cli.cache.shard_writer``; torch is not among what that
    loads (a second import of torch per writer: session 32's first SIGTERM handling came from a module that imports
    it, and each process started about a second later on the CPU, several on a GPU machine)."""
    import subprocess
    import sys

    code = "import sys, frs_cli.cache.shard_writer; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
