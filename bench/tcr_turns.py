"""The writes of one ``bench/teacher_cache_rate.py`` result, turn by turn and per setting, with their verdicts.

    python3 bench/tcr_turns.py TCR_JSON [--load HOST_LOAD_JSON] [--out OUT_JSON]

Each write's key is ``<variant>_w<writer processes>_<turn>`` (``--variants`` and ``--write-processes`` in turn).
Prints two tables:

- every write in turn order: views/s and its ratio to pure inference (the teacher's eager autocast forward, as
  the issue's target reads it), the verdict (>= 0.9, a miss by any margin is missed), the steady rate's ratio
  (the second half of the hand-overs: the pace a long write settles to) and its verdict, the main thread's
  waits (``stage_seconds``), the cache's MB a view on disk and the peak of the host's unwritten page cache
  over the write (``dirty_pages``, GB; "–" in results from before they were recorded), and with ``--load``
  (``bench/host_load.py --by-write``) the cores of the main thread, the writer processes and the loader's
  workers over the write;
- per teacher, encoding, variant and writer count: the medians of both ratios, and how many writes met each.

``--out`` writes the same rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_cache_rate import TARGET, verdicts

KEY = re.compile(r"^(?P<variant>\w+?)_w(?P<writers>\w+)_(?P<turn>\d+)$")


def writes(rates: dict, load: dict | None = None) -> list[dict]:
    """One row per write of ``rates``, in turn order within each teacher and encoding."""
    rows = []
    per_write = (load or {}).get("by_write", {})
    for teacher, row in rates["teachers"].items():
        for dtype, caches in row.get("caches", {}).items():
            for key, c in caches.items():
                m = KEY.match(key)
                variant, turn = (m["variant"], int(m["turn"])) if m else (key, 0)
                cores = per_write.get(f"{teacher}/{dtype}/{key}", {}).get("mean_cores", {})
                # the verdicts teacher_cache_rate.py stored with the write; computed alike for files without them
                v = rates.get("target_0_9", {}).get(f"{teacher}/{dtype}", {}).get(key) or verdicts(c)
                rows.append({
                    "teacher": teacher, "dtype": dtype, "variant": variant, "turn": turn,
                    "writers": c.get("write_processes"), "views": c["views"], "views_s": c["views_s"],
                    "over_inference": v["over_inference"], "met": v["met"],
                    "steady_over_inference": v["steady_over_inference"], "steady_met": v["steady_met"],
                    "stage_seconds": c.get("stage_seconds", {}), "loop_seconds": c.get("loop_seconds"),
                    "mb_per_view": c.get("mb_per_view"), "dirty_peak_gb": (c.get("dirty_pages") or {}).get("peak_gb"),
                    "cores": {k: cores[k] for k in ("main_thread", "spawned", "forked") if k in cores}})
    return sorted(rows, key=lambda r: (r["teacher"], r["dtype"], r["turn"]))


def settings(rows: list[dict]) -> list[dict]:
    """Per (teacher, dtype, variant, writers): the writes' medians and counts of verdicts."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["teacher"], r["dtype"], r["variant"], r["writers"]), []).append(r)
    out = []
    for (teacher, dtype, variant, writers), rs in groups.items():
        steady = [r["steady_over_inference"] for r in rs if r["steady_over_inference"] is not None]
        out.append({"teacher": teacher, "dtype": dtype, "variant": variant, "writers": writers, "writes": len(rs),
                    "turns": [r["turn"] for r in rs],
                    "median_over_inference": statistics.median(r["over_inference"] for r in rs),
                    "met": sum(r["met"] for r in rs),
                    "median_steady_over_inference": statistics.median(steady) if steady else None,
                    "steady_met": sum(r["steady_met"] for r in rs)})
    return out


def _maybe(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rates", type=Path)
    p.add_argument("--load", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        rates = json.loads(args.rates.read_text())
        load = json.loads(args.load.read_text()) if args.load else None
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"tcr_turns: expected teacher_cache_rate.py JSON (and host_load.py JSON), got {exc}") from None
    if "teachers" not in rates:
        raise SystemExit(f"tcr_turns: expected a teacher_cache_rate.py result in {args.rates}, found no 'teachers'")
    rows = writes(rates, load)
    print(f"{rates.get('device', '?')}, {rates.get('date', '?')}: {args.rates}")
    host = rates.get("host") or {}
    if "dirty_ratio" in host:  # the kernel slows writers between the two limits (of the memory it may fill)
        print(f"host: vm.dirty_background_ratio {host.get('dirty_background_ratio')}, vm.dirty_ratio "
              f"{host['dirty_ratio']}, {_maybe(host.get('mem_available_gb'), 1)} GB available at the start")
    print()
    print(f"| teacher | dtype | turn | variant | writers | views | views/s | / inference (>= {TARGET}) | verdict "
          "| steady / inference | verdict | loader wait s | writer wait s | GPU wait s | loop s | MB a view "
          "| dirty peak GB | cores: main thread, writers, loader |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        st, c = r["stage_seconds"], r["cores"]
        steady = r["steady_over_inference"]
        cores = ", ".join(f"{c[k]:.2f}" for k in ("main_thread", "spawned", "forked") if k in c) or "–"
        gpu = st.get("gpu_wait")
        print(f"| {r['teacher']} | {r['dtype']} | {r['turn']} | {r['variant']} | {r['writers']} | {r['views']} "
              f"| {r['views_s']:.1f} | {r['over_inference']:.2f} | {_verdict(r['met'])} "
              f"| {_maybe(steady)} | {_verdict(r['steady_met'])} "
              f"| {st.get('loader_wait', 0):.2f} | {st.get('backpressure', 0):.2f} "
              f"| {_maybe(gpu)} | {r['loop_seconds']:.2f} | {_maybe(r['mb_per_view'])} "
              f"| {_maybe(r['dirty_peak_gb'], 1)} | {cores} |")
    print()
    print("| teacher | dtype | variant | writers | turns | median / inference | met | median steady / inference "
          "| steady met |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups = settings(rows)
    for g in groups:
        steady = g["median_steady_over_inference"]
        print(f"| {g['teacher']} | {g['dtype']} | {g['variant']} | {g['writers']} | {', '.join(map(str, g['turns']))} "
              f"| {g['median_over_inference']:.2f} | {g['met']} of {g['writes']} "
              f"| {_maybe(steady)} | {g['steady_met']} of {g['writes']} |")
    if args.out:
        args.out.write_text(json.dumps({"source": str(args.rates), "writes": rows, "settings": groups}, indent=1))


if __name__ == "__main__":
    main()
