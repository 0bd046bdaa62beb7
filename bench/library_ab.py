"""Teacher-cache rates of library versions run in turn (an A/B within one call), as a table from the raw files.

    python3 bench/library_ab.py DIR [--base LABEL]

``DIR`` holds one ``bench/teacher_cache_rate.py`` result per turn, named ``tcr_<turn>_<label>.json`` (turn: the
order they ran in; label: the library version). Prints, per teacher, encoding and variant, each version's rates
in turn order, their median, the median over pure inference (each turn's own inference rate), the median seconds
the main thread waited on the write side (``backpressure``), the median steady rate over inference (the second
half of each write's hand-overs, a long write's pace; "–" for results without it) and the median ratio to
``--base`` (default: the version of the first turn). Writes the same figures to ``DIR/library_ab.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

NAME = re.compile(r"tcr_(\d+)_(\w+)\.json$")


def load_turns(folder: Path) -> list[tuple[int, str, dict]]:
    """``(turn, label, result)`` of every ``tcr_<turn>_<label>.json`` in ``folder``, in turn order."""
    turns = []
    for path in folder.iterdir():
        m = NAME.search(path.name)
        if m:
            turns.append((int(m.group(1)), m.group(2), json.loads(path.read_text())))
    if not turns:
        raise SystemExit(f"library_ab: expected tcr_<turn>_<label>.json files in {folder}, found none")
    return sorted(turns, key=lambda t: t[0])


def summarise(turns: list[tuple[int, str, dict]], base: str) -> list[dict]:
    """One row per (teacher, dtype, variant, label): rates in turn order, their medians and the ratio to ``base``."""
    runs: dict[tuple, list[dict]] = {}
    for _, label, res in turns:
        for teacher, t in res["teachers"].items():
            for dtype, variants in t["caches"].items():
                for variant, r in variants.items():
                    runs.setdefault((teacher, dtype, variant, label), []).append(r)
    medians = {key: statistics.median(r["views_s"] for r in rs) for key, rs in runs.items()}
    labels = list(dict.fromkeys(label for _, label, _ in turns))
    rows = []
    order = sorted(runs, key=lambda key: (*key[:3], labels.index(key[3])))  # versions in the order they first ran
    for (teacher, dtype, variant, label), rs in ((key, runs[key]) for key in order):
        ref = medians.get((teacher, dtype, variant, base))
        rows.append({"teacher": teacher, "dtype": dtype, "variant": variant, "library": label,
                     "views_s": [r["views_s"] for r in rs],
                     "median_views_s": medians[teacher, dtype, variant, label],
                     "median_over_inference": statistics.median(r["over_inference"] for r in rs),
                     "median_backpressure_s": statistics.median(r["stage_seconds"]["backpressure"] for r in rs),
                     # the rate over the second half of each write's hand-overs (absent in results before it)
                     "median_steady_over_inference": statistics.median(r["steady_over_inference"] for r in rs)
                     if all("steady_over_inference" in r for r in rs) else None,
                     "over_base": None if ref is None else medians[teacher, dtype, variant, label] / ref})
    return rows


def table(rows: list[dict], base: str) -> str:
    header = ("| teacher | dtype | variant | library | views/s, turn order | median views/s | median / inference "
              f"| median steady / inference | median main-thread wait on the write side, s | median / {base} |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["over_base"] is None else f"{r['over_base']:.2f}"
        steady = r.get("median_steady_over_inference")
        rates = ", ".join(f"{v:.1f}" for v in r["views_s"])
        lines.append(f"| {r['teacher']} | {r['dtype']} | {r['variant']} | {r['library']} | {rates} | "
                     f"{r['median_views_s']:.1f} | {r['median_over_inference']:.2f} | "
                     f"{'–' if steady is None else f'{steady:.2f}'} | {r['median_backpressure_s']:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--base", default=None, help="the version the others are divided by (default: the first turn's)")
    args = ap.parse_args(argv)
    turns = load_turns(args.folder)
    base = args.base or turns[0][1]
    rows = summarise(turns, base)
    (args.folder / "library_ab.json").write_text(json.dumps({"base": base, "rows": rows}, indent=1))
    print(table(rows, base))


if __name__ == "__main__":
    main()
