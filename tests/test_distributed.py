"""torchrun on CPU (gloo): two processes split teacher-cache and train with DDP."""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
import zarr
from conftest import cache_arrays, write_recipe

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def _torchrun_cmd(*args) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "frs_cli", *map(str, args), "--device", "cpu"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args, tmp_path):
    return subprocess.run(_torchrun_cmd(*args), env=ENV, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          check=False)


def _torchrun_popen(*args, tmp_path, new_session: bool = False):
    return subprocess.Popen(_torchrun_cmd(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path, start_new_session=new_session)


def _assert_matches_one_process_cache(got_path, ref_path) -> float:
    """Same arrays as the one-process cache: floats within fp16 ulps (one process per core with 1 thread each
    sums fp32 in another order than 2 threads), the rest identical; checksums follow the bytes. Returns the
    largest absolute difference."""
    ref, got = cache_arrays(ref_path), cache_arrays(got_path)
    assert set(ref) == set(got)
    worst = 0.0
    for name in ref:
        a, b = ref[name], got[name]
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-3, atol=1e-3,
                                       err_msg=name)
        elif not name.endswith("crc"):
            np.testing.assert_array_equal(a, b, err_msg=name)
    return worst


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_two_process_teacher_cache_equals_one_process_and_ddp_distill_runs(cache_path, synth_root, teacher_ckpt,
                                                                          tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    out = tmp_path / "c2.zarr"
    r = _torchrun("teacher-cache", "--pipeline", recipe, "--out", out, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 48 of 48 views" in r.stdout
    assert "teacher-cache (process 0's share of 2) 24/24" in r.stderr + r.stdout  # the bar is not the whole job
    # the MB/s is the whole job's (both processes' bytes, what the disk takes), views/s process 0's alone: over the
    # same seconds, their ratio is 48 views' bytes over 24 views
    import re

    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.reader import TeacherCache
    from frs_cli.cache.schema import make_plan, view_bytes

    line = " ".join(r.stdout.split())
    views_s, mb_s = map(float, re.search(r"\(([\d.]+) views/s per process, ([\d.,]+) MB/s in all\)", line).groups())
    cache = TeacherCache(str(out))
    plan = make_plan(cache.dataset(), ("orig", "hflip"), [lv.stride for lv in cache.levels])
    stored = view_bytes(plan, [lv.channels for lv in cache.levels], FeatureEncoding("float16")).sum()
    handed = stored - 48 * (4 * 2 * len(cache.levels) + 1)  # a view's checksums and done flag are not handed over
    assert mb_s * 1e6 / views_s == pytest.approx(handed / 24, rel=0.05), line
    worst = _assert_matches_one_process_cache(out, cache_path)
    print(f"two-process vs one-process cache: max abs difference {worst:.3g}")
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"

    r = _torchrun("distill", "--pipeline", recipe, "--cache", out, "--out", tmp_path / "run", "--no-eval",
                  "--set", "train.epochs=2", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    # 24 images over 2 processes, batch 4 per process -> 3 iterations per epoch
    assert state["iters_per_epoch"] == 3 and state["epoch"] == 2
    assert (tmp_path / "run" / "model_final.pt").is_file()


def _children_by_rank(parent: int) -> dict[int, int]:
    """pid of each torchrun worker (direct children of ``parent``) by its RANK environment variable (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            out[int(env[b"RANK"])] = int(entry)
    return out


@pytest.mark.skipif(not os.path.exists(TORCHRUN) or not os.path.isdir("/proc"), reason="torchrun and /proc needed")
@pytest.mark.parametrize("dead_rank", [0, 1])
def test_teacher_cache_resumes_after_one_rank_is_killed(cache_path, synth_root, teacher_ckpt, tmp_path, dead_rank):
    """SIGKILL one worker of a two-process teacher-cache mid-run; torchrun stops the other; ``--resume`` (two
    processes again) completes a cache equal to the one-process reference up to fp16 rounding."""
    import signal
    import time

    from frs_cli.cache.reader import TeacherCache

    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    out = tmp_path / "c.zarr"
    proc = _torchrun_popen("teacher-cache", "--pipeline", recipe, "--out", out, tmp_path=tmp_path)
    done_dir = out / "buckets" / "64x64" / "done"
    killed = False
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and sum(p.suffix != ".partial" for p in done_dir.glob("c.*")) >= 2:
            ranks = _children_by_rank(proc.pid)
            if dead_rank in ranks:
                os.kill(ranks[dead_rank], signal.SIGKILL)
                killed = True
                break
        time.sleep(0.005)
    proc.wait(timeout=120)
    assert killed and proc.returncode != 0, "the run finished before a rank could be killed"
    partial = TeacherCache(str(out), require_complete=False)
    if partial.attrs["state"] == "complete":
        # on a loaded machine the kill may land after both processes passed the barrier that follows the last
        # write: every view was written, so process 0 rightly marked the cache complete (and only then)
        assert partial.done().all()
    else:
        # the surviving rank may finish every view before torchrun stops it (the kill lands between polls): the
        # cache still reads as unfinished, and the resume below still has to complete it
        assert 0 < partial.done().sum() <= 48 and partial.attrs["state"] == "writing"
    r = _torchrun("teacher-cache", "--pipeline", recipe, "--out", out, "--resume", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"
    _assert_matches_one_process_cache(out, cache_path)


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_ddp_distill_killed_mid_epoch_resumes_under_torchrun_to_the_uninterrupted_weights(straight_run, tmp_path):
    """Two-process DDP distill, state saved every iteration: SIGKILL the whole torchrun in epoch 2, then
    ``--resume`` under torchrun ends with the weights of an uninterrupted two-process run, bit for bit."""
    import signal
    import time

    _, common, straight = straight_run
    common = [*common, "--set", "train.checkpoint_every=1"]
    out = tmp_path / "killed"
    proc = _torchrun_popen(*common, "--out", out, tmp_path=tmp_path, new_session=True)  # killpg reaches every worker
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"iter"') >= 4:  # 3 iterations per epoch: in epoch 2
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "distill finished before it was killed"
    assert not (out / "model_final.pt").exists()
    r = _torchrun(*common, "--out", out, "--resume", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = straight
    b = torch.load(out / "model_final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


STRAIGHT_EPOCHS = 4  # the uninterrupted two-process distill the stopped-and-resumed ones must end equal to


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cache_path, synth_root, teacher_ckpt):
    """``(recipe, its distill options, the model_final.pt state)`` of an uninterrupted two-process DDP distill of
    STRAIGHT_EPOCHS epochs (3 iterations each): one run for every test that stops one and resumes it."""
    folder = tmp_path_factory.mktemp("straight")
    recipe = write_recipe(folder / "r.toml", synth_root, str(teacher_ckpt))
    common = ["distill", "--pipeline", recipe, "--cache", cache_path, "--no-eval", "--set",
              f"train.epochs={STRAIGHT_EPOCHS}"]
    r = _torchrun(*common, "--out", folder / "run", tmp_path=folder)
    assert r.returncode == 0, r.stderr[-3000:]
    return recipe, common, torch.load(folder / "run" / "model_final.pt", weights_only=True)["model"]


def _worker_pid(root: int, local_rank: int) -> int | None:
    """The pid of torchrun's worker ``local_rank`` among the descendants of ``root`` (Linux ``/proc``), else None."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return pid
    return None


@pytest.mark.skipif(not os.path.exists(TORCHRUN) or not os.path.isdir("/proc"), reason="torchrun and /proc needed")
@pytest.mark.parametrize("to", ["rank 1", "the terminal"])
def test_ctrl_c_under_torchrun_stops_both_processes_at_one_step_and_resumes_to_the_uninterrupted_weights(
        straight_run, tmp_path, to):
    """Ctrl-C to one process of two (``rank 1``), or as a terminal sends it (``the terminal``: SIGINT to
    torchrun's process group; torchrun starts each worker in a session of its own and, shutting down, sends each
    SIGINT once, SIGKILL after its shutdown timeout). Under torchrun the processes agree on a stop one step late,
    without waiting for the step in flight. Both stop at the same step boundary (if they disagreed, one would wait
    in DDP's all-reduce for ever) with the state saved, never "stopped at once"; ``--resume`` ends with the
    uninterrupted weights."""
    import signal
    import time

    _, common, straight = straight_run
    out = tmp_path / "cut"
    proc = subprocess.Popen(_torchrun_cmd(*common, "--out", out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True)
    metrics, sent = out / "metrics.jsonl", False
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not sent:
        if metrics.is_file() and metrics.read_text().count('"iter"') >= 2:
            if to == "rank 1":
                pid = _worker_pid(proc.pid, 1)
                assert pid is not None, "rank 1's process was not found"
                os.kill(pid, signal.SIGINT)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            sent = True
        time.sleep(0.005)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.communicate()
        raise AssertionError("the processes did not stop together: one waits for the other") from None
    assert sent and proc.returncode != 0, "distill finished before Ctrl-C"
    assert "interrupted: stopped at epoch" in stderr, stderr[-3000:]
    assert "stopped at once" not in stderr, stderr[-3000:]
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"]) < (STRAIGHT_EPOCHS, 0)
    assert not (out / "model_final.pt").exists()
    r = _torchrun(*common, "--out", out, "--resume", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = straight
    b = torch.load(out / "model_final.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_an_error_every_rank_meets_is_printed_once_under_torchrun(tmp_path):
    """Both processes of a two-process run meet the same missing annotations file: one ``error:`` line, exit 1."""
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "nowhere")
    temp = tmp_path / "temp"  # the job's own temporary folder: other tests' processes may run beside it (xdist)
    temp.mkdir()
    r = subprocess.run(_torchrun_cmd("distill", "--pipeline", recipe, "--cache", tmp_path / "cache.zarr", "--out",
                                     tmp_path / "run"), env={**ENV, "TMPDIR": str(temp)}, capture_output=True,
                       text=True, cwd=tmp_path, timeout=300, check=False)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    assert "annotations" in lines[0] and "nowhere" in lines[0], lines
    assert not (tmp_path / "run").exists()
    assert not list(temp.glob("frs-reported-*"))  # torchrun's own folder (in it, removed by torchrun) held the markers


def test_first_to_report_lets_one_process_of_a_job_print_each_line_each_time(tmp_path, monkeypatch):
    """Two processes (one parent) report lines: each line's n-th report prints once; a one-process run prints all."""
    from frs_cli.cli import common

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert [common.first_to_report("a") for _ in range(3)] == [True, True, True]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29511")
    rank0, rank1 = {}, {}
    for n in range(2):
        monkeypatch.setattr(common, "_times_reported", rank0)
        first = [common.first_to_report("error: x"), common.first_to_report("warning: only rank 0")]
        monkeypatch.setattr(common, "_times_reported", rank1)
        second = [common.first_to_report("error: x"), common.first_to_report("warning: only rank 1")]
        assert first == [True, True] and second == [False, True], n
    monkeypatch.setenv("MASTER_PORT", "29512")  # another job prints its lines again
    assert common.first_to_report("error: x")
    assert len(list(tmp_path.glob("frs-reported-*"))) == 7  # 3 lines twice, one in the other job
    attempt = tmp_path / "torchelastic_x" / "attempt_0"  # under torchrun: beside the processes' error files
    (attempt / "1").mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "1" / "error.json"))
    monkeypatch.setattr(common, "_times_reported", {})
    assert common.first_to_report("error: y")
    monkeypatch.setattr(common, "_times_reported", {})  # the other process
    assert not common.first_to_report("error: y")
    assert len(list(attempt.glob("frs-reported-*"))) == 1 and len(list(tmp_path.glob("frs-reported-*"))) == 7


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="a process group and /proc needed")
def test_sigterm_to_the_whole_job_with_loader_workers_saves_the_state_and_resumes(cache_path, synth_root, teacher_ckpt,
                                                                                 tmp_path):
    """A scheduler's cancel sends SIGTERM to every process of the job, the DataLoader's workers among them. The
    workers leave it to the training process, which finishes the step, saves its state and exits 143; ``--resume``
    then finishes the run (before: SIGTERM ended every process at once, nothing saved since the last checkpoint)."""
    import signal
    import time

    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    out = tmp_path / "cut"
    args = [sys.executable, "-m", "frs_cli", "distill", "--pipeline", str(recipe), "--cache", str(cache_path),
            "--no-eval", "--set", "train.epochs=4", "--set", "train.workers=1", "--device", "cpu"]
    proc = subprocess.Popen([*args, "--out", str(out)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, start_new_session=True)
    metrics, sent = out / "metrics.jsonl", False
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not sent:
        if metrics.is_file() and metrics.read_text().count('"iter"') >= 2:
            os.killpg(proc.pid, signal.SIGTERM)  # the training process and its loader worker
            sent = True
        time.sleep(0.005)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("distill did not stop after SIGTERM") from None
    assert sent, "distill finished before SIGTERM"
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted: stopped at epoch" in stderr and "exited unexpectedly" not in stderr, stderr[-3000:]
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"]) < (4, 0)
    r = subprocess.run([*args, "--out", str(out), "--resume"], env=ENV, capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model_final.pt").is_file()


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_processes_of_one_job_started_with_different_settings_are_refused_in_one_line(cache_path, synth_root,
                                                                                     teacher_ckpt, tmp_path):
    """Each process of a torchrun job reads its own command line: one differing setting used to train on apart
    (rank 1 stepping at another LR, only rank 0's recorded, exit 0), or, another dataset or --no-eval on one rank,
    wait for ever; eval scored each half of the split with another model. Now every command compares them first:
    one line naming the setting and both values, exit 1, nothing written. A process's own loader workers, and the
    cache read as its HDF5 export, may differ."""
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    script = tmp_path / "per_rank.sh"  # what a launcher script reading its own rank would do
    script.write_text('#!/bin/sh\nexec "$PYTHON" -m frs_cli "$@" $(eval echo \\$EXTRA_$LOCAL_RANK)\n')
    script.chmod(0o755)
    h5 = tmp_path / "cache.h5"
    from frs_cli.cache.export import export_hdf5

    export_hdf5(cache_path, str(h5))  # in this process: a torchrun-free step, no interpreter to start

    def launch(command, extra, per_rank, out=None):
        env = {**ENV, "PYTHON": sys.executable, "EXTRA_0": per_rank[0], "EXTRA_1": per_rank[1]}
        args = [*(["--pipeline", str(recipe)] if command != "eval" else []), *map(str, extra),
                *(["--out", str(tmp_path / out)] if out else []), "--device", "cpu"]
        return subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", str(script), command,
                               *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)

    distill = ["--cache", cache_path]
    cases = [("distill", [*distill, "--no-eval"], ("--set train.lr=0.01", "--set train.lr=0.02"), "run",
              "distill: the processes of this torchrun job differ in train.lr: rank 0 has 0.01, rank 1 has 0.02"),
             ("teacher-cache", [], ("--set cache.dtype=float16", "--set cache.dtype=int8"), "c.zarr",
              ("teacher-cache: the processes of this torchrun job differ in cache.dtype: rank 0 has 'float16', rank 1 "
               "has 'int8'")),
             ("distill", distill, ("", "--no-eval"), "run",
              "distill: the processes of this torchrun job differ in --no-eval: rank 0 has False, rank 1 has True"),
             ("eval", ["--checkpoint", teacher_ckpt, "--data", synth_root], ("--split val", "--split train"), None,
              "eval: the processes of this torchrun job differ in the split's annotations (sha256)")]
    for command, extra, per_rank, out, expected in cases:
        r = launch(command, extra, per_rank, out)
        assert r.returncode != 0, r.stderr[-3000:]
        lines = _error_lines(r.stderr)
        assert len(lines) == 1 and expected in lines[0], r.stderr[-3000:]
        assert "]: Traceback" not in r.stderr, r.stderr[-3000:]  # no worker's traceback
        if out:
            assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir()), list((tmp_path / out).iterdir())
    r = launch("distill", ["--no-eval"], (f"--cache {cache_path} --set train.workers=0",
                                          f"--cache {h5} --set train.workers=1"), "allowed")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "allowed" / "model_final.pt").is_file()


# Runs frs as torchrun's workers do, but process 0 gets SIGTERM as it leaves the process group after a failure: where
# torchrun's own SIGTERM lands when it saw another worker die while process 0's failed collective was unwinding.
SIGTERM_AS_RANK_0_UNWINDS = """
import os, runpy, signal, sys
from frs_cli import dist

teardown = dist.teardown


def teardown_after_sigterm(ctx):
    if ctx.rank == 0 and sys.exc_info()[1] is not None:
        os.kill(os.getpid(), signal.SIGTERM)
    teardown(ctx)


dist.teardown = teardown_after_sigterm
runpy.run_module("frs_cli", run_name="__main__")
"""


@pytest.mark.skipif(not os.path.exists(TORCHRUN) or not os.path.isdir("/proc"), reason="torchrun and /proc needed")
@pytest.mark.parametrize("sigterm", ["torchrun's", "as rank 0 unwinds"])
def test_a_process_killed_mid_distill_leaves_the_other_one_line_not_a_traceback(cache_path, synth_root, teacher_ckpt,
                                                                               tmp_path, sigterm):
    """SIGKILL one worker of a two-process distill: the other's next collective fails, and torchrun, seeing the
    dead worker, sends SIGTERM to it. Before, it printed gloo's traceback; now one line says another process of the
    job stopped, and --resume continues the run. ``as rank 0 unwinds``: that SIGTERM comes (for certain, not only on
    a loaded machine) after process 0's collective failed, while it leaves the training loop and the process group;
    before, it ended process 0 there (SIGTERM's default action), with no line at all."""
    import signal
    import time

    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    out = tmp_path / "run"
    cmd = _torchrun_cmd("distill", "--pipeline", recipe, "--cache", cache_path, "--no-eval", "--set",
                        "train.epochs=40", "--set", "train.checkpoint_every=1", "--out", out)
    if sigterm == "as rank 0 unwinds":
        (tmp_path / "frs_worker.py").write_text(SIGTERM_AS_RANK_0_UNWINDS)
        cmd[cmd.index("-m"):cmd.index("frs_cli") + 1] = [str(tmp_path / "frs_worker.py")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"iter"') >= 2:
            victim = _worker_pid(proc.pid, 1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, "distill finished before a worker was killed"
    assert "]: Traceback" not in stderr, stderr[-3000:]
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error: another process of this torchrun job stopped, so process 0 cannot go on"), \
        lines[0]
    assert "--resume continues" in lines[0]
    assert (out / "last.pt").is_file()


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_a_refusal_process_0_meets_alone_is_one_line_not_the_others_traceback(cache_path, synth_root, teacher_ckpt,
                                                                            tmp_path):
    """Process 0 alone checks an existing cache; the others wait for its word. Refused (incomplete, no --resume),
    it exits, and the waiting process's collective failed: before, that process printed gloo's traceback."""
    recipe = write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt))
    out = tmp_path / "c.zarr"
    shutil.copytree(cache_path, out)
    zarr.open_group(str(out), mode="r+").attrs["state"] = "writing"
    for _ in range(2):  # the race between process 0's exit and the other's wait, twice
        r = _torchrun("teacher-cache", "--pipeline", recipe, "--out", out, tmp_path=tmp_path)
        assert r.returncode != 0
        lines = _error_lines(r.stderr)
        assert len(lines) == 1 and f"cache '{out}': exists and is incomplete" in lines[0], r.stderr[-3000:]
        assert "]: Traceback" not in r.stderr, r.stderr[-3000:]


def test_only_a_collectives_failure_counts_as_a_lost_peer(monkeypatch):
    """The one-line "another process stopped" is for a collective's failure (gloo, NCCL), under torchrun only: a
    remote store's connection reset is its own error, with its own traceback or line."""
    from frs_cli.dist import lost_a_peer

    gloo = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [::1]:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_a_peer(gloo)
    assert lost_a_peer(torch.distributed.DistBackendError("NCCL communicator was aborted on rank 1"))
    assert not lost_a_peer(RuntimeError("Connection reset by peer (while reading s3://bucket/cache.zarr)"))
    assert not lost_a_peer(ValueError("gloo: connection reset"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not lost_a_peer(gloo)


# A process as frs's main() leaves it (SIGPIPE's default action: a closed pipe ends a command that only prints), then
# a job's setup or a remote cache opened, then a write to a socket whose other end is gone, as a collective meets a peer that was killed.
WRITE_TO_A_GONE_PEER = """
import signal, socket, sys
from frs_cli import dist

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
if sys.argv[1] == "setup":
    dist.setup("cpu")
elif sys.argv[1] == "remote store":
    from frs_cli.cache.store import open_group
    open_group("memory://gone-peer.zarr", mode="w")
ours, theirs = socket.socketpair()
theirs.close()
try:
    for _ in range(100):
        ours.send(b"x" * 65536)
except BrokenPipeError:
    print("EPIPE")
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGPIPE"), reason="SIGPIPE is POSIX")
def test_a_job_meets_a_gone_peer_as_an_error_it_can_report_not_a_death_by_sigpipe():
    """A job's setup makes a write to a closed socket or pipe an error (EPIPE) again: the process group's transport,
    loader workers and writer processes meet a dead peer so, and the job says which process stopped; so does opening
    a cache at a URL (a server's closed connection: fsspec's to retry or report). Before, a
    two-process distill whose other process was killed could itself end by signal 13 with no line at all (seen in a
    test run: process 0 ``exitcode -13 (SIGPIPE)``). Without the setup, the same write still ends the process as
    frs's main() wants for a command that only prints."""
    ran = {how: subprocess.run([sys.executable, "-c", WRITE_TO_A_GONE_PEER, how], capture_output=True, text=True,
                               timeout=120, env=ENV, check=False) for how in ("setup", "remote store", "no setup")}
    for how in ("setup", "remote store"):
        assert (ran[how].returncode, ran[how].stdout.strip()) == (0, "EPIPE"), (how, ran[how].stderr[-2000:])
    assert (ran["no setup"].returncode, ran["no setup"].stdout) == (-13, ""), ran["no setup"].stderr[-2000:]
