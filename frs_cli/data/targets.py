"""Batching of per-view cached teacher targets: pad each level to the batch's largest grid and stack.

Pure tensor work on what ``frs_cli.cache.reader`` returns per view; it lives in data, beside ``collate``,
so the data package needs nothing from the cache.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def collate_teacher(items: list[dict]) -> dict[str, list[Tensor]]:
    """Per level, zero-pad every view's targets to the largest grid of the batch and stack them; per-view
    ``"scales"`` ``(C,)``, when present, are stacked to ``(B, C)``. In a DataLoader worker the batch is built in
    shared memory (see ``_batch_tensor``)."""
    out = {"features": [], "masks": []}
    for lv in range(len(items[0]["features"])):
        h = max(it["features"][lv].shape[-2] for it in items)
        w = max(it["features"][lv].shape[-1] for it in items)
        out["features"].append(_stack_padded([it["features"][lv] for it in items], h, w))
        out["masks"].append(_stack_padded([it["masks"][lv] for it in items], h, w))
    if "scales" in items[0]:
        out["scales"] = [torch.stack([it["scales"][lv] for it in items]) for lv in range(len(items[0]["scales"]))]
    return out
