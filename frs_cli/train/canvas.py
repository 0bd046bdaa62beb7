"""The teacher's canvas: every view is seen by the teacher alone, padded only to its own stride multiple.

A batch pads its images to the largest of them, and a detector's output at a real pixel depends on that
padding (convolutions near the border read it, GroupNorm takes statistics over the whole grid). A cache
cannot know which batch a view will later land in, so ``teacher-cache`` runs the teacher on each view's own
canvas (``ViewGeometry.padded_size``), and the live teacher and the cached head must do the same to compute
the same method (docs/cache-format.md, "What the teacher sees"). These helpers split a mixed batch into
groups of one canvas, run a function on each group at its own size and put the results back on the batch
grid, zero beyond each view's own grid (positions that the ``valid`` masks give no weight anyway).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from frs_cli.data.geometry import ViewGeometry, level_grid_size

__all__ = ["canvas_groups", "crop_stack", "level_grids", "on_own_canvas"]


def canvas_groups(geometries: Sequence[ViewGeometry]) -> list[tuple[tuple[int, int], list[int]]]:
    """``[(padded_size, [batch indices])]``: the batch's views grouped by their own canvas, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(geometries):
        groups.setdefault(g.padded_size, []).append(i)
    return list(groups.items())


def level_grids(padded_size: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Per level the grid a canvas of ``padded_size`` gives (each stride-2 step rounds up, as the detectors do)."""
    return [level_grid_size(padded_size, round(math.log2(s))) for s in strides]


def on_own_canvas(
    fn: Callable[[list[int], tuple[int, int]], list[list[Tensor]]],
    geometries: Sequence[ViewGeometry],
    batch_grids: Sequence[tuple[int, int]],
) -> list[list[Tensor]]:
    """Run ``fn`` once per canvas group and assemble its outputs on the batch grid.

    Args:
        fn: ``fn(indices, padded_size)`` returns a list of outputs (e.g. features, logits), each a list per level
            of ``(len(indices), C, h_l, w_l)`` tensors on that canvas's grid.
        geometries: the batch's views, in batch order.
        batch_grids: per level the batch's ``(H_l, W_l)``.
    Returns:
        The same outputs per level as ``(B, C, H_l, W_l)``, batch order, zero outside each view's own grid.
        A batch of one canvas equal to the batch grid is returned as ``fn`` gave it (no copy).
    """
    groups = canvas_groups(geometries)
    results = [(idx, fn(idx, size)) for size, idx in groups]
    if len(results) == 1 and all(tuple(t.shape[-2:]) == tuple(g)
                                 for out in results[0][1] for t, g in zip(out, batch_grids)):
        return results[0][1]
    assembled: list[list[Tensor]] | None = None
    for idx, outputs in results:
        if assembled is None:
            assembled = [[t.new_zeros((len(geometries), *t.shape[1:-2], *grid)) for t, grid in zip(out, batch_grids)]
                         for out in outputs]
        for full_levels, out in zip(assembled, outputs):
            for full, t in zip(full_levels, out):
                h, w = t.shape[-2:]
                for j, i in enumerate(idx):  # per-image slices: no index tensor copied to the device
                    full[i, ..., :h, :w] = t[j]
    return assembled


def crop_stack(tensors: Tensor, indices: Sequence[int], size: tuple[int, int]) -> Tensor:
    """``(B, ..., H, W)`` -> ``(len(indices), ..., h, w)``: the given views, cropped to a canvas's grid."""
    h, w = size
    if len(indices) == tensors.shape[0] and tuple(tensors.shape[-2:]) == (h, w):
        return tensors
    return torch.stack([tensors[i, ..., :h, :w] for i in indices])
