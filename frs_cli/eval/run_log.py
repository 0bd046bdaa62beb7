"""A training run's ``metrics.jsonl`` read back: loss terms per iteration, val metrics per epoch, a summary table.

The training loop (``train.loop.fit``) appends one JSON object per line to ``RUN_DIR/metrics.jsonl``:
a step record ``{"epoch", "iter", "lr", <loss term>..., "loss", "img_s", "data_wait"}`` every
``train.log_every`` iterations, and an eval record ``{"epoch", "eval": {"AP", ...}}`` after an evaluation.
A resumed run appends again from its saved step, so an iteration or epoch may appear twice: the later
record wins. A metric of ``null`` is undefined (no ground truth in that size range) and stays ``None``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from frs_cli.errors import DataError
from frs_cli.eval.coco_eval import METRIC_KEYS, defined, format_metric

METRICS_FILE = "metrics.jsonl"
STEP_KEYS = ("epoch", "iter", "lr", "loss", "img_s", "data_wait")  # step-record keys that are not loss terms


@dataclass
class RunLog:
    name: str  # the run's label: its folder's name (label_runs adds parent folders where two share it)
    path: str
    steps: dict[int, dict] = field(default_factory=dict)  # iteration -> step record
    evals: dict[int, dict] = field(default_factory=dict)  # epoch -> {metric: value or None}

    @property
    def terms(self) -> list[str]:
        """Loss-term names in first-seen order, the total ``loss`` last."""
        seen: dict[str, None] = {}
        for record in self.steps.values():
            for key, value in record.items():
                if key not in STEP_KEYS and isinstance(value, (int, float)):
                    seen[key] = None
        return [*seen, "loss"] if self.steps else []

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """``(iterations, values)`` of one step key, in iteration order, finite values only."""
        xs, ys = [], []
        for it in sorted(self.steps):
            value = self.steps[it].get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs.append(float(it))
                ys.append(float(value))
        return xs, ys

    def eval_series(self, metric: str = "AP") -> tuple[list[float], list[float]]:
        """``(epochs, values)`` of one val metric; undefined values are left out, not drawn as 0."""
        pairs = [(e, m.get(metric)) for e, m in sorted(self.evals.items())]
        return [float(e) for e, v in pairs if defined(v)], [float(v) for e, v in pairs if defined(v)]

    def last_eval(self) -> tuple[int, dict] | None:
        if not self.evals:
            return None
        epoch = max(self.evals)
        return epoch, self.evals[epoch]


def label_runs(logs: list[RunLog]) -> list[RunLog]:
    """Runs whose folders share a name get labels that tell them apart: the same number of each one's last path
    parts, as few as tell them all apart (``a/out`` and ``b/out``). Other runs keep their folder's name; the same
    folder given twice keeps one label (``viz.plots.check_run_labels`` refuses it)."""
    def parts(log: RunLog) -> tuple[str, ...]:
        path = Path(os.path.abspath(log.path))
        folder = path.parent if path.name == METRICS_FILE else path.with_name(log.name)
        return folder.parts
    names = [log.name for log in logs]
    for name in {n for n in names if names.count(n) > 1}:
        group = [log for log in logs if log.name == name]
        spelled = [parts(log) for log in group]
        depth = 1
        while depth < max(map(len, spelled)) and len({p[-depth:] for p in spelled}) < len(set(spelled)):
            depth += 1
        for log, p in zip(group, spelled):
            log.name = str(Path(*p[-depth:]))
    return logs


def read_run(run_dir: str | Path) -> RunLog:
    """Read ``RUN_DIR/metrics.jsonl``. ``DataError`` for a missing file or a line that is not a JSON object
    of the loop's two record kinds (the line number is named); an empty file gives an empty log."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE if run_dir.is_dir() else run_dir
    if not path.is_file():
        got = ", which does not exist" if not run_dir.exists() else " without one"
        raise DataError(f"report: expected a run folder holding {METRICS_FILE}, got {str(run_dir)!r}{got}",
                        hint="point at the --out folder of frs train or frs distill")
    name = path.parent.name if path.name == METRICS_FILE else path.name.removesuffix(".jsonl")
    log = RunLog(name=name, path=str(path))
    try:
        _read_records(path, log)
    except UnicodeDecodeError:
        raise DataError(f"report: expected a run folder holding {METRICS_FILE} (or that file), got {str(run_dir)!r}, "
                        f"a file that is not text", hint="point at the --out folder of frs train or frs distill, "
                        "not a file in it") from None
    return log


def _read_records(path: Path, log: RunLog) -> None:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n") and (number > 1 or line.startswith("{")):
                    break  # the last line of a run killed (or still being written) mid-line: what is before stands
                raise DataError(f"report: expected one JSON object per line in {str(path)!r}, got a parse error "
                                f"on line {number}: {exc.msg.removesuffix(' at')} at column {exc.colno}") from None
            if isinstance(record, dict) and isinstance(record.get("eval"), dict) and "epoch" in record:
                log.evals[int(record["epoch"])] = dict(record["eval"])
            elif isinstance(record, dict) and "iter" in record:
                log.steps[int(record["iter"])] = record
            else:
                raise DataError(f"report: expected a step record (with 'iter') or an eval record (with 'eval') on "
                                f"line {number} of {str(path)!r}, got {line.strip()[:80]!r}")


def markdown_table(runs: list[RunLog]) -> str:
    """One row per run: the last evaluation's COCO metrics (%), its best AP and epoch, iterations, the last total
    loss (four significant digits) and the median img/s. Undefined metrics are "–"."""
    head = ["run", "epoch", *METRIC_KEYS, "best AP (epoch)", "iterations", "last loss", "img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        last = run.last_eval()
        epoch, metrics = last if last else ("\u2013", {})
        epochs, aps = run.eval_series("AP")
        best = f"{100 * max(aps):.1f} ({int(epochs[aps.index(max(aps))])})" if aps else "\u2013"
        _, losses = run.series("loss")
        _, rates = run.series("img_s")
        rate = statistics.median(rates) if rates else None
        cells = [run.name, str(epoch), *(format_metric(metrics.get(k)) for k in METRIC_KEYS), best,
                 str(max(run.steps) + 1) if run.steps else "0",
                 f"{losses[-1]:#.4g}" if losses else "\u2013", f"{rate:.1f}" if rate is not None else "\u2013"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
