"""Diagnosis (not shipped): where a teacher-cache writer process spends the time between its stop and its exit.

Child side: timestamps (time.time()) at serve entry, first task, last result, the stop, serve's return, the
first atexit handler and the last one (registered before zarr is imported, so it runs after zarr's cleanup).
Workers with an even index end with os._exit(0) after flushing their results queue when DIAG_FAST_EXIT=1
(an A/B inside one write). Parent side: per worker the exit time (its sentinel), and, while any is alive
after close starts, samples of /proc/<pid>/{stat,wchan,stack} and each thread's state, and /proc/meminfo's
Dirty/Writeback.
"""

import atexit
import json
import os
import time

DIR = os.environ.get("DIAG_DIR", "/tmp/diag_exit")


def _log(event: str, **kw) -> None:
    os.makedirs(DIR, exist_ok=True)
    with open(os.path.join(DIR, f"child_{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), **kw}) + "\n")


_is_child = False


def _atexit_last() -> None:
    if _is_child:
        _log("atexit_last")


atexit.register(_atexit_last)  # before zarr's import in this process: runs after zarr's cleanup_resources


def serve_timed(path, storage_options, tasks, results) -> None:
    global _is_child
    _is_child = True
    import multiprocessing as mp

    name = mp.current_process().name
    index = int(name.rsplit("-", 1)[-1])
    fast = os.environ.get("DIAG_FAST_EXIT") == "1" and index % 2 == 0
    _log("serve_entry", name=name, fast=fast)
    from frs_cli.cache import shard_writer

    class TasksProxy:
        def __init__(self, q):
            self.q, self.first = q, True

        def get(self, timeout=None):
            task = self.q.get(timeout=timeout)
            if task is None:
                _log("stop")
            elif self.first:
                self.first = False
                _log("first_task")
            return task

    class ResultsProxy:
        def __init__(self, q):
            self.q = q

        def put(self, item):
            self.q.put(item)
            _log("result")

    atexit.register(lambda: _log("atexit_first"))  # runs before zarr's cleanup_resources
    shard_writer._serve(path, storage_options, TasksProxy(tasks), ResultsProxy(results))
    _log("serve_return")
    if fast:
        results.close()
        results.join_thread()
        _log("os_exit")
        os._exit(0)


def _proc_sample(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/stat") as f:
            out["state"] = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/wchan") as f:
            out["wchan"] = f.read()
        try:
            with open(f"/proc/{pid}/stack") as f:
                out["stack"] = [line.split()[-1] for line in f.read().splitlines()][:8]
        except OSError:
            pass
        threads = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                    threads[tid] = f"{st}:{f.read()}"
            except OSError:
                pass
        out["threads"] = threads
    except OSError as exc:
        out["gone"] = str(exc)
    return out


def _meminfo() -> dict:
    keep = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            if k in ("Dirty", "Writeback", "Cached", "MemFree"):
                keep[k] = v.strip()
    return keep


_closes = [0]


def install() -> None:
    import threading
    from multiprocessing.connection import wait as conn_wait

    from frs_cli.cache import shard_writer

    shard_writer._serve = serve_timed
    original = shard_writer.WriterProcesses.close

    def close(self, wait: bool = True) -> None:
        n = _closes[0]
        _closes[0] += 1
        record = {"close_start": time.time(), "pids": {p.pid: p.name for p in self._procs}, "exits": {},
                  "samples": [], "meminfo_start": _meminfo()}
        done = threading.Event()

        def monitor():
            alive = {p.sentinel: p for p in self._procs}
            t_end = time.time() + 30
            next_sample = time.time()
            while alive and time.time() < t_end:
                for s in conn_wait(list(alive), timeout=0.05):
                    record["exits"][alive[s].name] = time.time()
                    del alive[s]
                if time.time() >= next_sample and alive:
                    next_sample = time.time() + 0.1
                    record["samples"].append({"t": time.time(), "meminfo": _meminfo(),
                                              "procs": {p.name: _proc_sample(p.pid) for p in alive.values()}})
            done.set()

        threading.Thread(target=monitor, daemon=True).start()
        try:
            original(self, wait)
        finally:
            record["close_end"] = time.time()
            record["seconds"] = dict(self.seconds)
            done.wait(timeout=35)
            os.makedirs(DIR, exist_ok=True)
            with open(os.path.join(DIR, f"parent_close_{n}.json"), "w") as f:
                json.dump(record, f, indent=1)

    shard_writer.WriterProcesses.close = close
