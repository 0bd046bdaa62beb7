"""Many tensors as views of one byte buffer (``PackedTensors``): a batch is pinned once, handed from a DataLoader
worker as one shared-memory storage, and copied to the device in one launch, then its tensors are views again.

The layout is a record of ``(offset, dtype, shape)`` per tensor, kept beside the buffer; every offset is a
multiple of ``ALIGN`` bytes, so each view starts at an address fit for its dtype on the host and on the device.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frs_cli.signals import leave_stop_to_parent

ALIGN = 64  # bytes; a multiple of every dtype's size, and of a cache line


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in a buffer: from byte ``offset``, ``shape`` elements of ``dtype``, contiguous."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_layout(specs: Sequence[tuple[torch.dtype, Sequence[int]]], align: int = ALIGN) -> tuple[Slot, ...]:
    """``(dtype, shape)`` per tensor -> its ``Slot``, in order, each starting at the next multiple of ``align``."""
    slots, end = [], 0
    for dtype, shape in specs:
        offset = -(-end // align) * align
        slot = Slot(offset, dtype, tuple(int(s) for s in shape))
        slots.append(slot)
        end = offset + slot.nbytes
    return tuple(slots)


def layout_nbytes(slots: Sequence[Slot]) -> int:
    return max((s.offset + s.nbytes for s in slots), default=0)


def views_of(buffer: Tensor, slots: Sequence[Slot]) -> list[Tensor]:
    """The tensors ``slots`` describe, as views of ``buffer`` (1-D uint8, on any device; no bytes are copied)."""
    out = []
    for s in slots:
        raw = buffer[s.offset : s.offset + s.nbytes]
        out.append(raw.view(s.dtype).view(s.shape))
    return out


# A DataLoader worker keeps its last WORKER_HOLD shared buffers referenced (train.worker_hold sets it in the
# trainer's workers through ``hold_in_worker``). While the worker still maps a buffer, the training process's drop
# of that batch (after pinning copies it, or after its step) only unmaps it, and the pages are freed here, in the
# worker, once later batches push the buffer out. Freeing them in the training process cost it about 0.3 ms per MB
# of batch on a 2-core CPU, 11 ms for an fp16 batch of 8 views (bench/batch_transfer.py, docs/BENCHMARKS.md
# session 14; on one H200 the hold took the cached step from 1.07-1.10x to 1.01-1.05x the plain one, session 15).
# A worker runs up to the trainer's prefetch_factor (4) batches ahead of the one the training process drops, so it
# holds that many and two more; two alone did not help. The price: up to WORKER_HOLD more batches per worker in
# shared memory.
WORKER_HOLD = 6
_held: deque[Tensor] = deque()


def hold_in_worker(count: int, worker_id: int) -> None:
    """A DataLoader ``worker_init_fn`` (bound with ``functools.partial``): this worker holds its last ``count``
    buffers, and leaves SIGTERM to the training process (``leave_stop_to_parent``)."""
    global WORKER_HOLD
    WORKER_HOLD = count
    leave_stop_to_parent(worker_id)


def allocate_buffer(nbytes: int) -> Tensor:
    """An uninitialised 1-D uint8 CPU tensor of ``nbytes``; in a DataLoader worker, in shared memory from the
    start, so that handing it to the main process moves no bytes (torch would otherwise copy it there), and held
    by the worker until ``WORKER_HOLD`` later buffers are made."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(nbytes)
    buffer = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))
    _held.append(buffer)
    while len(_held) > WORKER_HOLD:
        _held.popleft()
    return buffer


@dataclass(frozen=True)
class PackedTensors:
    """A buffer, its layout, and the views made of it (in layout order).

    ``views`` is kept so that an owner can tell whether its fields are still these views (``holds``): a field
    replaced after packing (a batch's teacher dropped, say) makes the owner fall back to moving tensor by tensor.
    """

    buffer: Tensor  # (nbytes,) uint8
    slots: tuple[Slot, ...]
    views: tuple[Tensor, ...]

    @staticmethod
    def allocate(specs: Sequence[tuple[torch.dtype, Sequence[int]]]) -> PackedTensors:
        """Uninitialised tensors of the given ``(dtype, shape)``s, packed (in shared memory in a worker)."""
        slots = plan_layout(specs)
        return PackedTensors.on(allocate_buffer(layout_nbytes(slots)), slots)

    @staticmethod
    def on(buffer: Tensor, slots: tuple[Slot, ...]) -> PackedTensors:
        return PackedTensors(buffer, slots, tuple(views_of(buffer, slots)))

    def __reduce__(self):
        # the buffer alone crosses a process boundary (one shared storage, not one per view); views made on arrival
        return PackedTensors.on, (self.buffer, self.slots)

    def holds(self, tensors: Sequence[Tensor]) -> bool:
        """Whether ``tensors`` are exactly this buffer's views, in order (the same objects)."""
        return len(tensors) == len(self.views) and all(a is b for a, b in zip(tensors, self.views))

    def pin_memory(self) -> PackedTensors:
        """The same tensors in page-locked host memory: one pinning for all of them."""
        return PackedTensors.on(self.buffer.pin_memory(), self.slots)

    def to(self, device, non_blocking: bool = True) -> PackedTensors:
        """The same tensors on ``device``: one copy of the buffer (none if it is there already)."""
        buffer = self.buffer.to(device, non_blocking=non_blocking)
        return self if buffer is self.buffer else PackedTensors.on(buffer, self.slots)


def map_packed(fn, packed: PackedTensors | None,
               tensors: Sequence[Tensor]) -> tuple[list[Tensor], PackedTensors | None]:
    """``fn`` (``pin_memory`` or ``to``, which tensors and ``PackedTensors`` both have) applied to ``tensors``: once to
    their buffer if ``packed`` holds them, returning the new views and buffer; else to each tensor, returning None
    for the buffer."""
    if packed is not None and packed.holds(tensors):
        packed = fn(packed)
        return list(packed.views), packed
    return [fn(t) for t in tensors], None
