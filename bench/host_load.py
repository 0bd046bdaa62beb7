"""Where the host's CPUs go while a command runs: its process tree by role, the kernel, and the page cache's dirt.

Runs the command after ``--`` and samples every ``--interval`` seconds, from ``/proc`` only:

- per role, the CPU cores in use: ``main_thread`` (the thread that drives the GPU: the command's own first
  thread), ``main_other`` (the command's other threads: pinning, zarr's event loop, ...), ``spawned`` (children
  started with the ``spawn`` method: teacher-cache's writer processes), ``forked`` (forked children: the
  DataLoader's workers), ``kernel`` (kernel threads: writeback, page reclaim);
- the whole machine: busy and iowait shares of all cores;
- ``/proc/meminfo``'s Dirty and Writeback (MB): page-cache data not yet on the disk.

Writes every sample and a summary (mean cores per role over the samples, the peak of dirty data) to ``--out``
as JSON and prints the summary line; exits with the command's status. Linux only:

    python3 bench/host_load.py --out load.json -- python3 bench/teacher_cache_rate.py --out tcr.json --work /tmp/t
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROLES = ("main_thread", "main_other", "spawned", "forked", "other_child", "kernel")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MEMINFO = Path("/proc/meminfo")


def meminfo_kb(*keys: str) -> dict[str, int] | None:
    """``keys`` of /proc/meminfo in kB, as the file gives them (in its order); None where there is no such file
    (not Linux)."""
    try:
        text = MEMINFO.read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            found[name] = int(rest.split()[0])
    return found


def meminfo_gb(*keys: str) -> dict[str, float] | None:
    """``keys`` of /proc/meminfo in GB (decimal); None where there is no /proc/meminfo (not Linux)."""
    kb = meminfo_kb(*keys)
    return None if kb is None else {name: value * 1024 / 1e9 for name, value in kb.items()}


def _stat(path: str) -> tuple[int, int] | None:
    """(parent pid, user + system clock ticks) of one /proc stat file; None if it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def role_ticks(root: int, roles: dict[int, str]) -> dict[str, int]:
    """Clock ticks used so far per role by ``root``'s process tree and by kernel threads. ``roles`` caches each
    child's role by pid (a role is decided once, when the child is first seen)."""
    parents, ticks = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(f"/proc/{name}/stat")
            if st is not None:
                parents[int(name)], ticks[int(name)] = st
    out = dict.fromkeys(ROLES, 0)
    for pid, parent in parents.items():
        if parent == 2 or pid == 2:  # kthreadd and its threads
            out["kernel"] += ticks[pid]
    tree, frontier = set(), [root]
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    while frontier:
        pid = frontier.pop()
        tree.add(pid)
        frontier += children.get(pid, [])
    for pid in tree:
        if pid == root:
            first = _stat(f"/proc/{root}/task/{root}/stat")
            first_ticks = first[1] if first else 0
            out["main_thread"] += first_ticks
            out["main_other"] += ticks[pid] - first_ticks
            continue
        if pid not in roles:
            cmd = _cmdline(pid)
            roles[pid] = ("spawned" if "spawn_main" in cmd else "other_child" if "resource_tracker" in cmd
                          else "forked" if cmd == _cmdline(root) else "other_child")
        out[roles[pid]] += ticks[pid]
    return out


def machine() -> tuple[list[int], dict[str, float]]:
    """The all-CPU line of /proc/stat (ticks) and Dirty / Writeback of /proc/meminfo (MB)."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    mem = {name.lower() + "_mb": kb / 1024 for name, kb in (meminfo_kb("Dirty", "Writeback") or {}).items()}
    return cpu, mem


class Sampler:
    """Differences between consecutive readings of ``root``'s tree and the machine, as samples."""

    def __init__(self, root: int):
        self.root, self.roles = root, {}
        self.samples: list[dict] = []
        self._t0 = time.perf_counter()
        self._last = (self._t0, role_ticks(root, self.roles), machine()[0])

    def sample(self) -> dict:
        now, ticks, (cpu, mem) = time.perf_counter(), role_ticks(self.root, self.roles), machine()
        t_prev, ticks_prev, cpu_prev = self._last
        seconds = max(now - t_prev, 1e-6)
        d = [a - b for a, b in zip(cpu, cpu_prev)]
        total = max(sum(d), 1)
        idle, iowait = d[3], d[4] if len(d) > 4 else 0
        row = {"t": round(now - self._t0, 3), "wall": time.time(),
               "cores": {r: max(ticks[r] - ticks_prev[r], 0) / TICK / seconds for r in ROLES},
               "busy_share": (total - idle - iowait) / total, "iowait_share": iowait / total, **mem}
        self._last = (now, ticks, cpu)
        self.samples.append(row)
        return row


def summary(samples: list[dict]) -> dict:
    """Mean cores per role and machine shares over ``samples``; the peak of dirty data."""
    n = max(len(samples), 1)
    return {"samples": len(samples),
            "mean_cores": {r: sum(s["cores"][r] for s in samples) / n for r in ROLES},
            "busy_share": sum(s["busy_share"] for s in samples) / n,
            "iowait_share": sum(s["iowait_share"] for s in samples) / n,
            "dirty_mb_max": max((s.get("dirty_mb", 0.0) for s in samples), default=0.0),
            "writeback_mb_max": max((s.get("writeback_mb", 0.0) for s in samples), default=0.0)}


def by_write(samples: list[dict], rates: dict) -> dict:
    """Per teacher-cache write of a ``bench/teacher_cache_rate.py`` result (``rates``, whose writes carry their
    ``wall`` span), the summary of the samples taken within it: ``{"teacher/dtype/key": summary}``."""
    out = {}
    for tname, row in rates.get("teachers", {}).items():
        for dtype, writes in row.get("caches", {}).items():
            for key, w in writes.items():
                if "wall" in w:
                    start, end = w["wall"]
                    within = [s for s in samples if start <= s["wall"] <= end]
                    out[f"{tname}/{dtype}/{key}"] = {**summary(within), "views_s": w["views_s"]}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("host_load: expected the command after `--`, got none", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--by-write", type=Path, default=None,
                   help="a teacher_cache_rate.py result the command writes: the summary of each of its writes")
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        print("host_load: expected a command after `--`, got nothing", file=sys.stderr)
        return 2
    proc = subprocess.Popen(command)
    sampler = Sampler(proc.pid)
    while proc.poll() is None:
        time.sleep(args.interval)
        if proc.poll() is None:
            sampler.sample()
    result = {"command": command, "interval": args.interval, "cpus": os.cpu_count(), "returncode": proc.returncode,
              "summary": summary(sampler.samples), "samples": sampler.samples}
    lines = [("all", result["summary"])]
    if args.by_write is not None and args.by_write.exists():
        result["by_write"] = by_write(sampler.samples, json.loads(args.by_write.read_text()))
        lines += list(result["by_write"].items())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, s in lines:
        cores = ", ".join(f"{r} {c:.2f}" for r, c in s["mean_cores"].items())
        print(f"host_load {name}: {s['samples']} samples; mean cores: {cores}; machine busy {s['busy_share']:.0%}, "
              f"iowait {s['iowait_share']:.0%}; dirty max {s['dirty_mb_max']:.0f} MB", flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
