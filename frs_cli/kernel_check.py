"""Whether a device runs a set of Triton kernels, tried once per device on a tiny input.

Triton compiles a kernel on its first launch; on some installs it cannot (no C compiler for its launcher, an
unsupported GPU). ``fused_decode`` and ``fused_losses`` each keep one ``KernelCheck``: the first call on a device
runs their trial, and where it raises, one warning says so and the PyTorch form runs on that device from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["KernelCheck"]

log = logging.getLogger(__name__)


class KernelCheck:
    """``check(device)``: whether ``trial(device)`` ran there (cached per device). ``what`` names the kernels and
    ``fallback`` what runs instead, for the warning: ``"<what> on <device> (<error>); <fallback>"``."""

    def __init__(self, what: str, fallback: str, trial: Callable[[torch.device], object]):
        self.what, self.fallback, self.trial = what, fallback, trial
        self.works: dict[torch.device, bool] = {}

    def __call__(self, device: torch.device) -> bool:
        if device not in self.works:
            self.works[device] = self.try_on(device)
        return self.works[device]

    def try_on(self, device: torch.device) -> bool:
        """The trial on ``device``, uncached: True, or False with one warning."""
        try:
            self.trial(device)
        except Exception as exc:  # noqa: BLE001 - whatever stops the kernels, the PyTorch form computes the same
            first = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("%s on %s (%s: %s); %s", self.what, device, type(exc).__name__, first, self.fallback)
            return False
        return True
