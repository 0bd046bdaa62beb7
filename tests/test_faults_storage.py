"""Storage and cache faults end to end (docs/RELIABILITY.md, "Storage and cache faults"): each row runs the
command line and checks the exit code, the one ``error:`` line (no traceback) and what is left on disk.

Concurrency rows run real processes: the first writer is a ``python -m frs_cli`` subprocess, stopped with
SIGSTOP once its lock file names it, so the second provably starts while the first holds the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from conftest import assert_one_line_error, assert_same_cache_arrays, write_recipe
from typer.testing import CliRunner

from frs_cli.cache.checksum import view_crc
from frs_cli.cache.verify import verify_cache
from frs_cli.cli.app import app
from frs_cli.lock import lock_path

runner = CliRunner()
BUCKET = "buckets/64x64"
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _copy(cache_path, tmp_path, name="c.zarr") -> Path:
    copy = tmp_path / name
    shutil.copytree(cache_path, copy)
    return copy


def _truncate(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[:50])


def _flip_byte(shard: Path, inner: int) -> None:
    """One byte flipped inside inner chunk ``inner`` of an uncompressed shard (its index: (offset, nbytes) as
    two little-endian uint64 per inner chunk, then a CRC-32C, at the end of the file)."""
    import struct

    data = bytearray(shard.read_bytes())
    offset, nbytes = struct.unpack_from("<QQ", data[-(4 * 16 + 4):-4], 16 * inner)
    data[offset + nbytes // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def _flip_every_view(array_dir: Path) -> None:
    """A byte flipped in every view's chunk of one array (every shard, every inner chunk): the first view a
    run reads is damaged, whatever order its sampler picks."""
    for shard in sorted(array_dir.glob("c.*")):
        for inner in range(4):
            _flip_byte(shard, inner)


def _distill(t, cache, *extra):
    return run("distill", "--pipeline", t.recipe, "--cache", cache, "--out", t.tmp / "run", "--device", "cpu",
               "--no-eval", *extra)


def _assert_no_run_left(t) -> None:
    """A distill that failed leaves no model file, no training state and no lock."""
    out = t.tmp / "run"
    assert not (out / "model_final.pt").exists() and not (out / "last.pt").exists()
    assert not lock_path(out).exists()


# --- concurrency: real processes --------------------------------------------------------------------------------

def _popen(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "frs_cli", *map(str, args), "--device", "cpu"], env=ENV, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_once_it_holds_the_lock(proc, output: Path, timeout: float = 120.0) -> dict:
    """SIGSTOP ``proc`` as soon as the lock of ``output`` names it; return the lock's record."""
    lock = lock_path(output)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            holder = json.loads(lock.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
            continue
        if holder["pid"] == proc.pid:
            os.kill(proc.pid, signal.SIGSTOP)
            assert json.loads(lock.read_text())["pid"] == proc.pid  # stopped while it holds the lock
            return holder
    raise AssertionError(f"{output}: no lock of pid {proc.pid} within {timeout} s")


def _end(proc) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_second_teacher_cache_on_one_out_is_refused_naming_the_first_and_a_killed_holder_is_stale(
        recipe_path, cache_path, tmp_path):
    out = tmp_path / "c.zarr"
    first = _popen("teacher-cache", "--pipeline", recipe_path, "--out", out, cwd=tmp_path)
    try:
        holder = _stop_once_it_holds_the_lock(first, out)
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu")
        assert_one_line_error(result, f"teacher-cache --out {out}: expected no other writer, but pid {first.pid} "
                                      f"on host {socket.gethostname()} since {holder['started']} (frs teacher-cache "
                                      f"--pipeline {recipe_path} --out {out} --device cpu) holds its lock "
                                      f"{lock_path(out)}", "delete the lock file")
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # the second wrote nothing
        first.kill()  # the holder dies with its lock in place: stale, as its pid is gone
        first.wait()
        assert lock_path(out).exists()
    finally:
        _end(first)
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "breaking the stale lock of pid" in " ".join(result.stderr.split())
    assert not lock_path(out).exists()
    assert verify_cache(str(out)).ok
    assert_same_cache_arrays(out, cache_path)


def test_a_complete_cache_under_repair_is_refused_to_readers_and_verify_names_the_job(recipe_path, cache_path,
                                                                                     tmp_path):
    """``teacher-cache --resume`` verifies and repairs a complete cache while it stays marked complete: a distill
    started then trained on it (and met the views being rewritten), and verify's hint was to start that same
    --resume. Now both name the job that holds the cache."""
    c = _copy(cache_path, tmp_path)
    (c / BUCKET / "P3" / "features" / "c.1.0.0.0").unlink()
    repair = _popen("teacher-cache", "--pipeline", recipe_path, "--out", c, "--resume", cwd=tmp_path)
    try:
        _stop_once_it_holds_the_lock(repair, c)
        assert zarr.open_group(str(c), mode="r").attrs["state"] == "complete"
        t = SimpleNamespace(tmp=tmp_path, cache=c, recipe=recipe_path)
        assert_one_line_error(_distill(t, c), f"cache {str(c)!r}: is being written by pid {repair.pid} on host",
                              "--resume", "wait for that job to finish")
        _assert_no_run_left(t)
        result = run("cache", "verify", c)
        text = " ".join(result.stdout.split())
        assert result.exit_code == 1 and f"a job holds the cache now, pid {repair.pid} on host" in text, text
        assert "--resume rewrites them" not in text
        os.kill(repair.pid, signal.SIGCONT)
        _, stderr = repair.communicate(timeout=300)
        assert repair.returncode == 0, stderr[-3000:]
    finally:
        _end(repair)
    assert verify_cache(str(c)).ok


def test_second_distill_on_one_out_is_refused_and_the_first_finishes(recipe_path, cache_path, tmp_path):
    out = tmp_path / "run"
    first = _popen("distill", "--pipeline", recipe_path, "--cache", cache_path, "--out", out, "--no-eval",
                   cwd=tmp_path)
    try:
        _stop_once_it_holds_the_lock(first, out)
        listing = sorted(p.name for p in out.iterdir()) if out.exists() else None
        result = run("distill", "--pipeline", recipe_path, "--cache", cache_path, "--out", out, "--device", "cpu",
                     "--no-eval")
        assert_one_line_error(result, f"--out {out}: expected no other writer, but pid {first.pid} on host",
                              "(frs distill --pipeline")
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == listing
        os.kill(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        _end(first)
    assert (out / "model_final.pt").is_file() and (out / "adapters.pt").is_file()
    assert not lock_path(out).exists()  # released on a normal exit
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6  # one run's metrics: 6 steps, not two runs'


def test_ctrl_c_releases_the_lock(monkeypatch, recipe_path, tmp_path):
    from frs_cli.cache import writer

    def interrupted(*args, **kwargs):
        assert lock_path(out).exists()  # held while the cache is written
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_write", interrupted)
    out = tmp_path / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu")
    assert result.exit_code == 130 and "Traceback" not in result.output
    # stopped before the writer made the cache: nothing to resume (test_faults_run.py has the case with a cache)
    assert result.stderr == "interrupted: teacher-cache stopped before it made the cache; nothing was written\n"
    assert not lock_path(out).exists() and not out.exists()


def test_sigint_stops_teacher_cache_even_when_it_started_ignoring_it_and_resume_finishes(recipe_path, tmp_path):
    """A job started with ``&`` from a script inherits SIGINT ignored; ``kill -INT`` still stops teacher-cache (as it
    stops train and distill), with the resume hint, exit 130, the cache left incomplete; --resume completes it."""
    out = tmp_path / "c.zarr"
    cmd = [sys.executable, "-m", "frs_cli", "teacher-cache", "--pipeline", str(recipe_path), "--out", str(out),
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ignoring = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]  # SIGINT ignored, inherited across exec
    proc = subprocess.Popen(ignoring, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done_dir = out / BUCKET / "done"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and any(p.suffix != ".partial" for p in done_dir.glob("c.*")):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.002)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: teacher-cache stopped" in stderr and "--resume to write the rest" in stderr
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "writing"
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, check=False, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "complete"


def test_lock_rules_for_other_hosts_reused_pids_urls_and_torchrun_ranks(tmp_path, caplog):
    from frs_cli.errors import LockError
    from frs_cli.lock import STALE_AFTER_S, job_lock, output_lock

    out = tmp_path / "c.zarr"
    lock = lock_path(out)
    other = {"host": "another-host", "pid": 1, "proc_start": "1", "started": "2026-12-01T00:00:00Z",
             "command": "frs teacher-cache --out c.zarr"}
    lock.write_text(json.dumps(other))  # another host, heartbeat fresh: live
    with pytest.raises(LockError, match="pid 1 on host another-host since 2026-12-01T00:00:00Z"), output_lock(out):
        pass
    old = time.time() - STALE_AFTER_S - 5  # its heartbeat stopped: broken
    os.utime(lock, (old, old))
    with output_lock(out) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({**other, "host": socket.gethostname(), "pid": os.getpid(), "proc_start": "0"}))
    with output_lock(out):  # this host, our pid but another start time: a reused pid, stale
        pass
    with output_lock("memory://x.zarr"), pytest.raises(LockError, match="holds its lock \\(in this process\\)"), \
            output_lock("memory://x.zarr"):  # in-process registry
        pass
    with output_lock("memory://x.zarr"):  # released
        pass
    with output_lock(f"file://{tmp_path}/u.zarr") as held:
        assert held == tmp_path / ".u.zarr.lock"
    with output_lock("s3://bucket/c.zarr") as held:
        assert held is None and "not locked" in caplog.text
    with job_lock(out, SimpleNamespace(is_main=False, distributed=False)):  # rank 1 takes nothing
        assert not lock.exists()



@pytest.mark.parametrize("code", ["EACCES", "EPERM", "EROFS"])
def test_a_writable_output_whose_lock_cannot_be_made_beside_it_is_refused_not_run_unlocked(code, recipe_path, tmp_path,
                                                                                          monkeypatch):
    """``--out`` an existing, writable folder inside one that refuses new files (an admin-made folder in a
    read-only one, an immutable parent; simulated: the tests may run as root): one line naming the lock file, exit
    1, the folder untouched (before: EACCES and EROFS ran unlocked, so a second run wrote into the same folder and
    both exited 0; EPERM said "cannot make its folder" of a folder that existed). An output that does not exist
    there yet still runs unlocked: its own first write gives the error."""
    import errno

    from frs_cli import lock as lock_module

    number = getattr(errno, code)

    def refused(path, text):
        raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(lock_module, "_create", refused)
    out = tmp_path / "run"
    out.mkdir()
    result = CliRunner().invoke(app, ["train", "--pipeline", str(recipe_path), "--role", "student", "--out", str(out),
                                      "--no-eval", "--device", "cpu"])
    assert_one_line_error(result, f"--out {str(out)!r}: cannot make its lock file {str(tmp_path / '.run.lock')!r} "
                                  f"({os.strerror(number)}), which keeps a second writer out of it (make "
                                  f"{str(tmp_path)!r} writable, or give the --out a path inside a folder you can write)")
    assert list(out.iterdir()) == []
    with lock_module.output_lock(tmp_path / "new") as held:  # nothing there yet: nothing to guard
        assert held is None


def test_an_output_reached_through_a_symlink_is_locked_as_its_real_folder(tmp_path):
    """``--out link`` where ``link`` points at the folder another job writes (or at its parent folder): the same
    lock file, so the second job is refused (before: ``.link.lock`` beside the link, and two runs trained into one
    folder, their metrics interleaved)."""
    from frs_cli.errors import LockError
    from frs_cli.lock import output_lock

    real = tmp_path / "runs" / "a"
    real.mkdir(parents=True)
    (tmp_path / "a_link").symlink_to(real)
    (tmp_path / "runs_link").symlink_to(tmp_path / "runs")
    assert lock_path(tmp_path / "a_link") == lock_path(tmp_path / "runs_link" / "a") == lock_path(real)
    with output_lock(real):
        for other in (tmp_path / "a_link", tmp_path / "runs_link" / "a"):
            with pytest.raises(LockError, match="expected no other writer"), output_lock(other):
                pass
    assert not lock_path(real).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a_link", "runs",
                                                                                        "runs_link"]


def test_an_out_that_links_to_a_folder_not_made_yet_is_made_there(recipe_path, tmp_path):
    """``--out L`` where ``L`` links to ``D``, not made yet: ``D`` is made and holds the run or the cache, as for a
    plain missing ``--out`` (before: "writing failed (File exists)", with advice to free space or resume that could
    not help)."""
    for command, out in ((["train", "--role", "student", "--set", "train.epochs=1", "--no-eval"], "run"),
                         (["teacher-cache"], "c.zarr")):
        link = tmp_path / f"link_{out}"
        link.symlink_to(out)
        result = run(*command, "--pipeline", recipe_path, "--out", link, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert (tmp_path / out).is_dir() and link.resolve() == tmp_path / out
    assert (tmp_path / "run" / "model_final.pt").is_file()
    assert verify_cache(str(tmp_path / "c.zarr")).ok

def test_a_name_the_file_system_accepts_gets_its_lock_and_temporary_files_and_a_longer_one_is_one_line(
        recipe_path, tmp_path):
    """A 245-byte --out (ext4 takes 255) trains and evaluates: its lock and temporary files' names are shortened
    with a digest (before: a traceback, "File name too long", for the lock's temporary name). A 300-byte name is one
    line naming the part's length, whichever command meets it (before: a traceback)."""
    from frs_cli.names import NAME_MAX, sibling

    base = tmp_path / "o"  # beside the recipe
    base.mkdir()
    legal = base / ("K" * 245)
    result = run("train", "--role", "student", "--pipeline", recipe_path, "--out", legal, "--device", "cpu",
                 "--set", "train.epochs=1", "--no-eval")
    assert result.exit_code == 0, result.output
    assert (legal / "model_final.pt").is_file() and sorted(p.name for p in base.iterdir()) == [legal.name]
    lock = sibling(legal, ".", ".lock")
    assert lock == base / f".{legal.name}.lock"  # 251 bytes: as it was
    suffix = ".a-host-name.5416.140354053733248.tmp"  # the lock's temporary file: shortened, with a digest
    tmp = sibling(lock, "", suffix)
    assert len(tmp.name.encode()) == NAME_MAX and tmp.name.startswith(".KKK") and "~" in tmp.name
    assert sibling(lock, "", suffix) == tmp != sibling(base / (".K" + "K" * 243 + "J.lock"), "", suffix)
    assert sibling(tmp_path / "run", ".", ".lock") == tmp_path / ".run.lock"
    too_long = "N" * 300
    for args in (["train", "--role", "student", "--pipeline", recipe_path, "--out", base / too_long],
                 ["data", "synth", base / too_long, "--train", "2", "--val", "1"]):
        result = run(*args, "--device", "cpu") if args[0] == "train" else run(*args)
        assert_one_line_error(result, "a name in the path is longer than the file system accepts (300 bytes, "
                                      "where most accept at most 255)", "choose a shorter name")
    assert sorted(p.name for p in base.iterdir()) == [legal.name]

def test_a_job_refused_before_writing_leaves_no_folder_it_made_for_its_output(recipe_path, tmp_path):
    """The lock file sits beside ``--out``: taking it made ``--out``'s missing parent folders, which a refusal
    (here: no annotation file) used to leave behind, empty."""
    from frs_cli.lock import output_lock

    out = tmp_path / "runs" / "fast" / "c.zarr"
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu",
                 "--set", f"data.root={tmp_path / 'nowhere'}")
    assert_one_line_error(result, "nowhere")
    assert not (tmp_path / "runs").exists()
    with output_lock(out) as held:  # a job that wrote its output keeps the folders that hold it
        assert held.parent == out.parent and out.parent.is_dir()
        out.mkdir()
    assert out.is_dir() and not held.exists()
    with output_lock(tmp_path / "a" / "b.zarr"):
        pass
    assert not (tmp_path / "a").exists()

# --- the fault table: one row per case --------------------------------------------------------------------------

def _head_array_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / "teacher_head" / "head.cls_logits.weight")
    return c, ["teacher_head/head.cls_logits.weight"]


def _index_array_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / "index" / "row")
    return c, ["index/row"]


def _mask_array_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / BUCKET / "P4" / "mask")
    return c, [f"{BUCKET}/P4/mask"]


def _done_flags_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / BUCKET / "done")
    return c, [f"{BUCKET}/done"]


def _checksums_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / BUCKET / "crc")
    return c, [f"{BUCKET}/crc"]


def _level_group_missing(t):  # no other level in its place: missing, not a level name edited to another
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / BUCKET / "P4")
    return c, [f"{BUCKET}/P4/features", f"{BUCKET}/P4/mask"]


MISSING_ARRAY = {f.__name__.lstrip("_"): f for f in (_head_array_missing, _index_array_missing, _mask_array_missing,
                                                     _done_flags_missing, _checksums_missing, _level_group_missing)}


@pytest.mark.parametrize("case", list(MISSING_ARRAY))
def test_a_missing_array_is_never_ok_distill_refuses_it_and_resume_recreates_it(case, recipe_path, cache_path,
                                                                                 tmp_path):
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    damaged, names = MISSING_ARRAY[case](t)
    result = run("cache", "verify", damaged)
    assert result.exit_code == 1
    line = " ".join(result.stdout.split())
    n = len(names)
    said = "1 array the format requires is missing" if n == 1 else f"{n} arrays the format requires are missing"
    assert f"{said} ({names[0]}" in line and "--resume" in line
    assert_one_line_error(_distill(t, damaged), "expected every array of the cache format", names[0],
                          f"--out {damaged} --resume repairs it")
    _assert_no_run_left(t)
    assert_one_line_error(run("teacher-cache", "--pipeline", recipe_path, "--out", damaged, "--device", "cpu"),
                          "is damaged", names[0], "add --resume to recreate them")
    if case in ("done_flags_missing", "checksums_missing"):
        return  # repaired as mask_array_missing is: the bucket's arrays recreated, every view of it rewritten
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", damaged, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert f"recreated {len(names)} array" in said and names[0] in said and "already complete" not in said, said
    assert run("cache", "verify", damaged).exit_code == 0
    assert_same_cache_arrays(damaged, cache_path)
    assert zarr.open_group(str(damaged), mode="r").attrs["state"] == "complete"


def _head_weight_changed(t):
    c = _copy(t.cache, t.tmp)
    zarr.open_group(str(c), mode="r+")["teacher_head/head.cls_logits.weight"][0, 0, 0, 0] += 0.5
    return c, "teacher_head/head.cls_logits.weight", "its teacher head does not match its checksums"


def _index_rows_swapped(t):
    c = _copy(t.cache, t.tmp)
    row = zarr.open_group(str(c), mode="r+")["index/row"]
    row[[0, 2]] = row[[2, 0]]
    return c, "index/row", "its index does not match its checksums"


DAMAGED_ARRAY = {f.__name__.lstrip("_"): f for f in (_head_weight_changed, _index_rows_swapped)}


@pytest.mark.parametrize("case", list(DAMAGED_ARRAY))
def test_a_damaged_index_or_head_is_never_ok_distill_refuses_it_and_resume_rewrites_it(case, recipe_path, cache_path,
                                                                                      tmp_path):
    """The writer records a CRC-32 of each index and teacher-head array (``checksums``): changed values there
    (another image's targets, another head) are found by verify, refused by distill, rewritten by --resume."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    damaged, name, says = DAMAGED_ARRAY[case](t)
    result = run("cache", "verify", damaged)
    assert result.exit_code == 1 and "OK:" not in result.stdout
    assert name in " ".join(result.stdout.split()) and "--resume" in result.stdout
    assert_one_line_error(_distill(t, damaged), says, name, f"--out {damaged} --resume repairs it")
    _assert_no_run_left(t)
    assert_one_line_error(run("teacher-cache", "--pipeline", recipe_path, "--out", damaged, "--device", "cpu"),
                          "is damaged", name, "add --resume to recreate them")
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", damaged, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert f"recreated 1 array that was missing or damaged ({name})" in said, said
    assert "no view needed writing" in said and "already complete" not in said  # it did write: the array
    assert run("cache", "verify", damaged).exit_code == 0
    assert_same_cache_arrays(damaged, cache_path)
    attrs = zarr.open_group(str(damaged), mode="r").attrs
    assert attrs["state"] == "complete"
    assert attrs["checksums"] == zarr.open_group(str(cache_path), mode="r").attrs["checksums"]
    assert set(attrs["checksums"]) == {f"index/{n}" for n in ("image_id", "view", "bucket", "row", "geometry")} | {
        f"teacher_head/{n}" for n in zarr.open_group(str(cache_path), mode="r")["teacher_head"].array_keys()}


def test_resume_rewrites_a_truncated_shard_whole(recipe_path, cache_path, tmp_path):
    damaged = _copy(cache_path, tmp_path)
    _truncate(damaged / BUCKET / "P4" / "features" / "c.2.0.0.0")  # rows 8-11
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", damaged, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "rewrote 4 written views that were missing or corrupt" in result.stdout
    assert run("cache", "verify", damaged).exit_code == 0
    assert_same_cache_arrays(damaged, cache_path)
    assert zarr.open_group(str(damaged), mode="r").attrs["state"] == "complete"


def test_resume_with_writer_processes_rewrites_a_truncated_shard(recipe_path, cache_path, tmp_path):
    damaged = _copy(cache_path, tmp_path)
    _truncate(damaged / BUCKET / "P3" / "mask" / "c.0.0.0")  # rows 0-3
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", damaged, "--device", "cpu", "--resume",
                 "--set", "cache.write_processes=1")
    assert result.exit_code == 0, result.output
    assert verify_cache(str(damaged)).ok
    assert_same_cache_arrays(damaged, cache_path)


def _truncated_shard_preloaded(t):
    c = _copy(t.cache, t.tmp)
    _truncate(c / BUCKET / "P4" / "features" / "c.2.0.0.0")
    return c, [], ["array buckets/64x64/P4/features of bucket 64x64 is unreadable", "--resume repairs it"]


def _truncated_shard_read_per_view(t):
    c = _copy(t.cache, t.tmp)
    for shard in (c / BUCKET / "P4" / "features").glob("c.*"):
        _truncate(shard)
    return c, ["--set", "cache.preload_mb=0"], ["(bucket 64x64, row ", "level P4 is unreadable",
                                               f"--out {c} --resume repairs it"]


def _flipped_feature_byte(t):
    c = _copy(t.cache, t.tmp)
    _flip_every_view(c / BUCKET / "P3" / "features")
    return c, [], ["image ", "(bucket 64x64, row ", "): P3/features does not match its stored checksum",
                   f"frs cache verify {c} lists the damage"]


def _flipped_mask_byte(t):
    c = _copy(t.cache, t.tmp)
    _flip_every_view(c / BUCKET / "P5" / "mask")
    return c, ["--set", "cache.preload_mb=0"], ["image ", "(bucket 64x64, row ",
                                                "): P5/mask does not match its stored checksum"]


def _nan_bytes_in_features(t):
    c = _copy(t.cache, t.tmp)
    f = zarr.open_array(str(c / BUCKET / "P6" / "features"), mode="r+")
    values = f[...]
    values[:, 0, 0, 0] = np.nan  # every view; the stored checksums are left as they were: damage
    f[...] = values
    return c, [], ["image ", "(bucket 64x64, row ", "): P6/features does not match its stored checksum"]


def _nan_written_by_the_teacher(t):
    from frs_cli.cache.shard_writer import view_crc

    c = _copy(t.cache, t.tmp)
    f = zarr.open_array(str(c / BUCKET / "P6" / "features"), mode="r+")
    crc = zarr.open_array(str(c / BUCKET / "crc"), mode="r+")
    values, crcs = f[...], crc[...]
    values[:, 0, 0, 0] = np.nan  # every view
    for k in range(len(values)):
        crcs[k, 2 * 3] = view_crc(values[k])  # P6 is the fourth level: as if the teacher had written the NaN
    f[...], crc[...] = values, crcs
    return c, [], ["image ", "(bucket 64x64, row ",
                   "): P6/features holds a non-finite number (NaN or inf), and its checksum matches: the teacher",
                   "check the teacher's weights"]


def _shard_file_deleted(t):
    c = _copy(t.cache, t.tmp)
    for shard in (c / BUCKET / "P7" / "mask").glob("c.*"):
        shard.unlink()  # every view's P7 mask reads back as zeros
    return c, [], ["(bucket 64x64, row ", "): P7/mask is missing: its chunk is not in the store",
                   f"frs cache verify {c} lists the damage"]


def _corrupt_hdf5_export(t):
    import h5py

    out = t.tmp / "c.h5"
    assert run("cache", "export", t.cache, out).exit_code == 0
    with h5py.File(out, "r+") as f:
        f[f"{BUCKET}/P3/features"][:, 0, 0, 0] += 1  # every view
    return out, [], ["image ", "(bucket 64x64, row ", "): P3/features does not match its stored checksum",
                     "an exported file is not repaired in place", f"frs cache export ZARR {out} again"]


def _cache_state_creating(t):
    c = _copy(t.cache, t.tmp)
    zarr.open_group(str(c), mode="r+").attrs["state"] = "creating"
    return c, [], ["its writer stopped while creating it", "run teacher-cache again to recreate it"]


def _cache_state_writing(t):
    c = _copy(t.cache, t.tmp)
    zarr.open_group(str(c), mode="r+").attrs["state"] = "writing"
    return c, [], ["is incomplete (its writer did not finish)", "run teacher-cache with --resume to finish it"]


def _newer_format(t):
    c = _copy(t.cache, t.tmp)
    zarr.open_group(str(c), mode="r+").attrs["format_version"] = 9
    return c, [], ["format version 9 is newer than this frs reads (3)", "upgrade frs"]


def _not_a_cache(t):
    (t.tmp / "plain").mkdir()
    return t.tmp / "plain", [], ["expected an frs teacher cache, found something else"]


def _nothing_there(t):
    return t.tmp / "nowhere.zarr", [], [f"expected an frs teacher cache at '{t.tmp / 'nowhere.zarr'}', found nothing"]


def _storage_dtype_edited(t):
    c = _copy(t.cache, t.tmp)
    zarr.open_group(str(c), mode="r+").attrs["storage"] = {**zarr.open_group(str(c), mode="r").attrs["storage"],
                                                          "dtype": "float32"}
    return c, [], ["/P3/features is (", "the attributes say (", "storage.dtype 'float32'", "write the cache again"]


def _both_sources(t):
    return t.cache, ["--online"], ["expected exactly one teacher source: --cache PATH or --online"]


DISTILL_READS = {f.__name__.lstrip("_"): f for f in (
    _truncated_shard_preloaded, _truncated_shard_read_per_view, _flipped_feature_byte, _flipped_mask_byte,
    _nan_bytes_in_features, _nan_written_by_the_teacher, _shard_file_deleted, _corrupt_hdf5_export,
    _cache_state_creating, _cache_state_writing, _newer_format, _not_a_cache, _nothing_there, _storage_dtype_edited,
    _both_sources)}


@pytest.mark.parametrize("case", list(DISTILL_READS))
def test_distill_on_a_bad_cache_is_one_line_naming_it(case, recipe_path, cache_path, tmp_path):
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, extra, fragments = DISTILL_READS[case](t)
    assert_one_line_error(_distill(t, cache, *extra), *fragments)
    _assert_no_run_left(t)


def _verify_truncated(t):
    c = _copy(t.cache, t.tmp)
    _truncate(c / BUCKET / "P4" / "features" / "c.2.0.0.0")
    return c, ["P4/features unreadable", "4 missing or corrupt", f"--out {c} --resume rewrites them"]


def _verify_hdf5_damage(t):
    import h5py

    out = t.tmp / "c.h5"
    assert run("cache", "export", t.cache, out).exit_code == 0
    with h5py.File(out, "r+") as f:
        f[f"{BUCKET}/P3/mask"][0, 0, 0] += 1
    return out, ["P3/mask checksum mismatch", "not repairable in place", f"frs cache export ZARR {out} again"]


def _verify_state_creating(t):  # its writer killed while creating it: the attributes readers need not recorded
    c = _copy(t.cache, t.tmp)
    g = zarr.open_group(str(c), mode="r+")
    kept = {k: g.attrs[k] for k in ("format", "format_version")}
    g.attrs.clear()
    g.attrs.update({**kept, "state": "creating"})
    return c, [f"cache {c}: its writer stopped while creating it: no view was checked",
               "run teacher-cache again to recreate it"]


def _verify_empty_cache(t):
    c = _copy(t.cache, t.tmp)
    g = zarr.open_group(str(c), mode="r+")
    checksums = dict(g.attrs["checksums"])
    for name, arr in list(g["index"].arrays()):
        empty = g["index"].create_array(name, shape=(0, *arr.shape[1:]), dtype=arr.dtype, overwrite=True)
        checksums[f"index/{name}"] = view_crc(empty[...])  # as the writer records an empty split's index
    g.attrs.update({"buckets": [], "num_views": 0, "checksums": checksums})
    return c, [f"cache {str(c)!r}: holds no views (its split has no images", "cache a split with images"]


def _verify_head_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / "teacher_head")
    return c, ["14 arrays the format requires are missing (teacher_head/"]


def _edited_attrs(t, edit):
    c = _copy(t.cache, t.tmp)
    g = zarr.open_group(str(c), mode="r+")
    attrs = json.loads(json.dumps(dict(g.attrs)))
    edit(attrs)
    g.attrs.put(attrs)  # whole: a key deleted from the top level is gone
    return c


_REWRITE = ["its attributes do not match its arrays", "no view was checked", "--resume does not repair",
            "write the cache again"]


def _verify_dtype_edited(t):
    c = _edited_attrs(t, lambda a: a["storage"].update(dtype="float32"))
    return c, [f"{BUCKET}/P3/features is (", "float16, the attributes say (", "float32 (storage.dtype 'float32'",
               *_REWRITE]


def _verify_channels_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][0].update(channels=a["levels"][0]["channels"] // 2))
    return c, ["/P3/features is (", "P3 channels", *_REWRITE]


def _verify_count_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(count=a["buckets"][0]["count"] - 1))
    return c, [f"bucket {BUCKET.split('/')[1]}: count", "views of it in the index", *_REWRITE]


def _verify_geometry_edited(t):
    c = _edited_attrs(t, lambda a: a["geometry"].update(min_size=a["geometry"]["min_size"] - 16))
    return c, ["views' recorded geometry does not follow from the geometry", *_REWRITE]


def _verify_head_spec_edited(t):
    # anchors and channels edited alike (3 x 5): the spec agrees with itself, the stored head's weights do not
    c = _edited_attrs(t, lambda a: a["teacher"]["head_spec"].update(num_anchors=3, cls_channels=15))
    return c, ["teacher_head/", "teacher.head_spec gives", *_REWRITE]


def _verify_stride_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][1].update(stride=8))
    return c, [f"bucket {BUCKET.split('/')[1]} P4: level_sizes", "stride 8 of", *_REWRITE]


def _verify_num_views_edited(t):
    c = _edited_attrs(t, lambda a: a.update(num_views=40))
    return c, ["num_views 40 against 48 views in the index", *_REWRITE]


def _verify_num_classes_edited(t):
    c = _edited_attrs(t, lambda a: a["teacher"].update(num_classes=a["teacher"]["num_classes"] + 1))
    return c, ["teacher.num_classes 6 against 5 classes in dataset.label_to_category", *_REWRITE]


def _verify_label_to_category_edited(t):
    c = _edited_attrs(t, lambda a: a["dataset"].update(label_to_category=a["dataset"]["label_to_category"][::-1]))
    return c, ["dataset.label_to_category [5, 4, 3, 2, 1] is no increasing list of category ids", *_REWRITE]


def _verify_num_images_edited(t):
    c = _edited_attrs(t, lambda a: a["dataset"].update(num_images=a["dataset"]["num_images"] * 2))
    return c, ["dataset.num_images 48 against 24 images in the index", *_REWRITE]


def _verify_num_images_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["dataset"].pop("num_images"))
    return c, ["dataset.num_images: expected 24 (the images in the index), got no such key", *_REWRITE]


def _verify_head_spec_classes_edited(t):
    c = _edited_attrs(t, lambda a: a["teacher"]["head_spec"].pop("num_classes"))
    return c, ["teacher.head_spec: KeyError: 'num_classes'", *_REWRITE]


def _verify_cls_channels_string_edited(t):
    c = _edited_attrs(t, lambda a: a["teacher"]["head_spec"].update(cls_channels="45"))
    return c, ["teacher.head_spec.cls_channels: expected a positive integer, got str '45'", *_REWRITE]


def _verify_cls_channels_edited(t):
    c = _edited_attrs(t, lambda a: a["teacher"]["head_spec"].update(cls_channels=54))
    return c, [("teacher.head_spec.cls_channels 54 against 45 (9 anchors x 5 classes, the retinanet head's "
                "classification output)"), *_REWRITE]


def _verify_stride_string_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][1].update(stride="16"))
    return c, ["levels[1].stride: expected a positive integer, got str '16'", *_REWRITE]


def _verify_stride_zero_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][1].update(stride=0))
    return c, ["levels[1].stride: expected a positive integer, got 0", *_REWRITE]


def _verify_count_string_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(count="48"))
    return c, ["buckets[0].count: expected an integer >= 0, got str '48'", *_REWRITE]


def _verify_num_views_string_edited(t):
    c = _edited_attrs(t, lambda a: a.update(num_views="48 views"))
    return c, ["num_views: expected an integer >= 0, got str '48 views'", *_REWRITE]


def _verify_padded_string_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(padded=["64", "64"]))
    return c, ["buckets[0].padded[0]: expected a positive integer, got str '64'; 1 more fault", *_REWRITE]


def _verify_stride_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][0].pop("stride"))
    return c, ["levels[0].stride: expected a positive integer, got no such key", *_REWRITE]


def _verify_count_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].pop("count"))
    return c, ["buckets[0].count: expected an integer >= 0, got no such key", *_REWRITE]


def _verify_level_sizes_int_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(level_sizes=5))
    return c, ["buckets[0].level_sizes: expected a list of 5 [height, width] sizes (one per level), got int", *_REWRITE]


def _verify_level_sizes_flat_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(level_sizes=[5, 5]))
    return c, ["buckets[0].level_sizes: expected a list of 5 [height, width] sizes (one per level), got a list of 2",
               *_REWRITE]


def _verify_level_sizes_short_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0]["level_sizes"].pop())
    return c, ["buckets[0].level_sizes: expected a list of 5 [height, width] sizes (one per level), got a list of 4",
               *_REWRITE]


def _verify_level_sizes_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].pop("level_sizes"))
    return c, ["buckets[0].level_sizes: expected a list of 5 [height, width] sizes (one per level), got no such key",
               *_REWRITE]


def _verify_bucket_name_int_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(name=64))
    return c, ["buckets[0].name: expected a string, got int 64", *_REWRITE]


def _verify_level_name_null_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][0].update(name=None))
    return c, ["levels[0].name: expected a string, got none", *_REWRITE]


def _verify_level_name_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["levels"][0].pop("name"))
    return c, ["levels[0].name: expected a string, got no such key", *_REWRITE]


def _verify_level_name_renamed_edited(t):  # a string still: its arrays are under the old name, not missing
    c = _edited_attrs(t, lambda a: a["levels"][0].update(name="Q3"))
    said = (f"levels[0].name names level Q3, which {BUCKET} does not hold; it holds level P3, which the attributes do "
            "not name")
    return c, [said, *_REWRITE]


def _verify_bucket_name_renamed_edited(t):
    c = _edited_attrs(t, lambda a: a["buckets"][0].update(name="64x65"))
    said = ("buckets[0].name names bucket 64x65, which the store does not hold; it holds bucket 64x64, which the "
            "attributes do not name")
    return c, [said, *_REWRITE]


def _verify_geometry_string_edited(t):
    c = _edited_attrs(t, lambda a: a["geometry"].update(min_size="64"))
    return c, ["geometry.min_size: expected a positive integer, got str '64'", *_REWRITE]


def _verify_geometry_key_added_edited(t):
    c = _edited_attrs(t, lambda a: a["geometry"].update(min_szie=64))
    return c, [("geometry.min_szie: expected no such key (a geometry holds min_size, max_size, size_divisible), got "
                "int 64"), *_REWRITE]


def _verify_geometry_max_below_min_edited(t):
    c = _edited_attrs(t, lambda a: a["geometry"].update(max_size=32))
    return c, ["geometry.max_size: expected at least min_size (64), got 32", *_REWRITE]


def _verify_mask_dtype_edited(t):
    c = _edited_attrs(t, lambda a: a["storage"].update(mask_dtype="half float"))
    return c, ["storage.mask_dtype: expected a NumPy dtype name (float16), got str 'half float'", *_REWRITE]


def _verify_dtype_int_edited(t):
    c = _edited_attrs(t, lambda a: a["storage"].update(dtype=5))
    return c, ["storage.dtype: expected one of float16, bfloat16, float32, int8, int6, int5, int4, got int 5", *_REWRITE]


def _verify_dtype_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["storage"].pop("dtype"))
    return c, [("storage.dtype: expected one of float16, bfloat16, float32, int8, int6, int5, int4, got no such key"),
               *_REWRITE]


def _verify_codec_int_edited(t):
    c = _edited_attrs(t, lambda a: a["storage"].update(codec=5))
    return c, ["storage.codec: expected one of none, zstd, blosc, got int 5", *_REWRITE]


def _verify_view_int_edited(t):
    c = _edited_attrs(t, lambda a: a["views"].append(5))
    return c, ["views[2]: expected a string, got int 5", *_REWRITE]


def _verify_teacher_null_edited(t):
    c = _edited_attrs(t, lambda a: a.update(teacher=None))
    return c, ["teacher: expected an object, got none", *_REWRITE]


def _verify_dataset_list_edited(t):
    c = _edited_attrs(t, lambda a: a.update(dataset=[]))
    return c, ["dataset: expected an object, got list", *_REWRITE]


def _verify_storage_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a.pop("storage"))
    return c, ["storage: expected an object, got no such key", *_REWRITE]


def _verify_geometry_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a.pop("geometry"))
    return c, ["geometry: expected an object, got no such key", *_REWRITE]


def _verify_head_spec_deleted_edited(t):
    c = _edited_attrs(t, lambda a: a["teacher"].pop("head_spec"))
    return c, ["teacher.head_spec: expected an object, got no such key", *_REWRITE]


def _verify_done_chunk_lost(t):
    c = _copy(t.cache, t.tmp)
    (c / BUCKET / "done" / "c.0").unlink()
    return c, ["the cache is marked complete, but", "views are not marked written (a done-flag chunk is lost",
               f"--out {c} --resume rewrites them"]


VERIFY_NOT_OK = {f.__name__.lstrip("_"): f for f in (_verify_truncated, _verify_hdf5_damage, _verify_empty_cache,
                                                     _verify_state_creating,
                                                     _verify_head_missing, _verify_dtype_edited,
                                                     _verify_channels_edited, _verify_count_edited,
                                                     _verify_geometry_edited, _verify_head_spec_edited,
                                                     _verify_stride_edited, _verify_num_views_edited,
                                                     _verify_num_classes_edited, _verify_label_to_category_edited,
                                                     _verify_num_images_edited, _verify_num_images_deleted_edited,
                                                     _verify_head_spec_classes_edited,
                                                     _verify_cls_channels_string_edited, _verify_cls_channels_edited,
                                                     _verify_stride_string_edited, _verify_stride_zero_edited,
                                                     _verify_count_string_edited,
                                                     _verify_num_views_string_edited, _verify_padded_string_edited,
                                                     _verify_stride_deleted_edited, _verify_count_deleted_edited,
                                                     _verify_level_sizes_int_edited, _verify_level_sizes_flat_edited,
                                                     _verify_level_sizes_short_edited,
                                                     _verify_level_sizes_deleted_edited,
                                                     _verify_bucket_name_int_edited, _verify_level_name_null_edited,
                                                     _verify_level_name_deleted_edited,
                                                     _verify_level_name_renamed_edited,
                                                     _verify_bucket_name_renamed_edited,
                                                     _verify_geometry_string_edited, _verify_geometry_key_added_edited,
                                                     _verify_geometry_max_below_min_edited, _verify_mask_dtype_edited,
                                                     _verify_dtype_int_edited, _verify_dtype_deleted_edited,
                                                     _verify_codec_int_edited,
                                                     _verify_view_int_edited,
                                                     _verify_teacher_null_edited, _verify_dataset_list_edited,
                                                     _verify_storage_deleted_edited, _verify_geometry_deleted_edited,
                                                     _verify_head_spec_deleted_edited,
                                                     _verify_done_chunk_lost)}


@pytest.mark.parametrize("case", list(VERIFY_NOT_OK))
def test_verify_never_says_ok_on_a_damaged_or_empty_cache(case, recipe_path, cache_path, tmp_path):
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, fragments = VERIFY_NOT_OK[case](t)
    result = run("cache", "verify", cache)
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.stdout.split())
    assert "OK:" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    if str(cache).endswith(".h5"):  # teacher-cache refuses .h5: no hint may send the user there
        assert f"--out {cache} --resume" not in text


def test_files_in_a_cache_that_are_no_zarr_node_are_left_alone_without_zarrs_warning(recipe_path, cache_path, tmp_path,
                                                                                     recwarn):
    """A note or an editor's backup dropped into the store: distill, verify, info and export go on, and zarr's own
    warning for each (its words and a source line, on every group listing) no longer reaches the user."""
    c = _copy(cache_path, tmp_path)
    (c / "notes.txt").write_text("which teacher was this?")
    (c / "buckets" / "64x64.bak").write_text("x")
    t = SimpleNamespace(tmp=tmp_path, cache=c, recipe=recipe_path)
    for result in (_distill(t, c), run("cache", "verify", c), run("cache", "info", c),
                   run("cache", "export", c, tmp_path / "c.h5")):
        assert result.exit_code == 0, result.output
        assert "ZarrUserWarning" not in result.output and "warnings.warn" not in result.output, result.output
    assert (tmp_path / "run" / "model_final.pt").is_file() and (c / "notes.txt").is_file()
    assert not [w for w in recwarn if "not recognized as a component" in str(w.message)]  # what pytest caught


@pytest.mark.parametrize("case", [c for c in VERIFY_NOT_OK if c.endswith("_edited")])
def test_distill_refuses_a_cache_whose_attributes_verify_rejects(case, recipe_path, cache_path, tmp_path):
    """An edited zarr.json: verify said so, yet distill trained on the cache (a stride edit was blamed on the
    student; num_views and geometry edits passed). Now distill gives verify's finding in one line."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, fragments = VERIFY_NOT_OK[case](t)
    finding = fragments[0]
    result = _distill(t, cache)
    line = assert_one_line_error(result, f"cache {str(cache)!r}: its attributes do not match its arrays",
                                 "they were edited or damaged", "write the cache again")
    assert finding in line, (finding, line)
    assert "a cache is read as it was written" not in result.stderr  # no warning that takes the edit at its word
    _assert_no_run_left(t)


@pytest.mark.parametrize("case", ["verify_num_classes_edited", "verify_head_spec_classes_edited",
                                  "verify_cls_channels_edited", "verify_teacher_null_edited",
                                  "verify_dataset_list_edited"])
@pytest.mark.parametrize("resume", [False, True])
def test_teacher_cache_refuses_a_cache_whose_attributes_verify_rejects(case, resume, recipe_path, cache_path, tmp_path):
    """teacher-cache on an edited zarr.json: with --resume it warned that every view's done flag was lost, wrote
    nothing and exited 0 ("already complete"); a head_spec the builder refuses was a traceback in every cache
    command. Now it is verify's finding in one line, with or without --resume, and the cache is left as it was."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, fragments = VERIFY_NOT_OK[case](t)
    before = (cache / "zarr.json").read_bytes()
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", cache, "--device", "cpu",
                 *(["--resume"] if resume else []))
    line = assert_one_line_error(result, f"cache {str(cache)!r}: its attributes do not match its arrays",
                                 fragments[0], "they were edited or damaged", "write the cache again")
    assert "not marked written" not in result.output and "already complete" not in line
    assert (cache / "zarr.json").read_bytes() == before
    info = run("cache", "info", cache)  # its table, or where an attribute is not of its kind, the same one line
    if "expected an object" in fragments[0]:
        assert_one_line_error(info, f"cache {str(cache)!r}: its attributes do not match its arrays", fragments[0])
        assert_one_line_error(run("eval", "--cache", cache), fragments[0])
    else:  # the table, and one warning that it may not describe the cache (before: the table alone)
        assert info.exit_code == 0 and "Traceback" not in info.output
        [line] = info.stderr.strip().splitlines()
        assert line.startswith(f"warning: cache {cache}: its attributes do not match its arrays ({fragments[0]}")
        assert line.endswith(f"they were edited or damaged, so this table may not describe it (frs cache verify {cache})")


@pytest.mark.parametrize("case", ["verify_level_sizes_int_edited", "verify_level_sizes_short_edited",
                                  "verify_bucket_name_int_edited", "verify_level_name_null_edited",
                                  "verify_geometry_string_edited", "verify_geometry_key_added_edited",
                                  "verify_geometry_max_below_min_edited", "verify_mask_dtype_edited",
                                  "verify_view_int_edited", "verify_dtype_int_edited", "verify_dtype_deleted_edited",
                                  "verify_codec_int_edited", "verify_storage_deleted_edited",
                                  "verify_geometry_deleted_edited", "verify_head_spec_deleted_edited"])
def test_every_cache_command_refuses_an_attribute_not_of_its_kind_in_one_line(case, recipe_path, cache_path, tmp_path):
    """An attribute edited to another kind or shape (verify and distill: the cases above): cache info, cache export,
    eval --cache and teacher-cache --resume give verify's finding in one line too, and leave the cache as it was.
    Before: tracebacks from whichever read it first (a level_sizes of 5 in every command; one size short in eval)."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, fragments = VERIFY_NOT_OK[case](t)
    before = sorted((p.relative_to(cache), p.read_bytes() if p.is_file() else None) for p in cache.rglob("*"))
    for args in (("cache", "info", cache), ("cache", "export", cache, tmp_path / "c.h5"), ("eval", "--cache", cache),
                 ("teacher-cache", "--pipeline", recipe_path, "--out", cache, "--device", "cpu", "--resume")):
        assert_one_line_error(run(*args), f"cache {str(cache)!r}: its attributes do not match its arrays",
                              fragments[0])
    assert sorted((p.relative_to(cache), p.read_bytes() if p.is_file() else None) for p in cache.rglob("*")) == before
    assert not (tmp_path / "c.h5").exists()


_REWRITE_LINE = "write the cache again (frs teacher-cache into a new --out)"


@pytest.mark.parametrize("case", ["verify_dtype_int_edited", "verify_codec_int_edited", "verify_storage_deleted_edited",
                                  "verify_geometry_deleted_edited"])
def test_an_attribute_edited_or_deleted_is_one_line_naming_the_cache(case, recipe_path, cache_path, tmp_path):
    """``storage.dtype`` edited to 5: every cache command said "cache dtype: expected one of …, got 5", naming neither
    the cache nor a fix. ``storage.codec`` 5 (shown by ``cache info``, compared by ``teacher-cache``, recorded by
    ``distill``): verify said OK, distill trained and recorded it, --resume proposed ``cache.codec = 5``. A top-level
    attribute deleted (``storage``, ``geometry``) was "got none", as if it held a null: now "got no such key"."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, (finding, *_) = VERIFY_NOT_OK[case](t)
    verify = run("cache", "verify", cache)
    assert verify.exit_code == 1 and verify.stdout.strip() == (
        f"cache {cache}: its attributes do not match its arrays ({finding}): no view was checked; its attributes were "
        f"edited or damaged, which --resume does not repair: {_REWRITE_LINE}")
    for result in (run("cache", "info", cache), _distill(t, cache)):
        assert assert_one_line_error(result) == (f"error: cache {str(cache)!r}: its attributes do not match its arrays "
                                                 f"({finding}): they were edited or damaged ({_REWRITE_LINE})")
    _assert_no_run_left(t)


def test_cache_info_reads_a_cache_without_a_codec_or_mask_dtype_as_older_frs_wrote_it(recipe_path, cache_path,
                                                                                        tmp_path):
    """A cache from before ``storage.codec`` and ``storage.mask_dtype`` were recorded (every reader takes them as
    ``none`` and ``float16``): verify said OK and distill read it, but ``cache info`` ended in a ``KeyError``
    traceback."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache = _edited_attrs(t, lambda a: [a["storage"].pop(k) for k in ("codec", "mask_dtype")])
    result = run("cache", "info", cache)
    assert result.exit_code == 0 and result.stderr == "", result.output
    [row] = [line for line in result.stdout.splitlines() if "│ storage" in line]
    assert row.split("│")[2].strip() == "float16 features, float16 masks, codec none"


def _store_state(cache: Path) -> dict:
    """Every path in the store, with a file's modification time and SHA-256: what a command that writes nothing
    leaves as it was."""
    import hashlib

    return {str(p.relative_to(cache)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file() else None for p in cache.rglob("*")}


@pytest.mark.parametrize("case", ["verify_level_name_renamed_edited", "verify_bucket_name_renamed_edited"])
def test_every_cache_command_refuses_a_level_or_bucket_name_edited_to_another_in_one_line(case, recipe_path, cache_path,
                                                                                         tmp_path):
    """A level or bucket name edited to another string ("P3" to "Q3", "64x64" to "64x65"): the attributes name a group
    the store does not hold, while it holds the data under a name they do not give. Every cache command says so in
    one line, exit 1, the store left as it was, no file touched. Before: verify listed every view's arrays of that
    name as missing and proposed --resume, distill and eval --cache said an array was missing, info printed the table
    (a bucket: a KeyError traceback), and teacher-cache --resume "repaired" it: a level, by clearing every done flag
    and writing all 48 views again, exit 0 with Q3 still missing; a bucket, by marking the cache writing, then
    refusing it."""
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path)
    cache, fragments = VERIFY_NOT_OK[case](t)
    said = f"its attributes do not match its arrays ({fragments[0]})"
    before = _store_state(cache)
    result = run("cache", "verify", cache)
    assert result.exit_code == 1 and "Traceback" not in result.output
    verdict = (f"cache {cache}: {said}: no view was checked; its attributes were edited or damaged, which --resume "
               "does not repair: write the cache again (frs teacher-cache into a new --out)")
    assert result.stdout.strip().splitlines() == [verdict]  # no view listed as missing, no --resume proposed
    tc = ("teacher-cache", "--pipeline", recipe_path, "--out", cache, "--device", "cpu")
    for args in (("cache", "info", cache), ("cache", "export", cache, tmp_path / "c.h5"), ("eval", "--cache", cache),
                 ("visualize", "--cache", cache, "--out", tmp_path / "v.png"), (*tc, "--resume"), tc):
        assert_one_line_error(run(*args), f"cache {str(cache)!r}: {said}: they were edited or damaged (write the "
                                          "cache again")
    assert_one_line_error(_distill(t, cache), f"cache {str(cache)!r}: {said}: they were edited or damaged")
    _assert_no_run_left(t)
    assert _store_state(cache) == before
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "v.png").exists()


def _export_corrupt(t):
    c = _copy(t.cache, t.tmp)
    _flip_byte(c / BUCKET / "P3" / "features" / "c.1.0.0.0", 1)
    return ["cache", "export", c, t.tmp / "out.h5"], \
        ["cache export: expected an intact cache", "1 missing or corrupt", "nothing exported"]


def _export_head_missing(t):
    c = _copy(t.cache, t.tmp)
    shutil.rmtree(c / "teacher_head" / "head.cls_logits.bias")
    return ["cache", "export", c, t.tmp / "out.h5"], ["teacher_head/head.cls_logits.bias"]


def _export_unfinished(t):
    c = _copy(t.cache, t.tmp)
    zarr.open_group(str(c), mode="r+").attrs["state"] = "writing"
    return ["cache", "export", c, t.tmp / "out.h5"], ["is incomplete"]


def _export_to_a_non_h5_name(t):
    return ["cache", "export", t.cache, t.tmp / "out.zarr"], ["expected a local .h5 or .hdf5 file name for OUT"]


def _export_an_h5(t):
    assert run("cache", "export", t.cache, t.tmp / "a.h5").exit_code == 0
    return ["cache", "export", t.tmp / "a.h5", t.tmp / "out.h5"], ["is already HDF5"]


def _synth_no_train_images(t):
    return ["data", "synth", t.tmp / "synth", "--train", "0"], ["synth.train: expected an integer >= 1, got 0"]


def _teacher_cache_empty_split(t):
    root = t.tmp / "data"
    shutil.copytree(t.synth_root, root)
    ann = root / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    doc.update(images=[], annotations=[])
    ann.write_text(json.dumps(doc))
    return ["teacher-cache", "--pipeline", t.recipe, "--out", t.tmp / "out.zarr", "--device",
            "cpu", "--set", f"data.root={root}"], ["expected images in split 'train'", "lists none"]


def _teacher_cache_to_h5(t):
    return ["teacher-cache", "--pipeline", t.recipe, "--out", t.tmp / "out.h5", "--device", "cpu"], \
        ["expected a Zarr path or URL, got an HDF5 file name"]


def _teacher_cache_incomplete_without_resume(t):
    c = _copy(t.cache, t.tmp, "out.zarr")
    zarr.open_group(str(c), mode="r+").attrs["state"] = "writing"
    return ["teacher-cache", "--pipeline", t.recipe, "--out", c, "--device", "cpu"], \
        ["exists and is incomplete", "add --resume to continue it"]


def _teacher_cache_of_another_teacher(t):
    c = _copy(t.cache, t.tmp, "out.zarr")
    g = zarr.open_group(str(c), mode="r+")
    g.attrs["fingerprints"] = {**g.attrs["fingerprints"], "teacher": "0" * 16}
    return ["teacher-cache", "--pipeline", t.recipe, "--out", c, "--device", "cpu", "--resume"], \
        ["was written for another teacher (teacher.weights '", "here; fingerprint 0000000000000000 in the cache, "]


def _teacher_cache_other_views(t):
    c = _copy(t.cache, t.tmp, "out.zarr")
    return ["teacher-cache", "--pipeline", t.recipe, "--out", c, "--device", "cpu", "--set", 'cache.views=["orig"]'], \
        ["holds views ['orig', 'hflip'], this recipe asks for ['orig']"]


def _teacher_cache_out_is_not_a_cache(t):
    (t.tmp / "out.zarr").mkdir()
    (t.tmp / "out.zarr" / "notes.txt").write_text("mine")
    return ["teacher-cache", "--pipeline", t.recipe, "--out", t.tmp / "out.zarr", "--device", "cpu"], \
        ["expected an frs teacher cache, found something else"]


COMMANDS = {f.__name__.lstrip("_"): f for f in (
    _export_corrupt, _export_head_missing, _export_unfinished, _export_to_a_non_h5_name, _export_an_h5,
    _synth_no_train_images, _teacher_cache_empty_split, _teacher_cache_to_h5, _teacher_cache_incomplete_without_resume,
    _teacher_cache_of_another_teacher, _teacher_cache_other_views, _teacher_cache_out_is_not_a_cache)}


@pytest.mark.parametrize("case", list(COMMANDS))
def test_storage_command_faults_are_one_line_and_leave_no_output(case, recipe_path, cache_path, synth_root, tmp_path):
    t = SimpleNamespace(tmp=tmp_path, cache=cache_path, recipe=recipe_path, synth_root=synth_root)
    args, fragments = COMMANDS[case](t)
    before = {p: p.stat().st_mtime_ns if p.is_file() else None for p in tmp_path.rglob("*")}
    assert_one_line_error(run(*args), *fragments)
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "synth").exists()
    after = {p: p.stat().st_mtime_ns if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before  # nothing written, nothing touched (no lock or temporary file left)


def test_an_interrupted_caches_unwritten_views_are_named_as_not_written_not_as_damaged(cache_path, tmp_path):
    """A cache whose writer stopped holds views it never wrote: reading one (``visualize``) says the view is not
    written yet and how to finish the cache, in one line, instead of a checksum mismatch that sends the user to
    repair damage; ``eval --cache`` measures the views written so far and says how many those are."""
    from frs_cli.cache.reader import TeacherCache

    c = _copy(cache_path, tmp_path)
    g = zarr.open_group(str(c), mode="r+")
    g.attrs["state"] = "writing"
    done = g[f"{BUCKET}/done"]
    flags = done[...]
    flags[len(flags) // 2:] = False  # the second half of the rows never written
    done[...] = flags
    cache = TeacherCache(str(c), require_complete=False)
    written = cache.written
    assert not cache.complete and 0 < written.sum() < len(cache)
    k = int(np.flatnonzero(~written)[0])
    image_id, view = int(cache.image_id[k]), ["orig", "hflip"][int(cache.view[k])]
    result = run("visualize", "--cache", c, "--image-id", image_id, "--view", view, "--out", tmp_path / "v.png")
    assert_one_line_error(result, f"image {image_id} {view} (bucket 64x64, row ", "the view is not written yet: the "
                          f"cache is incomplete ({int(written.sum())} of {len(cache)} views written)",
                          "run teacher-cache with --resume to finish it")
    assert "checksum" not in result.stderr and not (tmp_path / "v.png").exists()
    result = run("eval", "--cache", c, "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert f"(incomplete: {int(written.sum())} of {len(cache)} views written)" in result.output.replace("\n", " ")
    positions = json.loads((tmp_path / "m.json").read_text())["levels"][0]["positions"]
    full = run("eval", "--cache", cache_path, "--metrics", tmp_path / "full.json")
    assert full.exit_code == 0
    assert 0 < positions < json.loads((tmp_path / "full.json").read_text())["levels"][0]["positions"]


def test_teacher_cache_fills_an_empty_folder_and_names_what_else_stands_at_out(recipe_path, cache_path, tmp_path):
    """``--out`` an empty folder (made with mkdir first) is a new cache's place; a folder with other files in it or a
    file is refused in one line saying which, without zarr's exception names."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", empty, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert zarr.open_group(str(empty), mode="r").attrs["state"] == "complete"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", other, "--device", "cpu")
    assert_one_line_error(result, f"cache '{other}': expected an frs teacher cache, found something else: a folder "
                                  "that holds no Zarr group")
    assert "Error" not in result.stderr and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", afile, "--device", "cpu")
    assert_one_line_error(result, f"cache '{afile}': expected an frs teacher cache, found something else: a file")
    zipped = tmp_path / "c.zip"  # a cache zipped to be moved: said so, and what frs reads instead
    shutil.make_archive(str(zipped.with_suffix("")), "zip", cache_path)
    line = assert_one_line_error(_distill(SimpleNamespace(tmp=tmp_path, recipe=recipe_path), zipped),
                                 f"cache '{zipped}': expected an frs teacher cache, found something else: a zip file")
    assert "unzip it, and give the folder" in line


def test_visualize_and_eval_of_a_cache_with_another_datasets_data_name_the_files_and_the_option(
        cache_path, synth_root, tmp_path):
    """``--data`` pointing at another dataset than the cache's: one line naming both fingerprints, the annotation
    file read and the one the cache was written from, and the option to fix (these commands take no recipe)."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    ann = root / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    first, second = doc["images"][0], doc["images"][1]  # two images' files swapped: each id another picture
    first["file_name"], second["file_name"] = second["file_name"], first["file_name"]
    ann.write_text(json.dumps(doc))
    for args in (["visualize", "--cache", cache_path, "--data", root, "--out", tmp_path / "v.png"],
                 ["eval", "--cache", cache_path, "--data", root]):
        result = run(*args)
        assert_one_line_error(result, f"cache '{cache_path}': was written for another dataset (cache ",
                              f", {ann} ", "point --data at the dataset the cache was written from (its annotation "
                              f"file was {synth_root / 'annotations' / 'instances_train.json'})")
        assert "recipe" not in result.stderr
    assert not (tmp_path / "v.png").exists()


def test_verify_names_a_lost_scale_chunk_as_missing_not_as_a_feature_checksum(synth_root, teacher_ckpt, tmp_path):
    """int8: a view's features come back as code x scale, and zarr reads a scale chunk that is gone as zeros, so the
    features' checksum (which runs over the scales too) fails. verify names the scale chunk as missing, as the
    reader does (before: "P3/features checksum mismatch" for each view of the shard)."""
    from frs_cli.cache.writer import write_teacher_cache
    from frs_cli.config import load_recipe
    from frs_cli.dist import setup

    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)), ["cache.dtype=\"int8\""])
    c = tmp_path / "int8.zarr"
    write_teacher_cache(r, str(c), ctx=setup("cpu"))
    (c / BUCKET / "P3" / "scale" / "c.0.0").unlink()
    result = run("cache", "verify", c)
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    per_view = [ln for ln in lines if ln.startswith("image ")]
    assert per_view and all(ln.endswith("P3/scale missing") for ln in per_view), lines
    assert "checksum" not in result.stdout


def test_an_output_that_links_to_a_file_or_is_a_pipe_or_device_is_written_through_not_replaced(tmp_path):
    """Every output file goes through ``files.atomic_path``: a symbolic link stays a link and the file it leads to
    (made if missing) gets the content; a pipe or a device (``/dev/stdout``, ``/dev/null``) is written into. Before,
    the temporary file was renamed over the name given, so a link became a plain file, and ``--metrics
    /dev/stdout`` as root would have replaced the device entry itself."""
    import threading

    from frs_cli.files import write_json

    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    write_json(tmp_path / "link.json", {"a": 1})
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "real.json").read_text()) == {"a": 1}
    (tmp_path / "dangling.json").symlink_to("sub/new.json")
    write_json(tmp_path / "dangling.json", {"b": 2})
    assert (tmp_path / "dangling.json").is_symlink() and json.loads((tmp_path / "sub" / "new.json").read_text()) == {"b": 2}
    pipe, got = tmp_path / "pipe", []
    os.mkfifo(pipe)
    reader = threading.Thread(target=lambda: got.append(pipe.read_text()))
    reader.start()
    write_json(pipe, {"c": 3})
    reader.join(timeout=30)
    assert got == ['{"c": 3}'] and pipe.is_fifo()  # a device takes the same path (not tested on a real one: a
    # regression here would replace it for the whole machine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "link.json", "pipe", "real.json", "sub"]


def test_an_output_below_a_file_or_in_a_folder_that_cannot_be_made_is_one_line_before_the_work(
        tmp_path, recipe_path, teacher_ckpt, synth_root):
    """train, distill and teacher-cache with ``--out`` below a file, and eval with ``--metrics`` in a folder the
    system makes none in (/proc): one line, exit 1, before any work (before: a traceback, FileExistsError from the
    lock's folder; eval's only after the whole evaluation had run and printed its table)."""
    blocker = tmp_path / "f.json"
    blocker.write_text("{}")
    for args in (["train", "--pipeline", recipe_path, "--no-eval"],
                 ["teacher-cache", "--pipeline", recipe_path]):
        result = run(*args, "--out", blocker / "run", "--device", "cpu")
        assert_one_line_error(result, f"'{blocker / 'run'}'", f"expected a folder at '{blocker}' to hold it, got a file")
    assert blocker.read_text() == "{}"
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu", "--metrics",
                 "/proc/frs-no-such/m.json")
    assert_one_line_error(result, "eval --metrics '/proc/frs-no-such/m.json': cannot make the folder '/proc/frs-no-such'")
    assert "AP" not in result.stdout and "eval" not in result.stderr.splitlines()[0][:5]
    result = run("eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu", "--metrics", "-")
    assert_one_line_error(result, "eval --metrics: expected a file path, got '-' (to write to standard output, give "
                                  "/dev/stdout)")
    assert not Path("-").exists()


def test_an_output_file_where_no_file_can_be_made_is_refused_before_the_work(
        tmp_path, teacher_ckpt, synth_root, cache_path):
    """An output file in a folder that exists but takes no file (/proc): every command with an output file refuses
    it in one line naming the option and the path, before its work (before: eval ran the whole evaluation and
    printed its table, report printed its table, and only then "no file can be made there at /proc/.x.json.<pid>.tmp";
    visualize, export and convert mmdet likewise failed only at their write)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "iter": 0, "loss": 1.0}) + "\n")
    cases = [(["eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu", "--workers", "0",
               "--metrics"], "eval --metrics", ".json"),
             (["eval", "--checkpoint", teacher_ckpt, "--data", synth_root, "--device", "cpu", "--workers", "0",
               "--detections-out"], "eval --detections-out", ".json"),
             (["eval", "--cache", cache_path, "--metrics"], "eval --metrics", ".json"),
             (["report", run_dir, "--out"], "report --out", ".png"),
             (["visualize", "--cache", cache_path, "--out"], "visualize --out", ".png"),
             (["export", "--onnx", teacher_ckpt], "export OUT", ".onnx"),
             (["convert", "mmdet", teacher_ckpt, "--arch", "retinanet_resnet50_fpn_mmdet", "--out"],
              "convert mmdet --out", ".pt")]
    for args, what, suffix in cases:
        out = f"/proc/frs-no-file{suffix}"
        result = run(*args, out)
        assert_one_line_error(result, f"{what} '{out}': no file can be made there (write to a folder on a disk)")
        assert result.stdout == "" and ".tmp" not in result.stderr, (what, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, (what, result.stderr)  # no progress: no work ran


def test_an_output_that_takes_no_file_is_named_as_given_not_by_a_temporary_or_lock_name(
        tmp_path, recipe_path, monkeypatch):
    """The one line names the path the user gave and what failed there (before: train and teacher-cache said
    "cannot make its folder '/proc' (No such file or directory)" of a folder that exists; data synth named its
    hidden ``/proc/.s.<pid>.partial`` folder, a file write its ``.x.json.<pid>.tmp``; a full disk in data synth
    was a traceback)."""
    import errno

    from PIL import Image

    from frs_cli.errors import StorageError
    from frs_cli.files import write_json

    for args, what in ((["train", "--no-eval"], "--out"), (["teacher-cache"], "teacher-cache --out")):
        result = run(*args, "--pipeline", recipe_path, "--out", "/proc/frs-run", "--device", "cpu")
        assert_one_line_error(result, f"{what} '/proc/frs-run': no file can be made there (write to a folder on a disk)")
    result = run("data", "synth", "/proc/frs-synth", "--train", "2", "--val", "1")
    assert_one_line_error(result, "synth output '/proc/frs-synth': no file can be made there (write to a folder on a "
                                  "disk)")
    with pytest.raises(StorageError) as caught:
        write_json("/proc/frs-m.json", {})
    assert str(caught.value) == "/proc/frs-m.json: no file can be made there (write to a folder on a disk)"

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full)
    (tmp_path / "s").mkdir()
    result = run("data", "synth", tmp_path / "s" / "d", "--train", "2", "--val", "1", "--size", "64")
    assert_one_line_error(result, f"synth output '{tmp_path / 's' / 'd'}': the disk is full (no space left on "
                                  "device) (free space and run it again)")
    assert ".partial" not in result.stderr and list((tmp_path / "s").iterdir()) == []


def test_an_array_whose_metadata_is_damaged_is_missing_to_every_reader_and_resume_recreates_it(recipe_path, cache_path,
                                                                                              tmp_path):
    """An array's zarr.json cut mid-JSON or emptied to ``{}`` (before: a JSONDecodeError or zarr's
    MetadataValidationError traceback from ``cache info``, ``cache verify``, ``eval --cache`` and ``--resume``): the
    array reads as missing; info shows its table, verify names it, a reader refuses in one line, --resume recreates
    it and rewrites the views it held, giving the cache as written."""
    out = tmp_path / "c.zarr"
    shutil.copytree(cache_path, out)
    (out / "buckets" / "64x64" / "P3" / "features" / "zarr.json").write_text("{")
    (out / "buckets" / "64x64" / "P5" / "mask" / "zarr.json").write_text("{}")
    result = run("cache", "info", out)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "complete (48/48 views written)" in result.stdout
    result = run("cache", "verify", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert ("2 arrays the format requires are missing (buckets/64x64/P3/features, buckets/64x64/P5/mask)"
            in " ".join(result.output.split()))
    result = run("eval", "--cache", out)
    assert_one_line_error(result, "the metadata of array 'buckets/64x64/P3/features' is not readable, damaged "
                                  "(JSONDecodeError)", "--resume recreates it")
    result = run("teacher-cache", "--pipeline", recipe_path, "--out", out, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "recreated 2 arrays that were missing or damaged" in " ".join(result.stdout.split())
    assert verify_cache(str(out)).ok
    assert_same_cache_arrays(out, cache_path)
