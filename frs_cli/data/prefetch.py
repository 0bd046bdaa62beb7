"""Batches moved to the device one step ahead, on a side stream: the copy of batch n+1 runs while step n computes.

A copy on the stream the step runs on waits for the previous step and holds the next one back: a cached batch
carries the teacher's features (tens of MB), so that copy is a visible share of the step. ``DevicePrefetcher``
issues each copy on its own CUDA stream as soon as the loader hands the batch over, and makes the step's stream
wait for that copy only when the batch is handed out. On the CPU it is a plain ``batch.to(device)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class DevicePrefetcher:
    """Iterate ``batches`` (objects with ``to(device, non_blocking=...)`` and ``tensors()``, as ``Batch``) on
    ``device``, each copied one batch ahead on a side stream. ``data_seconds`` is the time ``next`` spent waiting
    for the loader, the only wait the caller sees (the copy itself overlaps the previous step)."""

    def __init__(self, batches: Iterable, device: torch.device | str):
        self.device = torch.device(device)
        self._batches = iter(batches)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._ahead = None
        self._started = False
        self.data_seconds = 0.0

    def __iter__(self) -> DevicePrefetcher:
        return self

    def _fetch(self):
        """The next loader batch, its copy to the device issued (on the side stream on CUDA); None at the end."""
        import time

        t = time.perf_counter()
        batch = next(self._batches, None)
        self.data_seconds += time.perf_counter() - t
        if batch is None:
            return None
        if self._stream is None:
            return batch.to(self.device)
        with torch.cuda.stream(self._stream):
            return batch.to(self.device, non_blocking=True)

    def __next__(self):
        if not self._started:
            self._started = True
            self._ahead = self._fetch()
        batch = self._ahead
        if batch is None:
            raise StopIteration
        if self._stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)  # the step waits for this batch's copy, not the next one's
            for t in batch.tensors():
                t.record_stream(current)  # its memory is not reused for a later copy while the step still reads it
        self._ahead = self._fetch()  # the next batch's copy starts now, beside this batch's step
        return batch

    def close(self) -> None:
        """Let go of the loader's iterator and of the batch fetched ahead (a DataLoader's workers stop once nothing
        holds its iterator); iterating after this raises StopIteration."""
        self._batches, self._ahead, self._started = iter(()), None, True
