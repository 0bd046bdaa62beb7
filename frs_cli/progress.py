"""How long-running library code reports progress without talking to the terminal itself.

Library loops call a ``Progress``; the command line passes one that draws a rich progress bar, tests and
library users get ``NullProgress``.
"""

from __future__ import annotations


class Progress:
    """Receives progress events. Every method may be called from the main process only."""

    def start(self, description: str, total: int, completed: int = 0, unit: str = "it") -> None:
        """A new task of ``total`` steps begins (``completed`` already done, when resuming)."""

    def update(self, advance: int = 1, **fields) -> None:
        """``advance`` steps finished; ``fields`` are running values to show (losses, img/s, ...)."""

    def stop(self) -> None:
        """The current task ended."""

    def log(self, message: str) -> None:
        """A line worth showing above the bar (an epoch's mAP, a resumed position, ...)."""


NullProgress = Progress


def share(description: str, world_size: int) -> str:
    """A bar's name where each of ``world_size`` processes works through its own share and only the first draws
    its bar: ``"teacher-cache (process 0's share of 2)"``, so its count is not read as the whole job's."""
    return description if world_size <= 1 else f"{description} (process 0's share of {world_size})"
