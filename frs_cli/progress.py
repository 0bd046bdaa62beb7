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
