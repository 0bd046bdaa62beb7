"""Work started on a second CUDA stream beside the current one and joined before its results are read.

A distillation step's teacher side (the cached head on the decoded features, or the live teacher) does not read
the student, so it can run while the student's forward pass does: their kernels share the device where either
alone leaves part of it idle. Inside a CUDA graph capture the fork and the join are captured too, as two branches
of the graph that the replay runs side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["SideStream"]


class SideStream:
    """``start(device, fn, *args)`` runs ``fn(*args)`` with a second stream of ``device`` current, after the work
    already issued on its current stream; ``join(tensors)`` makes the current stream wait for that work and marks
    ``tensors`` (made on the second stream) as used on the current one, so that the allocator keeps their memory
    until the current stream's work on them is done. Off CUDA, or with ``enabled`` False, ``start`` calls ``fn``
    and ``join`` does nothing. One ``start`` at a time: ``join`` before the next."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._streams: dict[int, torch.cuda.Stream] = {}  # device index -> its second stream
        self._pending: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None  # (current, second) once started

    def start(self, device: torch.device, fn: Callable, *args):
        if not self.enabled or device.type != "cuda":
            return fn(*args)
        current = torch.cuda.current_stream(device)
        second = self._streams.get(current.device_index)
        if second is None:
            second = self._streams[current.device_index] = torch.cuda.Stream(current.device)
        second.wait_stream(current)
        with torch.cuda.stream(second):
            out = fn(*args)
        self._pending = (current, second)
        return out

    def join(self, tensors: Iterable[Tensor]) -> None:
        if self._pending is None:
            return
        current, second = self._pending
        self._pending = None
        current.wait_stream(second)
        for t in tensors:
            t.record_stream(current)
