"""The step target's rows across several cached-step runs: each row's ratio in every run and how often it met.

    python3 bench/verdicts_across.py RUN1/step.json RUN2/step.json ...

For every row the step target needs (``cache_verdicts.required_rows``), prints the cached / plain ratio of each
run (``cache_verdicts.verdicts``, so the same rule: a paired row against its own plain step, a miss by any
margin is missed) and the number of runs in which it met the target, then per encoding the median ratio of each
run. A row one run did not measure counts as not measured there, and not as met. ``--out`` writes the same as
JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_verdicts import required_rows, verdicts


def across(runs: list[dict]) -> dict:
    """Per required row, its ratio and verdict in each of ``runs`` (cached-step results); per dtype the medians."""
    judged = [{(r["dtype"], min(4096, r["views"]), r["page_cache"]): r
               for r in verdicts(run)["step"]} for run in runs]
    rows = []
    for dtype, size, state in required_rows():
        cells = [j.get((dtype, size, state), {"verdict": "not measured"}) for j in judged]
        rows.append({"dtype": dtype, "views": size, "page_cache": state,
                     "over_plain": [c.get("over_plain") for c in cells], "verdicts": [c["verdict"] for c in cells],
                     "met": sum(c["verdict"] == "met" for c in cells)})
    medians = {}
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        medians[dtype] = [statistics.median(v) if (v := [r["over_plain"][i] for r in rows
                                                         if r["dtype"] == dtype and r["over_plain"][i] is not None])
                          else None for i in range(len(runs))]
    return {"runs": [{k: run.get(k) for k in ("device", "date", "command")} for run in runs], "rows": rows,
            "median_over_plain": medians}


def _ratio(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def table(result: dict, names: list[str]) -> str:
    head = " | ".join(names)
    out = [f"| dtype | views | page cache | {head} | met |", "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in result["rows"]:
        cells = " | ".join(f"{_ratio(x)} ({v})" for x, v in zip(r["over_plain"], r["verdicts"]))
        out.append(f"| {r['dtype']} | {r['views']} | {r['page_cache']} | {cells} | {r['met']} of {len(names)} |")
    out += ["", f"| dtype | median cached / plain: {head} |", "|---|" + "---|" * len(names)]
    out += [f"| {d} | " + " | ".join(_ratio(x) for x in m) + " |" for d, m in result["median_over_plain"].items()]
    return "\n".join(out)


def label(path: Path) -> str:
    """A run's column: its session and call folders for ``.../<session>/<call>/step/step.json``, else the path."""
    parts = path.parts
    return "/".join(parts[-4:-2]) if len(parts) >= 4 and parts[-2] == "step" else str(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="step.json files of bench/cached_step.py")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    runs = []
    for path in args.runs:
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"verdicts_across: expected a cached_step.py step.json at {path}, got {exc}") from None
        if "cached" not in run or "pairs" not in run:
            raise SystemExit(f"verdicts_across: expected a cached_step.py step.json at {path}, found no 'cached' rows")
        runs.append(run)
    result = across(runs)
    result["sources"] = [str(p) for p in args.runs]
    print(table(result, [label(p) for p in args.runs]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
