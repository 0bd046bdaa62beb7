"""Cached teacher targets as one typed value (``CachedTargets``): a view's as the reader builds it, a batch's as
``collate`` stacks them, pinned and moved to the device with the batch.

Plain tensors only: decoding the features is the cache's (``frs_cli.cache.encoding``), done after the
host-to-device copy; this module lives in data, beside ``collate``, so the data package needs nothing from the
cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from frs_cli.errors import DataError


def _batch_tensor(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """An uninitialised tensor of ``like``'s dtype; in a DataLoader worker, in shared memory from the start, so
    that handing the batch to the main process moves no bytes (torch would otherwise copy it there)."""
    if torch.utils.data.get_worker_info() is None:
        return like.new_empty(shape)
    numel = 1
    for s in shape:
        numel *= s
    storage = like.untyped_storage()._new_shared(numel * like.element_size())
    return like.new_empty(0).set_(storage, 0, shape)


def _stack_padded(parts: list[Tensor], h: int, w: int) -> Tensor:
    """``(..., h_i, w_i)`` tensors -> ``(B, ..., h, w)``, each zero-padded at the bottom and right; only the
    padding is zeroed (a view's own bytes are written once)."""
    out = _batch_tensor(parts[0], (len(parts), *parts[0].shape[:-2], h, w))
    for i, p in enumerate(parts):
        ph, pw = p.shape[-2:]
        out[i, ..., :ph, :pw] = p
        if ph < h:
            out[i, ..., ph:, :] = 0
        if pw < w:
            out[i, ..., :ph, pw:] = 0
    return out


@dataclass
class CachedTargets:
    """One view's (``(C', H_l, W_l)``, ``(H_l, W_l)``, ``(C,)``) or one batch's (``(B, ...)`` of those) cached
    teacher targets, per level:

    - ``features``: as the cache carries them (its encoding's tensor dtype: float16, bfloat16, float32, int8
      codes or uint8 bytes of packed codes; C' channels), to be decoded on the device by that encoding;
    - ``masks``: the FRS masks, float16;
    - ``scales``: the scaled encodings' per-channel float32 scales, else None.
    """

    features: list[Tensor]
    masks: list[Tensor]
    scales: list[Tensor] | None = None

    @staticmethod
    def collate(items: Sequence[CachedTargets]) -> CachedTargets:
        """Views -> a batch: per level, every view's features and mask zero-padded at the bottom and right to the
        largest grid of the batch and stacked; scales stacked to ``(B, C)``. In a DataLoader worker the batch is
        built in shared memory (see ``_batch_tensor``)."""
        if len({it.scales is None for it in items}) > 1:
            raise DataError("cached targets: expected every view of a batch with per-channel scales or none, "
                            "got a mix")
        features, masks = [], []
        for lv in range(len(items[0].features)):
            h = max(it.features[lv].shape[-2] for it in items)
            w = max(it.features[lv].shape[-1] for it in items)
            features.append(_stack_padded([it.features[lv] for it in items], h, w))
            masks.append(_stack_padded([it.masks[lv] for it in items], h, w))
        scales = None
        if items[0].scales is not None:
            scales = [torch.stack([it.scales[lv] for it in items]) for lv in range(len(items[0].scales))]
        return CachedTargets(features, masks, scales)

    def _map(self, fn) -> CachedTargets:
        return CachedTargets([fn(t) for t in self.features], [fn(t) for t in self.masks],
                             None if self.scales is None else [fn(t) for t in self.scales])

    def pin_memory(self) -> CachedTargets:
        """The same targets in page-locked host memory (what the DataLoader's pin-memory thread calls)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = True) -> CachedTargets:
        """The same targets on ``device`` (no copy for tensors already there)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))
