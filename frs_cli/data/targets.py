"""Cached teacher targets as one typed value (``CachedTargets``): a view's as the reader builds it, a batch's as
``collate`` stacks them, pinned and moved to the device with the batch.

Plain tensors only: decoding the features is the cache's (``frs_cli.cache.encoding``), done after the
host-to-device copy; this module lives in data, beside ``collate``, so the data package needs nothing from the
cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from frs_cli.data.packed import PackedTensors, map_packed
from frs_cli.data.transforms import pad_into
from frs_cli.errors import DataError


@dataclass
class CachedTargets:
    """One view's (``(C', H_l, W_l)``, ``(H_l, W_l)``, ``(C,)``) or one batch's (``(B, ...)`` of those) cached
    teacher targets, per level:

    - ``features``: as the cache carries them (its encoding's tensor dtype: float16, bfloat16, float32, int8
      codes or uint8 bytes of packed codes; C' channels), to be decoded on the device by that encoding;
    - ``masks``: the FRS masks, float16;
    - ``scales``: the scaled encodings' per-channel float32 scales, else None.

    ``packed``: set by ``collate``, the one buffer all of these are views of (see ``data.packed``); pinning and
    moving then take one call each. Targets built otherwise, or changed since, are moved tensor by tensor.
    """

    features: list[Tensor]
    masks: list[Tensor]
    scales: list[Tensor] | None = None
    packed: PackedTensors | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def batch_specs(items: Sequence[CachedTargets]) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        """``(dtype, shape)`` of each tensor of the batch of ``items``, in ``tensors()`` order."""
        if len({it.scales is None for it in items}) > 1:
            raise DataError("cached targets: expected every view of a batch with per-channel scales or none, "
                            "got a mix")
        features, masks, scales = [], [], []
        for lv in range(len(items[0].features)):
            h = max(it.features[lv].shape[-2] for it in items)
            w = max(it.features[lv].shape[-1] for it in items)
            f, m = items[0].features[lv], items[0].masks[lv]
            features.append((f.dtype, (len(items), *f.shape[:-2], h, w)))
            masks.append((m.dtype, (len(items), *m.shape[:-2], h, w)))
        for s in items[0].scales or []:
            scales.append((s.dtype, (len(items), *s.shape)))
        return [*features, *masks, *scales]

    @staticmethod
    def fill_batch(items: Sequence[CachedTargets], out: Sequence[Tensor]) -> CachedTargets:
        """Write the batch of ``items`` into ``out`` (uninitialised tensors of ``batch_specs(items)``): per level
        every view's features and mask zero-padded at the bottom and right to the largest grid, scales stacked."""
        levels = len(items[0].features)
        for lv in range(levels):
            pad_into(out[lv], [it.features[lv] for it in items])
            pad_into(out[levels + lv], [it.masks[lv] for it in items])
        for lv in range(len(out) - 2 * levels):
            torch.stack([it.scales[lv] for it in items], out=out[2 * levels + lv])
        return CachedTargets(list(out[:levels]), list(out[levels : 2 * levels]),
                             list(out[2 * levels :]) if items[0].scales is not None else None)

    @staticmethod
    def collate(items: Sequence[CachedTargets]) -> CachedTargets:
        """Views -> a batch (see ``fill_batch``), every tensor a view of one buffer; in a DataLoader worker the
        buffer is in shared memory (see ``packed.allocate_buffer``)."""
        packed = PackedTensors.allocate(CachedTargets.batch_specs(items))
        batch = CachedTargets.fill_batch(items, packed.views)
        batch.packed = packed
        return batch

    def tensors(self) -> list[Tensor]:
        """Features, masks and scales (if any), level by level, in that order."""
        return [*self.features, *self.masks, *(self.scales or [])]

    def with_tensors(self, tensors: Sequence[Tensor], packed: PackedTensors | None = None) -> CachedTargets:
        """Targets of the same levels made of ``tensors`` (in ``tensors()`` order)."""
        levels = len(self.features)
        return CachedTargets(list(tensors[:levels]), list(tensors[levels : 2 * levels]),
                             None if self.scales is None else list(tensors[2 * levels :]), packed)

    def pin_memory(self) -> CachedTargets:
        """The same targets in page-locked host memory (what the DataLoader's pin-memory thread calls)."""
        return self.with_tensors(*map_packed(lambda t: t.pin_memory(), self.packed, self.tensors()))

    def to(self, device, non_blocking: bool = True) -> CachedTargets:
        """The same targets on ``device`` (no copy for tensors already there)."""
        return self.with_tensors(*map_packed(lambda t: t.to(device, non_blocking=non_blocking), self.packed,
                                             self.tensors()))
