"""Verdicts of a cached-step run (bench/cached_step.py) against issue 13's targets, computed from its raw JSON.

    python3 bench/cache_verdicts.py OUT/step.json [--graphs | --hold0 | --hostcopy | --eager]

``--graphs`` judges the cached rows' ``distill.cuda_graphs`` variant (a run with ``--graphs-ab``: each row's
``graphs_*`` figures, against the same interleaved plain step) and writes ``verdicts_graphs.json``. ``--hold0``
judges the rows as their loader workers holding no buffer (a run with ``--hold-ab``: each row's ``hold0_*``
cached and plain steps, interleaved in the same blocks as the row's own) and writes ``verdicts_hold0.json``.
``--hostcopy`` judges the rows as their GT loss copied its box coding's tensors from the host at every step (a run
with ``--hostcopy-ab``: each row's ``hostcopy_*`` cached, plain and, when timed, online steps) and writes
``verdicts_hostcopy.json``. ``--eager`` judges the rows' steps launched eagerly, ``train.cuda_graphs`` off (a run
with ``--step-graphs-ab``: each row's ``eager_*`` cached, plain and, when timed, online steps) and writes
``verdicts_eager.json``.

Writes ``verdicts.json`` beside the step file and prints one table per target, each row with its cache size and
page-cache state; a paired row that stored its step times also shows the spread of its blocks' own ratios (the
verdict is the row's: its median cached step over its median plain step). Targets (one card, one call):
- step: cached int8 and int5 step <= 1.10 x the plain step at 128, 1024 and >= 4096 views, warm and cold;
  cached fp16 <= 1.10 x plain with a warm page cache;
- online / cached >= 1.4 for the first pair (X101 -> R50), over the same rows as the step target;
- teacher-cache >= 0.9 x pure inference for R50-FPN v2 (r50v2) and X101 (x101), int8 and int5;
- mean (not only median) data wait <= 5 % of the step, in every row measured (plain, online, cached).
A target missed by any margin is missed; a row the target needs but the run did not measure (a size below
4096 only, cold rows skipped, a teacher not run) is "not measured", and the target is then missed too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEP_LIMIT, ONLINE_FLOOR, CACHE_FLOOR, WAIT_LIMIT = 1.10, 1.4, 0.9, 0.05
SIZES = (128, 1024, 4096)  # the last one: at least this many views
CACHE_TEACHERS, CACHE_DTYPES = ("r50v2", "x101"), ("int8", "int5")


def need_mb_s(mb_per_view: float, batch: int, step_ms: float) -> float:
    """The read rate, MB/s, that keeps a step of ``step_ms`` fed with ``batch`` views of ``mb_per_view`` MB each."""
    return mb_per_view * batch / (step_ms / 1e3)


def required_rows() -> list[tuple[str, int, str]]:
    """(dtype, size, page cache) rows the step and online targets need."""
    states = {"int8": ("warm", "cold"), "int5": ("warm", "cold"), "float16": ("warm",)}
    return [(dtype, size, state) for dtype, kinds in states.items() for size in SIZES for state in kinds]


def _find(step: dict, dtype: str, size: int, state: str) -> dict | None:
    """The measured row of ``dtype`` and ``state`` at ``size`` views (for the last size: the largest >= it)."""
    rows = [r for r in step["cached"] if r["dtype"] == dtype and r["page_cache"] == state and "step_ms" in r]
    if size == SIZES[-1]:
        rows = [r for r in rows if r["views"] >= size]
        return max(rows, key=lambda r: r["views"]) if rows else None
    return next((r for r in rows if r["views"] == size), None)


STEP_KEYS = ("step_ms", "step_ms_mean", "data_wait_share", "data_wait_share_median")


def _variant(step: dict, prefix: str, keys: tuple[str, ...], label: str, **extra) -> dict:
    """``step`` with each cached row's ``keys`` replaced by its ``prefix``-ed figures (rows without all of them
    dropped: they count as not measured). The run stores the step times of each row's own cached mode only, not the
    variant's, so the row's ``step_times_ms`` go too: the spread shown would be another mode's."""
    rows = [{**{k: v for k, v in r.items() if k != "step_times_ms"}, **{k: r[prefix + k] for k in keys}, **extra}
            for r in step["cached"] if all(prefix + k in r for k in keys)]
    return {**step, "cached": rows, "worker_sweep": [], "variant": label}


def graphs_variant(step: dict) -> dict:
    """``step`` judged by each cached row's ``--graphs-ab`` graphed variant (``graphs_*``), against the same
    interleaved plain step."""
    return _variant(step, "graphs_", STEP_KEYS, "distill.cuda_graphs on", cuda_graphs=True)


def hold0_variant(step: dict) -> dict:
    """``step`` judged by each cached row's ``--hold-ab`` cached and plain steps (``hold0_*``), workers holding no
    buffer."""
    return _variant(step, "hold0_", (*STEP_KEYS, "plain_step_ms", "plain_step_ms_mean"),
                    "loader workers holding no buffer")


def _all_steps_variant(step: dict, prefix: str, label: str) -> dict:
    """``step`` judged by each cached row's ``prefix``-ed cached, plain and online steps. Online / cached counts
    only rows that timed the online step so too: the run's unpaired online step was not."""
    online = ("online_step_ms", "online_step_ms_mean", "online_data_wait_share", "online_data_wait_share_median")
    out = _variant(step, prefix, (*STEP_KEYS, "plain_step_ms", "plain_step_ms_mean"), label)
    for r in out["cached"]:
        for k in online:
            if f"{prefix}{k}" in r:
                r[k] = r[f"{prefix}{k}"]
            else:
                r.pop(k, None)
    first = next(iter(step["pairs"]))
    out["pairs"] = {**step["pairs"], first: {k: v for k, v in step["pairs"][first].items() if k != "online"}}
    return out


def hostcopy_variant(step: dict) -> dict:
    """``step`` judged by each cached row's ``--hostcopy-ab`` steps (``hostcopy_*``: cached, plain and online), the
    GT loss's box coding copying from the host at every step as before ``33c477d``."""
    return _all_steps_variant(step, "hostcopy_", "box coding copied from the host (as before 33c477d)")


def eager_variant(step: dict) -> dict:
    """``step`` judged by each cached row's ``--step-graphs-ab`` steps (``eager_*``: cached, plain and online),
    every step launched eagerly (``train.cuda_graphs`` off)."""
    return _all_steps_variant(step, "eager_", "every step eager (train.cuda_graphs off)")


def block_ratios(row: dict, mode: str = "cached") -> list[float] | None:
    """Per paired block of ``row``, the median ``mode`` step over the median plain step of the same turn (from
    ``step_times_ms``; None for rows without them). How far one block's ratio strays shows the row's noise."""
    from statistics import median

    times, block = row.get("step_times_ms"), row.get("paired_block")
    if not times or mode not in times or "plain" not in times or not block:
        return None
    a, b = times[mode], times["plain"]
    return [median(a[i:i + block]) / median(b[i:i + block]) for i in range(0, min(len(a), len(b)), block)]


def verdicts(step: dict) -> dict:
    first = next(iter(step["pairs"]))
    plain = step["pairs"][first]["plain"]["step_ms"]
    online = step["pairs"][first].get("online", {}).get("step_ms")  # None: a variant whose online step is unpaired
    step_rows, online_rows = [], []
    for dtype, size, state in required_rows():
        r = _find(step, dtype, size, state)
        base = {"dtype": dtype, "views": size if r is None else r["views"], "page_cache": state}
        if r is None:
            step_rows.append({**base, "verdict": "not measured"})
            online_rows.append({**base, "verdict": "not measured"})
            continue
        row_plain = r.get("plain_step_ms", plain)  # a paired row's own interleaved plain step
        ratio = r["step_ms"] / row_plain
        blocks = block_ratios(r)
        spread = {} if blocks is None else {"block_ratio_min": min(blocks), "block_ratio_max": max(blocks),
                                            "blocks": len(blocks),
                                            "blocks_within": sum(b <= STEP_LIMIT for b in blocks)}
        step_rows.append({**base, "step_ms": r["step_ms"], "plain_ms": row_plain, "over_plain": ratio, **spread,
                          "verdict": "met" if ratio <= STEP_LIMIT else "missed"})
        row_online = r.get("online_step_ms", online)  # a row's own interleaved online step (--online-paired)
        if row_online is None:
            online_rows.append({**base, "verdict": "not measured"})
            continue
        speedup = row_online / r["step_ms"]
        online_rows.append({**base, "step_ms": r["step_ms"], "online_ms": row_online, "online_over_cached": speedup,
                            # online / plain of the same minutes: what online / cached would be if caching were free
                            "online_over_plain": row_online / row_plain,
                            "verdict": "met" if speedup >= ONLINE_FLOOR else "missed"})
    cache_rows = []
    for teacher in CACHE_TEACHERS:
        for dtype in CACHE_DTYPES:
            got = step["teachers"].get(teacher, {}).get("cache", {}).get(dtype, {})
            if "over_inference" not in got:
                cache_rows.append({"teacher": teacher, "dtype": dtype, "verdict": "not measured"})
                continue
            cache_rows.append({"teacher": teacher, "dtype": dtype, "cache_views_s": got["views_s"],
                               "inference_img_s": step["teachers"][teacher]["inference_img_s"],
                               "over_inference": got["over_inference"],
                               "verdict": "met" if got["over_inference"] >= CACHE_FLOOR else "missed"})
    wait_rows = []
    for pair, row in step["pairs"].items():
        for mode in ("plain", "online"):
            if mode in row:
                wait_rows.append({"row": f"{pair} {mode}", "views": step.get("views_in_split"), "page_cache": "warm",
                                  "mean": row[mode]["data_wait_share"], "median": row[mode]["data_wait_share_median"]})
    for r in step["cached"]:
        if "step_ms" in r:
            wait_rows.append({"row": f"{r['pair']} cached {r['dtype']}", "views": r["views"],
                              "page_cache": r["page_cache"], "mean": r["data_wait_share"],
                              "median": r["data_wait_share_median"]})
    for r in wait_rows:
        r["verdict"] = "met" if r["mean"] <= WAIT_LIMIT else "missed"

    def overall(rows):
        return "met" if rows and all(r["verdict"] == "met" for r in rows) else "missed"

    disk = step.get("disk", {}).get("read", {})
    # the read rate the step needs at the fastest plain step timed in the call: its unpaired row, or a paired row's
    # own interleaved plain steps (the unpaired row, timed once before the rest, can run well slower than they do)
    pace = min([plain, *(r["plain_step_ms"] for r in step["cached"] if "plain_step_ms" in r)])
    batch = step.get("args", {}).get("batch")
    bandwidth = []
    for dtype in dict.fromkeys(r["dtype"] for r in step["cached"]):
        warm = [r for r in step["cached"] if r["dtype"] == dtype and "loader_views_s" in r]
        last = max(warm, key=lambda r: r["views"]) if warm else None
        rows = [r for r in step["cached"] if r["dtype"] == dtype and "need_mb_s" in r]
        if not rows:
            continue
        mb = rows[0]["mb_per_view"]
        need = rows[0]["need_mb_s"] if batch is None else need_mb_s(mb, int(batch), pace)  # no batch: as recorded
        bandwidth.append({"dtype": dtype, "mb_per_view": mb, "need_mb_s": need,
                          "plain_pace_ms": None if batch is None else pace,
                          "disk_read_mb_s": disk.get("mb_s"), "disk_read_cold": disk.get("cold"),
                          "loader_views_s": None if last is None else last["loader_views_s"],
                          "loader_views": None if last is None else last["views"]})
    extra = [*step.get("worker_sweep", []), *([step["zarr_path"]] if "zarr_path" in step else [])]
    return {"source": {k: step.get(k) for k in ("device", "date", "command")}, "pair": first,
            "variant": step.get("variant", "as run"),
            "bandwidth": bandwidth, "comparison_rows": extra,
            "targets": {
                "cached int8/int5 step <= 1.10x plain at 128, 1024, >=4096 views, warm and cold; fp16 warm":
                    overall(step_rows),
                f"online / cached >= 1.4x ({first})": overall(online_rows),
                "teacher-cache >= 0.9x inference, r50v2 and x101, int8 and int5": overall(cache_rows),
                "mean data wait <= 5 % of the step": overall(wait_rows)},
            "step": step_rows, "online_over_cached": online_rows, "teacher_cache": cache_rows, "data_wait": wait_rows}


def _f(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "–"


def tables(v: dict) -> str:
    src = v["source"]
    out = [f"{src['device']}, {src['date']}: `{src['command']}`; cached rows: {v['variant']}", "",
           ("| dtype | views | page cache | cached ms | plain ms | cached / plain (<= 1.10) | verdict "
            "| per block: range, blocks <= 1.10 |"),
           "|---|---|---|---|---|---|---|---|"]

    def spread(r):
        if "blocks" not in r:
            return "–"
        return f"{r['block_ratio_min']:.2f}–{r['block_ratio_max']:.2f}, {r['blocks_within']} of {r['blocks']}"

    out += [f"| {r['dtype']} | {r['views']} | {r['page_cache']} | {_f(r, 'step_ms', '.1f')} | {_f(r, 'plain_ms', '.1f')} | "
            f"{_f(r, 'over_plain', '.2f')} | {r['verdict']} | {spread(r)} |" for r in v["step"]]
    out += ["", (f"| dtype | views | page cache | online ms | cached ms | online / cached (>= 1.4, {v['pair']}) | "
             "online / plain (caching for free) | verdict |"), "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['dtype']} | {r['views']} | {r['page_cache']} | {_f(r, 'online_ms', '.1f')} | {_f(r, 'step_ms', '.1f')} | "
            f"{_f(r, 'online_over_cached', '.2f')} | {_f(r, 'online_over_plain', '.2f')} | {r['verdict']} |"
            for r in v["online_over_cached"]]
    out += ["", "| teacher | dtype | teacher-cache views/s | inference img/s | ratio (>= 0.9) | verdict |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r['teacher']} | {r['dtype']} | {_f(r, 'cache_views_s', '.1f')} | {_f(r, 'inference_img_s', '.1f')} | "
            f"{_f(r, 'over_inference', '.2f')} | {r['verdict']} |" for r in v["teacher_cache"]]
    out += ["", "| row | views | page cache | mean data wait (<= 5 %) | median | verdict |", "|---|---|---|---|---|---|"]
    out += [f"| {r['row']} | {r['views']} | {r['page_cache']} | {100 * r['mean']:.1f} % | {100 * r['median']:.1f} % | "
            f"{r['verdict']} |" for r in v["data_wait"]]
    out += ["", ("| dtype | MB per view | MB/s the step needs at the fastest plain step timed (its ms) | disk read MB/s "
             "(page cache dropped?) | loader views/s, warm (views) |"), "|---|---|---|---|---|"]
    for r in v["bandwidth"]:
        disk = "–" if r["disk_read_mb_s"] is None else f"{r['disk_read_mb_s']:.0f} ({'yes' if r['disk_read_cold'] else 'no'})"
        loader = "–" if r["loader_views_s"] is None else f"{r['loader_views_s']:.0f} ({r['loader_views']})"
        pace = "" if r.get("plain_pace_ms") is None else f" ({r['plain_pace_ms']:.1f} ms)"
        out.append(f"| {r['dtype']} | {r['mb_per_view']:.2f} | {r['need_mb_s']:.0f}{pace} | {disk} | {loader} |")
    if v["comparison_rows"]:
        out += ["", "| comparison row (no target) | views | workers | read | cached ms | mean data wait | loader views/s |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} {r['page_cache']} | {r['views']} | {r['workers']} | {r.get('read', 'direct')} | "
                f"{r['step_ms']:.1f} | {100 * r['data_wait_share']:.1f} % | {r['loader_views_s']:.0f} |"
                for r in v["comparison_rows"]]
    out += [""] + [f"{verdict:7s} {target}" for target, verdict in v["targets"].items()]
    return "\n".join(out)


def main(path: Path, graphs: bool = False, hold0: bool = False, hostcopy: bool = False, eager: bool = False) -> dict:
    step = json.loads(path.read_text())
    pairs = step.get("pairs") or {}
    if "plain" not in next(iter(pairs.values()), {}):  # what verdicts() reads; an A/B record (loader_cost, ...) lacks it
        raise SystemExit(f"cache_verdicts: expected a bench/cached_step.py step.json whose first pair has a plain row, "
                         f"got {'no pairs' if not pairs else 'none in ' + next(iter(pairs))} in {path}")
    variant, name = ((graphs_variant, "verdicts_graphs.json") if graphs else (hold0_variant, "verdicts_hold0.json")
                     if hold0 else (hostcopy_variant, "verdicts_hostcopy.json") if hostcopy
                     else (eager_variant, "verdicts_eager.json") if eager
                     else (lambda s: s, "verdicts.json"))
    v = verdicts(variant(step))
    path.with_name(name).write_text(json.dumps(v, indent=1))
    print(tables(v))
    return v


if __name__ == "__main__":
    main(Path(sys.argv[1]), graphs="--graphs" in sys.argv[2:], hold0="--hold0" in sys.argv[2:],
         hostcopy="--hostcopy" in sys.argv[2:], eager="--eager" in sys.argv[2:])
