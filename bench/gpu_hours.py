"""What caching the teacher saves, in GPU-hours, from measured step and write rates (issue 13, fourth deliverable).

    python3 bench/gpu_hours.py OUT/step.json [--rates speed.json] [--out gpu_hours.json] [--graphs]

Input: the raw JSON of ``bench/cached_step.py`` (plain, online and cached steps; teacher-cache and inference
rates). ``--rates``: a ``bench/speed.py`` JSON whose teacher-cache rates (``teachers.<t>.<dtype>.cache_views_s``)
replace those of the step file, e.g. after the writer got faster. The schedule is COCO 2x unless told otherwise:
118 287 train images, 24 epochs, one view per image and epoch, the cache holding two views (orig, hflip) of
each image. For n students, one GPU, at the batch the steps were measured with:

    steps per student  = ceil(images x epochs / batch)
    online             = n x steps x online step
    cache + cached     = 2 x images / teacher-cache views per second  +  n x steps x cached step
    plain (no teacher) = n x steps x plain step (the floor)

The cached step is the step file's row with the most views, cold page cache when measured (a COCO cache of
2.2 TB in fp16 does not fit in memory), else warm; the cached step does not depend on the teacher that wrote the
cache when teachers share levels and channels (every RetinaNet here: P3-P7, 256 channels), so the first pair's
cached rows serve every pair. Where that row timed the plain and online steps paired with it (``--online-paired``:
the same blocks of one process), its pair's online and plain steps are those, so that the three are compared like
with like; otherwise, and for the other pairs, the pair's own online and plain rows. A pair whose online step is
its own row while the cached rows timed theirs paired gets its hours but no saving (``saving_note``): its own rows
ran apart from the cached ones, in blocks that need not run alike (on one H200 a separate plain row took 50.5 ms
against 38.0 paired in the same call), so the two are not compared. Every step figure is a median
(a few one-off stalls of a hundred-step row would move a mean far more than they move a long run); where batches of
different canvases take different times, the median overstates the hours of all three methods alike. A dtype without a teacher-cache rate for a teacher gets no row. ``--graphs``: the
cached steps of a ``--graphs-ab`` run's graphed variant (``distill.cuda_graphs`` on, ``cache_verdicts.graphs_variant``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

STUDENTS = (1, 3, 10)


def cached_step(step: dict, dtype: str) -> dict | None:
    """The cached row of ``dtype`` with the most views, cold page cache preferred: what a COCO cache sees."""
    rows = [r for r in step["cached"] if r["dtype"] == dtype and "step_ms" in r]
    if not rows:
        return None
    most = max(r["views"] for r in rows)
    rows = [r for r in rows if r["views"] == most]
    return next((r for r in rows if r["page_cache"] == "cold"), rows[0])


def step_figure(figures: dict, prefix: str = "") -> float:
    """``figures``' ``prefix``-ed step in ms (a median, see the module doc)."""
    return float(figures[prefix + "step_ms"])


def paired(step: dict, pair: str, dtypes: list[str]) -> dict | None:
    """The first of ``dtypes``' ``cached_step`` rows that belongs to ``pair`` and timed its online step beside it."""
    rows = (cached_step(step, d) for d in dtypes)
    return next((r for r in rows if r is not None and r.get("pair") == pair and "online_step_ms" in r), None)


def cache_rate(step: dict, teacher: str, dtype: str, rates: dict | None) -> float | None:
    """Teacher-cache views/s of ``teacher`` in ``dtype``: from ``rates`` (a speed.py JSON) when it has one, else
    the step file's rate split, else its full cache."""
    if rates is not None:
        got = rates.get("teachers", {}).get(teacher, {}).get(dtype, {}).get("cache_views_s")
        if got:
            return float(got)
    t = step["teachers"].get(teacher, {})
    got = t.get("cache", {}).get(dtype, {}).get("views_s") or t.get("full_cache", {}).get(dtype, {}).get("views_s")
    return float(got) if got else None


def hours(step: dict, rates: dict | None = None, images: int = 118_287, epochs: int = 24,
          views_per_image: int = 2) -> dict:
    """GPU-hours per pair and method for 1, 3 and 10 students (see the module docstring)."""
    batch = int(step["args"]["batch"])
    steps = math.ceil(images * epochs / batch)
    per_step_h = steps / 3.6e6  # GPU-hours of one student per ms of step
    dtypes = [d for d in step["args"]["dtypes"].split(",")]
    plain = next((step_figure(p["plain"]) for p in step["pairs"].values() if "plain" in p), None)
    out = {"schedule": {"images": images, "epochs": epochs, "batch": batch, "steps_per_student": steps,
                        "cached_views": images * views_per_image}, "rows": []}
    any_paired = any("online_step_ms" in r for r in step["cached"])
    for pair, row in step["pairs"].items():
        teacher = pair.split("-")[0]
        arch = step["teachers"].get(teacher, {}).get("arch", teacher)
        beside = paired(step, pair, dtypes)
        online = step_figure(beside, "online_") if beside else step_figure(row["online"])
        comparable = beside is not None or not any_paired  # online and cached timed alike (see the module doc)
        if beside and "plain_step_ms" in beside and plain is not None:
            plain = step_figure(beside, "plain_")
        out["rows"].append({"pair": pair, "teacher_arch": arch, "method": "online", "step_ms": online,
                            "step_row": f"paired, {beside['dtype']} row" if beside else "the pair's own",
                            "cache_hours": 0.0, **{f"students_{n}": n * online * per_step_h for n in STUDENTS}})
        for dtype in dtypes:
            cached, rate = cached_step(step, dtype), cache_rate(step, teacher, dtype, rates)
            if cached is None or rate is None:
                continue
            once = images * views_per_image / rate / 3600
            entry = {"pair": pair, "teacher_arch": arch, "method": f"cache {dtype}", "step_ms": step_figure(cached),
                     "step_row": f"{cached['views']} views, {cached['page_cache']}", "cache_views_s": rate,
                     "cache_hours": once}
            for n in STUDENTS:
                entry[f"students_{n}"] = once + n * entry["step_ms"] * per_step_h
                if comparable:
                    entry[f"saving_{n}"] = 1 - entry[f"students_{n}"] / (n * online * per_step_h)
            if not comparable:
                entry["saving_note"] = ("no saving: this pair's online step is its own row, timed apart from the "
                                        "cached step, which was timed paired with another pair's online step")
            out["rows"].append(entry)
    if plain is not None:
        out["rows"].append({"pair": "any", "teacher_arch": "none", "method": "plain (no teacher)", "step_ms": plain,
                            "cache_hours": 0.0, **{f"students_{n}": n * plain * per_step_h for n in STUDENTS}})
    return out


def table(result: dict) -> str:
    s = result["schedule"]
    lines = [(f"GPU-hours on one card, {s['images']} images x {s['epochs']} epochs at batch {s['batch']} "
              f"({s['steps_per_student']} steps per student), cache of {s['cached_views']} views"),
             "", ("| teacher -> student | method | step ms | teacher-cache h | 1 student h | 3 students h | 10 students h "
              "| saving at 1 / 3 / 10 |"), "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        saving = " / ".join(f"{100 * r[f'saving_{n}']:.0f} %" for n in STUDENTS) if "saving_1" in r else "–"
        lines.append(f"| {r['pair']} ({r['teacher_arch']}) | {r['method']} | {r['step_ms']:.1f} | {r['cache_hours']:.1f} | "
                     + " | ".join(f"{r[f'students_{n}']:.1f}" for n in STUDENTS) + f" | {saving} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", type=Path, help="step.json of bench/cached_step.py")
    p.add_argument("--rates", type=Path, help="a bench/speed.py JSON with newer teacher-cache rates")
    p.add_argument("--images", type=int, default=118_287)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--out", type=Path, help="JSON to write (default: gpu_hours.json beside the step file)")
    p.add_argument("--graphs", action="store_true", help="the cached rows' distill.cuda_graphs variant (--graphs-ab)")
    args = p.parse_args()
    step = json.loads(args.step.read_text())
    if args.graphs:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from cache_verdicts import graphs_variant

        step = graphs_variant(step)
    rates = json.loads(args.rates.read_text()) if args.rates else None
    result = hours(step, rates, args.images, args.epochs)
    result["source"] = {"step": str(args.step), "rates": str(args.rates) if args.rates else None,
                        "cached_rows": step.get("variant", "as run"),
                        "device": step.get("device"), "date": step.get("date"), "command": step.get("command")}
    (args.out or args.step.with_name("gpu_hours.json")).write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
