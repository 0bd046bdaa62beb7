"""Verdicts of a claim run (bench/frs_claim.py) against issue 12's targets, computed from its raw files.

    python3 bench/claim_verdicts.py docs/results/claim_2026-12-02_h200 [MORE_RUN_DIRS ...] [--judge VARIANT]

Reads ``summary.json`` (val AP per run) and ``metrics/*.metrics.jsonl`` (every iteration's loss terms) of each
directory, writes ``verdicts.json`` into the last one and prints the tables. Several directories pool their runs
only when their teachers reached the same AP to the last digit (the runs are deterministic: one teacher); a run
present in two of them is a reproduction check. Runs of a named variant (``b_frs_cache+fw300``, see
``bench/frs_claim.py --variant``) are reported apart, with their loss peaks where the warm-ups end, and, where
the plain run of the same seed exists, how many iterations the two logged identically. Each variant is also compared with the plain runs of its
kind seed by seed (mean difference, 95 % interval; verdicts apart). ``--judge VARIANT`` judges
that variant's FRS runs (``b_frs_cache+VARIANT``, ``c_frs_online+VARIANT``) in place of the plain FRS runs,
against the plain baselines (student alone, GT-box imitation), into ``verdicts_VARIANT.json``. Targets:
- outcome: the paired (same seed) FRS-from-cache minus FRS-online AP has a mean within +-0.5 AP and a 95 %
  interval (Student t) that contains 0; the worst seed of each FRS variant is within 3 AP of its mean; FRS from
  the cache >= GT-box imitation on every seed both ran;
- stability: in at least 10 FRS runs, no FRS term above 3x its median over the previous 50 iterations.
A target missed by any margin is missed.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
KINDS = {"a_alone": "student alone", "b_frs_cache": "FRS from cache", "c_frs_online": "FRS online",
         "d_gt_boxes": "GT-box imitation"}


def spikes(path: Path, window: int = 50, factor: float = 3.0) -> dict:
    """Per FRS term: the largest value, and the iterations where it exceeds ``factor`` x the median of the
    ``window`` iterations before."""
    logged = rows(path)
    out = {}
    for term in (k for k in logged[0] if k.startswith("frs_")):
        values = [r[term] for r in logged]
        hits = []
        for i in range(window, len(values)):
            med = statistics.median(values[i - window:i])
            if med > 0 and values[i] > factor * med:
                hits.append({"iter": logged[i]["iter"], "value": values[i], "median": med})
        out[term] = {"max": max(values), "spikes": hits}
    return out


def classification_bump(path: Path, warmup: int = 100, before: int = 15, after: int = 40) -> dict | None:
    """How far the student's own classification loss rises where the warm-ups end: its largest value over the
    ``after`` iterations from ``warmup`` on, over its smallest in the ``before`` iterations up to it (1.0: no
    rise). None for a run too short to tell."""
    cls = {r["iter"]: r["classification"] for r in rows(path)}
    low = [cls[i] for i in range(warmup - before, warmup) if i in cls]
    high = [(cls[i], i) for i in range(warmup, warmup + after) if i in cls]
    if not low or not high:
        return None
    peak, at = max(high)
    return {"ratio": peak / min(low), "peak": peak, "iter": at}


def warmup_of(run_dir: Path) -> int:
    """The students' LR warm-up in the recipe a claim call wrote (``claim.toml``), 100 when it is not there."""
    import tomllib

    recipe = run_dir / "claim.toml"
    return tomllib.loads(recipe.read_text()).get("train", {}).get("warmup_iters", 100) if recipe.exists() else 100


def load(run_dirs: list[Path]) -> tuple[dict, dict[str, dict], dict[str, Path], dict[str, list[float]]]:
    """Pool the runs of ``run_dirs``: (first summary, runs by name, metrics file by name, APs of repeated runs)."""
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    teachers = [s["runs"].get("teacher", {}).get("final", {}).get("AP") for s in summaries]
    if len(set(teachers)) != 1:
        raise SystemExit(f"claim_verdicts: expected one teacher (the same AP in every directory), got {teachers}")
    runs, metrics, repeats = {}, {}, {}
    for d, summary in zip(run_dirs, summaries):
        for name, run in summary["runs"].items():
            if name in runs and run.get("final") and runs[name].get("final"):
                repeats.setdefault(name, [100 * runs[name]["final"]["AP"]]).append(100 * run["final"]["AP"])
            runs.setdefault(name, run)
        for f in sorted((d / "metrics").glob("*.metrics.jsonl")):
            name = f.name.split(".")[0]
            if name not in metrics or f.with_name(f"{name}.sharpness.jsonl").exists():  # prefer a probed repeat
                metrics[name] = f
            runs.setdefault(name, {})  # a run cut at the deadline has metrics but no summary
    return summaries[0], runs, metrics, repeats


def rows(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "iter" in r]


def sharpness(metrics: Path, probe: Path, bound: float = 3.8) -> dict:
    """From ``bench/sharpness_probe.py``'s log: the largest ``lr * 2 * w * alpha`` times the lower and upper bound
    of the adapters' sharpness (over levels), and the first iteration where the upper bound passes ``bound``
    (``2 * (1 + momentum)``, momentum 0.9)."""
    lr = {r["iter"]: r["lr"] for r in rows(metrics)}
    lo, hi, first = [], [], None
    for r in rows(probe):
        if r["iter"] not in lr:
            continue
        k = lr[r["iter"]] * 2 * r["w"] * r["alpha"]
        lo.append(k * max(r["lo"]))
        hi.append(k * max(r["hi"]))
        if first is None and hi[-1] > bound:
            first = r["iter"]
    return {"lr_lambda_lo_max": max(lo, default=None), "lr_lambda_hi_max": max(hi, default=None),
            "first_iter_hi_above_bound": first}


def variant_report(name: str, run: dict, metrics: dict[str, Path]) -> dict:
    """A variant run: its AP per evaluation, the largest GT and FRS terms where the warm-ups end (iterations
    90-140), spikes, the sharpness bounds where probed, and the iterations it logged exactly as the plain run
    of the same seed (if any)."""
    out = {"ap": [100 * h["AP"] for h in run.get("history") or []]}
    if name not in metrics:
        return out
    probe = metrics[name].with_name(f"{name}.sharpness.jsonl")
    if probe.exists():
        out["sharpness"] = sharpness(metrics[name], probe)
    mine = rows(metrics[name])
    window = [r for r in mine if 90 <= r["iter"] <= 140]
    terms = [k for k in ("classification", "frs_feature") if mine and k in mine[0]]  # a student alone has no FRS term
    out["peak_90_140"] = {k: max(r[k] for r in window) for k in terms if window}
    out["spikes"] = {t: len(v["spikes"]) for t, v in spikes(metrics[name]).items()}
    if "frs_feature" in terms:
        out["frs_feature_max"] = max(r["frs_feature"] for r in mine)
    kind, _, seed = name.rpartition("_s")
    base = f"{kind.partition('+')[0]}_s{seed}"
    if base not in metrics:  # else the same variant, seed and settings from another directory (probe = plain)
        base = next((n for n in metrics if n != name and n.endswith(f"_s{seed}") and n.startswith(kind)), base)
    if base in metrics:
        theirs = {r["iter"]: r for r in rows(metrics[base])}
        same = 0
        for r in mine:
            t = theirs.get(r["iter"])
            if t is None or any(r.get(k) != t.get(k) for k in ("classification", "bbox_regression", "frs_feature")):
                break
            same += 1
        out["identical_iterations_with"] = {base: same}
    return out


def paired(first: dict[int, float], second: dict[int, float]) -> dict:
    """``first`` minus ``second`` over the seeds both ran: the differences and, from two on, their mean, sd and 95 %
    interval (Student t)."""
    seeds = sorted(set(first) & set(second))
    diffs = [first[s] - second[s] for s in seeds]
    out = {"seeds": seeds, "values": diffs}
    if len(diffs) > 1:
        m, sd = statistics.mean(diffs), statistics.stdev(diffs)
        half = T975[len(diffs) - 2] * sd / len(diffs) ** 0.5
        out.update(mean=m, sd=sd, ci95=[m - half, m + half])
    return out


def agrees(diff: dict) -> str | None:
    """The outcome targets' test of a paired difference: mean within 0.5 AP and a 95 % interval holding 0; None
    below two pairs."""
    if "ci95" not in diff:
        return None
    return "met" if abs(diff["mean"]) <= 0.5 and diff["ci95"][0] <= 0 <= diff["ci95"][1] else "missed"


def judged_kind(name: str, judge: str | None) -> str | None:
    """The kind (``KINDS``) a run is judged as, or None: plain runs, except that with ``judge`` the FRS kinds are
    taken from that variant's runs instead."""
    kind, _, variant = name.rpartition("_s")[0].partition("+")
    frs = kind in ("b_frs_cache", "c_frs_online")
    if kind in KINDS and variant == (judge if judge and frs else ""):
        return kind
    return None


def main(run_dirs: list[Path], judge: str | None = None) -> dict:
    summary, all_runs, metrics, repeats = load(run_dirs)
    ap: dict[str, dict[int, float]] = {k: {} for k in KINDS}
    for name, run in all_runs.items():
        kind, seed = judged_kind(name, judge), name.rpartition("_s")[2]
        if kind and run.get("final"):
            ap[kind][int(seed)] = 100 * run["final"]["AP"]
    stats = {}
    for kind, per_seed in ap.items():
        values = list(per_seed.values())
        stats[kind] = {"seeds": per_seed, "n": len(values),
                       "mean": statistics.mean(values) if values else None,
                       "sd": statistics.stdev(values) if len(values) > 1 else None,
                       "worst": min(values) if values else None}
    diff = paired(ap["b_frs_cache"], ap["c_frs_online"])
    # every named variant against the plain runs of its kind, seed by seed (e.g. a setting that should not change
    # the outcome: the same test as cached against online)
    final_ap: dict[tuple[str, str], dict[int, float]] = {}  # (kind, variant or "") -> AP by seed
    for name, run in all_runs.items():
        stem, _, seed = name.rpartition("_s")
        kind, _, variant = stem.partition("+")
        if kind in KINDS and run.get("final"):
            final_ap.setdefault((kind, variant), {})[int(seed)] = 100 * run["final"]["AP"]
    against_plain: dict[str, dict[str, dict]] = {}
    for (kind, variant), aps in sorted(final_ap.items(), key=lambda kv: kv[0][1]):
        if variant:
            plain = final_ap.get((kind, ""), {})
            against_plain.setdefault(variant, {})[kind] = paired(aps, plain) | {"variant": aps, "plain": plain}
    runs = {}
    for name, f in metrics.items():
        if judged_kind(name, judge) in ("b_frs_cache", "c_frs_online", "d_gt_boxes"):
            runs[name] = spikes(f)
    variants = {n: variant_report(n, r, metrics) for n, r in sorted(all_runs.items()) if "+" in n}
    warmup = warmup_of(run_dirs[-1])
    bumps = {n: classification_bump(f, warmup) for n, f in sorted(metrics.items())
             if judged_kind(n, judge)}
    spiked = sorted(n for n, terms in runs.items() if any(t["spikes"] for t in terms.values()))
    verdicts = {}
    if verdict := agrees(diff):
        verdicts["cached - online: mean within 0.5 AP, 95 % interval holds 0"] = verdict
    variant_verdicts = {f"{KINDS[k]} +{v} - plain: mean within 0.5 AP, 95 % interval holds 0": verdict
                        for v, kinds in against_plain.items() for k, d in kinds.items() if (verdict := agrees(d))}
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
    result = {"sources": [str(d) for d in run_dirs], "judged_variant": judge, "device": summary.get("device"), "date": summary.get("date"),
              "ap": stats, "cached_minus_online": diff, "fresh_runs_checked_for_spikes": sorted(runs),
              "spiked": spiked, "loss_peaks": runs,
              "classification_bump": {"warmup_iters": warmup, "runs": bumps}, "repeated_runs_ap": repeats, "variants": variants,
              "variant_minus_plain": against_plain, "verdicts": verdicts, "variant_verdicts": variant_verdicts}
    (run_dirs[-1] / (f"verdicts_{judge}.json" if judge else "verdicts.json")).write_text(json.dumps(result, indent=1))
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
    if any(bumps.values()):
        print(f"\nclassification loss where the warm-ups end: peak over iterations {warmup}-{warmup + 39} / "
              f"lowest over {warmup - 15}-{warmup - 1}")
        for name, b in bumps.items():
            if b:
                print(f"  {name}: {b['ratio']:.2f} (peak {b['peak']:.3f} at iteration {b['iter']})")
    for name, ap_values in repeats.items():
        print(f"  repeated {name}: AP {', '.join(f'{v:.2f}' for v in ap_values)}")
    if variants:
        print("\n| variant run | AP per evaluation | cls peak, it. 90-140 | feature max | spike iterations | "
              "max lr·λ (lower, upper bound) | same as plain run |")
        print("|---|---|---|---|---|---|---|")
        for name, v in variants.items():
            peak = v.get("peak_90_140", {})
            sh = v.get("sharpness")
            bounds = f"{sh['lr_lambda_lo_max']:.2f}, {sh['lr_lambda_hi_max']:.2f}" if sh else "–"
            same = v.get("identical_iterations_with")
            feature = f"{v['frs_feature_max']:.1f}" if "frs_feature_max" in v else "–"
            print(f"| {name} | {', '.join(f'{a:.1f}' for a in v['ap']) or '–'} | {peak.get('classification', 0):.3f} | "
                  f"{feature} | {sum(v.get('spikes', {}).values())} | {bounds} | "
                  f"{', '.join(f'{n}: {k}' for n, k in same.items()) if same else '–'} |")
    for v, kinds in against_plain.items():
        for k, d in kinds.items():
            seeds = ", ".join(f"{s}: {d['variant'][s]:.1f} vs {d['plain'][s]:.1f}" for s in d["seeds"])
            interval = (f"{d['mean']:+.2f} AP, 95 % interval [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
                        if "ci95" in d else "fewer than two pairs")
            print(f"\n{KINDS[k]} +{v} − plain, seed by seed ({seeds or 'no seed in both'}): {interval}")
    print()
    for target, verdict in (verdicts | variant_verdicts).items():
        print(f"{verdict:7s} {target}")
    return result


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--judge", default=None, help="judge this variant's FRS runs in place of the plain ones")
    args = p.parse_args()
    main(args.run_dirs, args.judge)
