"""A ``bench/cached_step.py`` result rebuilt from the lines it printed, for a run whose ``step.json`` was lost.

cached_step prints every figure as it is measured: each teacher's rates (``<teacher> {...}``), the disk line, the
plain and online steps of each pair (``<pair> <mode> {...}``) and each cached, worker-sweep or zarr row as one JSON
line. This script puts them back into step.json's shape, so ``bench/cache_verdicts.py`` reads them as it reads a
step.json. The disk rates keep the log's whole MB/s; the teachers' lines are their rates on the rate split as
printed, before the full caches were written (no ``full_cache``; ``mb_per_view`` is the split's); skipped rows
are not printed, so they are absent (the verdicts count them as not measured either way). What the log does not
hold (the device, date and command) comes from the options; ``rebuilt_from_log`` marks the result.

    python3 bench/step_from_log.py CALL/step.log --device "NVIDIA H200" --date 2026-12-03 \\
        --command-file CALL/command.sh --out CALL/step/step.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

DISK = re.compile(r"disk: write (\d+) MB/s, read (\d+) MB/s \(page cache dropped: (True|False)\)")
TEACHER = re.compile(r"([A-Za-z0-9_]+) (\{.*\})")
PAIR = re.compile(r"(\S+-\S+) (plain|online) (\{.*\})")


def parse(lines) -> dict:
    """step.json's content from cached_step's printed ``lines`` (other lines, such as warnings, are skipped)."""
    res: dict = {"teachers": {}, "pairs": {}, "cached": [], "worker_sweep": [], "rebuilt_from_log": True}
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith("{"):
            row = json.loads(line)
            if row.get("read") == "zarr":
                res["zarr_path"] = row
            elif "mb_per_view" in row:
                res["cached"].append(row)
            else:
                res["worker_sweep"].append(row)
        elif m := DISK.fullmatch(line):
            res["disk"] = {"write_mb_s": float(m[1]), "read": {"mb_s": float(m[2]), "cold": m[3] == "True"}}
        elif m := PAIR.fullmatch(line):
            res["pairs"].setdefault(m[1], {})[m[2]] = ast.literal_eval(m[3])
        elif m := TEACHER.fullmatch(line):
            res["teachers"][m[1]] = ast.literal_eval(m[2])
    if not res["pairs"]:
        raise SystemExit("step_from_log: expected cached_step's printed lines (a '<pair> plain {...}' line at least), "
                         "found none")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--command-file", type=Path, required=True, help="the script the call ran (its command line)")
    args = p.parse_args()
    res = parse(args.log.read_text().splitlines())
    res.update(device=args.device, date=args.date, command=args.command_file.read_text().strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{args.out}: {len(res['cached'])} cached rows, pairs {', '.join(res['pairs'])}")


if __name__ == "__main__":
    main()
