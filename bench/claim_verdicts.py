"""Verdicts of a claim run (bench/frs_claim.py) against issue 12's targets, computed from its raw files.

    python3 bench/claim_verdicts.py docs/results/claim_2026-12-02_h200

Reads ``summary.json`` (val AP per run) and ``metrics/*.metrics.jsonl`` (every iteration's loss terms), writes
``verdicts.json`` beside them and prints the tables. Targets:
- outcome: the paired (same seed) FRS-from-cache minus FRS-online AP has a mean within +-0.5 AP and a 95 %
  interval (Student t) that contains 0; the worst seed of each FRS variant is within 3 AP of its mean; FRS from
  the cache >= GT-box imitation on every seed both ran;
- stability: in at least 10 FRS runs, no FRS term above 3x its median over the previous 50 iterations.
A target missed by any margin is missed.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
KINDS = {"a_alone": "student alone", "b_frs_cache": "FRS from cache", "c_frs_online": "FRS online",
         "d_gt_boxes": "GT-box imitation"}


def spikes(path: Path, window: int = 50, factor: float = 3.0) -> dict:
    """Per FRS term: the largest value, and the iterations where it exceeds ``factor`` x the median of the
    ``window`` iterations before."""
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if "iter" in r]
    out = {}
    for term in (k for k in rows[0] if k.startswith("frs_")):
        values = [r[term] for r in rows]
        hits = []
        for i in range(window, len(values)):
            med = statistics.median(values[i - window:i])
            if med > 0 and values[i] > factor * med:
                hits.append({"iter": rows[i]["iter"], "value": values[i], "median": med})
        out[term] = {"max": max(values), "spikes": hits}
    return out


def main(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    ap: dict[str, dict[int, float]] = {k: {} for k in KINDS}
    for name, run in summary["runs"].items():
        kind, _, seed = name.rpartition("_s")
        if kind in KINDS and run.get("final"):
            ap[kind][int(seed)] = 100 * run["final"]["AP"]
    stats = {}
    for kind, per_seed in ap.items():
        values = list(per_seed.values())
        stats[kind] = {"seeds": per_seed, "n": len(values),
                       "mean": statistics.mean(values) if values else None,
                       "sd": statistics.stdev(values) if len(values) > 1 else None,
                       "worst": min(values) if values else None}
    paired = sorted(set(ap["b_frs_cache"]) & set(ap["c_frs_online"]))
    diffs = [ap["b_frs_cache"][s] - ap["c_frs_online"][s] for s in paired]
    diff = {"seeds": paired, "values": diffs}
    if len(diffs) > 1:
        m, sd = statistics.mean(diffs), statistics.stdev(diffs)
        half = T975[len(diffs) - 2] * sd / len(diffs) ** 0.5
        diff.update(mean=m, sd=sd, ci95=[m - half, m + half])
    runs = {}
    for f in sorted((run_dir / "metrics").glob("*.metrics.jsonl")):
        name = f.name.split(".")[0]
        if name.rpartition("_s")[0] in ("b_frs_cache", "c_frs_online", "d_gt_boxes"):
            runs[name] = spikes(f)
    spiked = sorted(n for n, terms in runs.items() if any(t["spikes"] for t in terms.values()))
    verdicts = {}
    if "ci95" in diff:
        ok = abs(diff["mean"]) <= 0.5 and diff["ci95"][0] <= 0 <= diff["ci95"][1]
        verdicts["cached - online: mean within 0.5 AP, 95 % interval holds 0"] = "met" if ok else "missed"
    for kind in ("b_frs_cache", "c_frs_online"):
        st = stats[kind]
        if st["n"]:
            verdicts[f"{KINDS[kind]}: worst seed within 3 AP of the mean"] = \
                "met" if st["mean"] - st["worst"] <= 3.0 else "missed"
    both = sorted(set(ap["b_frs_cache"]) & set(ap["d_gt_boxes"]))
    if both:
        verdicts["FRS from cache >= GT-box imitation on every paired seed"] = \
            "met" if all(ap["b_frs_cache"][s] >= ap["d_gt_boxes"][s] for s in both) else "missed"
    verdicts["no spike in at least 10 FRS runs"] = "met" if len(runs) >= 10 and not spiked else "missed"
    result = {"source": str(run_dir), "device": summary.get("device"), "date": summary.get("date"),
              "ap": stats, "cached_minus_online": diff, "fresh_runs_checked_for_spikes": sorted(runs),
              "spiked": spiked, "loss_peaks": runs, "verdicts": verdicts}
    (run_dir / "verdicts.json").write_text(json.dumps(result, indent=1))
    print("| variant | n | AP per seed | mean ± sd | worst |\n|---|---|---|---|---|")
    for kind, st in stats.items():
        if st["n"]:
            seeds = ", ".join(f"{s}: {v:.1f}" for s, v in sorted(st["seeds"].items()))
            sd = f"{st['sd']:.1f}" if st["sd"] is not None else "–"
            print(f"| {KINDS[kind]} | {st['n']} | {seeds} | {st['mean']:.1f} ± {sd} | {st['worst']:.1f} |")
    if "ci95" in diff:
        print(f"\npaired cached − online over seeds {paired}: {diff['mean']:+.2f} AP, 95 % interval "
              f"[{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}]")
    print(f"\nFRS runs checked for spikes: {len(runs)}; spiked: {spiked or 'none'}")
    for name, terms in runs.items():
        print(f"  {name}: " + ", ".join(f"{t} max {v['max']:.3g} ({len(v['spikes'])} spike iterations)"
                                       for t, v in terms.items()))
    print()
    for target, verdict in verdicts.items():
        print(f"{verdict:7s} {target}")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]))
