"""One CUDA graph of a function of fixed-shape tensors: the inputs copied in, one replay, the captured outputs out.

A frozen network run on inputs of one shape launches the same kernels every time. Replaying them as one graph
costs one launch instead of hundreds, which matters where the Python thread, not the device, bounds the loop
(teacher-cache's teacher pass, the cached teacher head in ``distill --cache``).

The outputs of ``CapturedCall.run`` live in the graph's memory: the next replay of that graph, or of any graph
captured into the same pool, may overwrite them. Callers copy them (``clone``) when they outlive the next
replay; a caller that consumes them before replaying again (one training step) need not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["CapturedCall", "held_bytes"]


def held_bytes(*groups) -> int:
    """Bytes of the tensors in ``groups`` (iterables of tensors; None entries skipped): what a graph keeps allocated
    for its static inputs, outputs or gradients at the least. A capture's growth of ``memory_reserved`` can read 0
    (its allocations fit segments already reserved, or the allocator released cached ones meanwhile), so a
    graph's memory is counted as at least this."""
    return sum(t.numel() * t.element_size() for group in groups for t in group if t is not None)


class CapturedCall:
    """``fn(*inputs) -> list[Tensor]`` captured once on ``examples`` (their shapes, dtypes, strides and device).

    ``pool``: a ``torch.cuda.graph_pool_handle()`` shared by graphs that never run concurrently (each one's
    outputs are consumed before another replays). The capture is thread-local: other threads may keep copying
    and waiting on events meanwhile (the writer's, the DataLoader's pin-memory thread). It raises whatever the
    capture raises; callers run such shapes eagerly.
    """

    def __init__(self, fn: Callable[..., list[Tensor]], examples: Sequence[Tensor], pool):
        self.inputs = [x.clone(memory_format=torch.preserve_format) for x in examples]
        self.graph = torch.cuda.CUDAGraph()
        device = self.inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn(*self.inputs)  # once more on a side stream, as capture wants (lazy handles, allocator)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.outputs = list(fn(*self.inputs))

    def run(self, *xs: Tensor) -> list[Tensor]:
        """Copy ``xs`` into the captured inputs, replay on the current stream; the captured outputs (not copies)."""
        for static, x in zip(self.inputs, xs):
            static.copy_(x)
        self.graph.replay()
        return self.outputs
