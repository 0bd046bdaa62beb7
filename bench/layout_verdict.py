"""The pre-declared test of ``train.channels_last`` against the NCHW default (docs/RESULTS.md, section 2g).

    python3 bench/layout_verdict.py docs/results/layout_ab2_* [--out verdict.json]

Reads each directory's ``summary.json`` (from ``bench/frs_claim.py``), takes the FRS-from-cache students of the
declared seeds in both layouts (``b_frs_cache_sN`` and ``b_frs_cache+cl_sN``), and judges them by the rule fixed
before the first of them ran (``SEEDS``, ``MARGIN``, ``TEACHER_AP`` below; RESULTS 2g):

- d_N = AP(channels-last) - AP(NCHW) at the students' last evaluation, in AP points, for every declared seed;
- mean of d and its 95 % interval (Student t, n - 1 degrees of freedom);
- ``train.channels_last`` becomes the default when the interval's lower end is above -MARGIN and its upper end
  is at least 0 (no cost of MARGIN or more, and no cost shown); otherwise it stays off.

No verdict is given until every declared pair is in: with fewer the script reports which seeds are missing and
stops there (exit 0, verdict "incomplete"), so that no decision rests on a count chosen while looking at the
results. Seeds outside ``SEEDS`` are ignored, and a pair repeated in two directories must agree to be counted
once (it is the same deterministic run only if it does; a mismatch is an error). Every directory's teacher must
have ``TEACHER_AP``: the pairs are students of one teacher.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

SEEDS = tuple(range(100, 130))  # 30 pairs, never used by the earlier layout runs (seeds 0-12)
MARGIN = 0.5  # AP points
TEACHER_AP = 0.2615929266154036  # the claim bench's 24-epoch teacher (RESULTS 2f, every call since session 23)
# two-sided 95 % quantile of Student's t for n - 1 degrees of freedom, n = 2..30
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045}


def final_ap(run: dict) -> float | None:
    """A run's AP at its last evaluation, in points; None for a run that did not finish."""
    final = run.get("final") or {}
    return 100 * final["AP"] if "AP" in final else None


def collect(run_dirs: list[Path]) -> dict[str, dict[int, float]]:
    """AP by seed of each layout ('nchw', 'cl') over ``run_dirs``."""
    aps: dict[str, dict[int, float]] = {"nchw": {}, "cl": {}}
    for d in run_dirs:
        summary = json.loads((d / "summary.json").read_text())
        teacher = summary["runs"].get("teacher", {}).get("final", {}).get("AP")
        if teacher != TEACHER_AP:
            raise SystemExit(f"layout_verdict: {d}: expected the teacher at AP {TEACHER_AP}, got {teacher}")
        for name, run in summary["runs"].items():
            stem, _, seed = name.rpartition("_s")
            layout = {"b_frs_cache": "nchw", "b_frs_cache+cl": "cl"}.get(stem)
            ap = final_ap(run)
            if layout is None or not seed.isdigit() or int(seed) not in SEEDS or ap is None:
                continue
            seen = aps[layout].get(int(seed))
            if seen is not None and seen != ap:
                raise SystemExit(f"layout_verdict: {name} appears twice with different AP ({seen} and {ap})")
            aps[layout][int(seed)] = ap
    return aps


def judge(aps: dict[str, dict[int, float]]) -> dict:
    """The declared rule applied to ``aps`` (``collect``'s)."""
    both = sorted(set(aps["nchw"]) & set(aps["cl"]))
    missing = [s for s in SEEDS if s not in both]
    result = {"declared_seeds": [SEEDS[0], SEEDS[-1]], "margin": MARGIN, "pairs": len(both), "missing": missing}
    if missing:
        return result | {"verdict": "incomplete"}
    d = [aps["cl"][s] - aps["nchw"][s] for s in both]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = T975[len(d) - 1] * sd / math.sqrt(len(d))
    low, high = mean - half, mean + half
    on = low > -MARGIN and high >= 0
    return result | {
        "diff_by_seed": {s: round(x, 4) for s, x in zip(both, d)}, "mean": mean, "sd": sd, "interval": [low, high],
        "lower": sum(x < 0 for x in d), "nchw_mean": statistics.fmean(aps["nchw"][s] for s in both),
        "cl_mean": statistics.fmean(aps["cl"][s] for s in both),
        "verdict": "channels-last on by default" if on else "channels-last stays off",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = judge(collect(args.run_dirs))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if result["verdict"] == "incomplete":
        print(f"{result['pairs']} of {len(SEEDS)} declared pairs in; missing seeds {result['missing']}: no verdict")
        return 0
    low, high = result["interval"]
    print(f"{result['pairs']} pairs (seeds {SEEDS[0]}-{SEEDS[-1]}): channels-last - NCHW = {result['mean']:+.2f} AP, "
          f"95 % interval [{low:+.2f}, {high:+.2f}], sd {result['sd']:.2f}, lower in {result['lower']} of "
          f"{result['pairs']}; NCHW mean {result['nchw_mean']:.2f}, channels-last {result['cl_mean']:.2f}")
    print(f"rule: lower end above -{MARGIN} and upper end at least 0 -> {result['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
