"""Progress of every long command: rate, ETA and the running values (losses, ...).

On a terminal, a rich bar. Elsewhere (a batch job's log file, a pipe) a bar redraws into one long truncated
line, so ``LineProgress`` prints a plain line now and then instead.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as _RichBar
from rich.table import Column
from rich.text import Text

from frs_cli.progress import Progress

BAR_WIDTH = 20  # characters: the bar, the count, rate, elapsed and ETA fit in 80 columns with a short task name
FULL_WIDTH = 80  # columns from which the bar and the elapsed time are drawn


WINDOW_S = 30.0  # the rate is of the last WINDOW_S seconds (rich's estimate window), or since the start if less


def _rate(task) -> float | None:
    """Steps a second: since the task started while it is younger than ``WINDOW_S`` (or done), else rich's
    estimate over the last ``WINDOW_S`` s. Rich's estimate alone counts from the first update, not the start: two
    updates arriving back to back (a loop that reads its losses one step late) made it a thousand times too high."""
    done = task.completed - task.fields.get("first", 0)  # this call's steps (a resumed run starts past 0)
    elapsed = task.finished_time if task.finished else task.elapsed
    if not elapsed or done <= 0:
        return None
    if task.finished or elapsed <= WINDOW_S or not task.speed:
        return done / elapsed
    return task.speed


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        rate = _rate(task)
        unit = task.fields.get("unit", "it")
        return Text(f"{rate:,.1f} {unit}/s" if rate else f"-- {unit}/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """The time left at ``_rate``'s pace."""

    def render(self, task) -> Text:
        rate = _rate(task)
        left = "0:00:00" if task.finished else _duration((task.total - task.completed) / rate) if rate else "-:--:--"
        return Text(f"eta {left}", style="progress.remaining")


class ValuesColumn(ProgressColumn):
    """The running values (losses, ...) on one line, cut with an ellipsis where the terminal ends."""

    def render(self, task) -> Text:
        return Text(task.fields.get("values", ""), no_wrap=True, overflow="ellipsis")


class RichProgress(Progress):
    def __init__(self, console: Console | None = None, clock=None):
        self.console = console or Console(stderr=True)
        self.clock = clock  # rich's clock (time.monotonic) unless given
        self.bar: _RichBar | None = None
        self.task = None

    def start(self, description: str, total: int, completed: int = 0, unit: str = "it") -> None:
        self.stop()
        # what says how far and how fast never gives way: the running values take the width that is left, cut
        # short on a narrow terminal (every value is in the run's metrics.jsonl); below FULL_WIDTH columns the bar
        # and the elapsed time give way first, so the count, rate and ETA stay whole
        fixed = {"table_column": Column(no_wrap=True)}
        wide = self.console.width >= FULL_WIDTH
        columns = [TextColumn("[bold]{task.description}", **fixed),
                   *([BarColumn(bar_width=BAR_WIDTH, **fixed)] if wide else []), MofNCompleteColumn(**fixed),
                   RateColumn(**fixed), *([TimeElapsedColumn(**fixed)] if wide else []), EtaColumn(**fixed)]
        self.bar = _RichBar(
            *columns, ValuesColumn(table_column=Column(ratio=1)), console=self.console, transient=False,
            **({"get_time": self.clock} if self.clock else {}),
        )
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=completed, unit=unit, values="",
                                      first=completed)

    def update(self, advance: int = 1, **fields) -> None:
        if self.bar is None:
            return
        if "loss" in fields:  # the total first: the line may be cut short
            fields = {"loss": fields["loss"], **fields}
        self.bar.update(self.task, advance=advance, values=_values(fields))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)  # as it is: a path may hold '['


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _values(fields: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items() if k != "img_s")


class LineProgress(Progress):
    """Plain progress lines for logs: one every ``every_s`` seconds, and one when a task ends.

    ``description done/total (percent) rate unit/s elapsed H:MM:SS eta H:MM:SS values``
    """

    def __init__(self, console: Console | None = None, every_s: float = 30.0, clock=time.monotonic):
        self.console = console or Console(stderr=True)
        self.every_s = every_s
        self.clock = clock
        self.task: dict | None = None

    def start(self, description: str, total: int, completed: int = 0, unit: str = "it") -> None:
        self.stop()
        now = self.clock()
        self.task = {"description": description, "total": total, "start_done": completed, "done": completed,
                     "unit": unit, "t0": now, "last": now, "values": ""}

    def _line(self) -> str:
        t = self.task
        elapsed = self.clock() - t["t0"]
        rate = (t["done"] - t["start_done"]) / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * t["done"] / t["total"] if t["total"] else 100.0
        eta = _duration((t["total"] - t["done"]) / rate) if rate > 0 else "--"
        line = (f"{t['description']} {t['done']}/{t['total']} ({pct:.0f}%) {rate:,.1f} {t['unit']}/s "
                f"elapsed {_duration(elapsed)} eta {eta}")
        return f"{line}  {t['values']}" if t["values"] else line

    def update(self, advance: int = 1, **fields) -> None:
        if self.task is None:
            return
        self.task["done"] += advance
        if fields:
            self.task["values"] = _values(fields)
        now = self.clock()
        if now - self.task["last"] >= self.every_s and self.task["done"] < self.task["total"]:
            self.task["last"] = now
            self.log(self._line())

    def stop(self) -> None:
        if self.task is not None:
            self.log(self._line())
            self.task = None

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)  # as it is: a path may hold '['
