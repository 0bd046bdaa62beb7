"""The rich progress bar behind every long command: rate, ETA and the running values (losses, ...)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichBar
from rich.text import Text

from frs_cli.progress import Progress


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"-- {unit}/s", style="progress.data.speed")


class RichProgress(Progress):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar: _RichBar | None = None
        self.task = None

    def start(self, description: str, total: int, completed: int = 0, unit: str = "it") -> None:
        self.stop()
        self.bar = _RichBar(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[values]}"),
            console=self.console, transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=completed, unit=unit, values="")

    def update(self, advance: int = 1, **fields) -> None:
        if self.bar is None:
            return
        shown = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in fields.items() if k != "img_s")
        self.bar.update(self.task, advance=advance, values=shown)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)
