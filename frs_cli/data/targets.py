"""Batching of per-view cached teacher targets: pad each level to the batch's largest grid and stack.

Pure tensor work on what ``frs_cli.cache.reader`` returns per view; it lives in data, beside ``collate``,
so the data package needs nothing from the cache.
"""

from __future__ import annotations

import torch
from torch import Tensor


def collate_teacher(items: list[dict]) -> dict[str, list[Tensor]]:
    """Per level, zero-pad every view's targets to the largest grid of the batch and stack them; per-view
    ``"scales"`` ``(C,)``, when present, are stacked to ``(B, C)``."""
    out = {"features": [], "masks": []}
    for lv in range(len(items[0]["features"])):
        h = max(it["features"][lv].shape[-2] for it in items)
        w = max(it["features"][lv].shape[-1] for it in items)
        f0 = items[0]["features"][lv]
        feats = f0.new_zeros((len(items), f0.shape[0], h, w))
        masks = items[0]["masks"][lv].new_zeros((len(items), h, w))
        for i, it in enumerate(items):
            f, m = it["features"][lv], it["masks"][lv]
            feats[i, :, : f.shape[-2], : f.shape[-1]] = f
            masks[i, : m.shape[-2], : m.shape[-1]] = m
        out["features"].append(feats)
        out["masks"].append(masks)
    if "scales" in items[0]:
        out["scales"] = [torch.stack([it["scales"][lv] for it in items]) for lv in range(len(items[0]["scales"]))]
    return out
