"""Feature-Richness Score distillation losses (Du et al., NeurIPS 2021), as the authors' released code computes them.

Per FPN level l, with teacher classification logits ``z_t`` of shape ``(B, K, H, W)``::

    S_l    = max_k sigmoid(z_t)                                   # (B, H, W), detached
    L_FPN  = sum_l  sum_{b,c,h,w} S * (T - phi_l(F_s))^2  / N_l     # N_l = sum_{b,h,w} S (a sum, not a count)
    L_head = sum_l  sum_{b,k,h,w} S * BCE(sigmoid(z_s), sigmoid(z_t)) / N_l

Channels are summed, never averaged; levels are summed. These functions are unweighted: the caller applies
alpha, beta and the warm-up (``distill_weight``). ``valid`` marks the positions that hold real image data;
positions outside it (padding added only to batch images together) count neither in the sum nor in N_l.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frs_cli import fused_losses
from frs_cli.data.transforms import pad_boxes
from frs_cli.errors import FrsError

__all__ = ["FeatureAdapter", "distill_weight", "feature_loss", "frs_losses", "frs_masks", "gt_box_masks", "head_loss",
           "position_grid", "position_pixels", "position_weights", "positions_within"]


def frs_masks(cls_logits: Sequence[Tensor]) -> list[Tensor]:
    """Per level ``(B, K, H, W)`` logits -> ``(B, H, W)`` float32 mask in (0, 1), detached.

    ``max_k sigmoid(z) == sigmoid(max_k z)`` since sigmoid is increasing: the max is taken on logits.
    """
    return [torch.sigmoid(z.detach().amax(dim=1).float()) for z in cls_logits]


def _weights(masks: Sequence[Tensor], valid: Sequence[Tensor] | None, level: int) -> Tensor:
    m = masks[level].float()
    if valid is not None:
        m = m * valid[level].to(m.dtype)
    return m


def _check(name: str, level: int, a: Tensor, b: Tensor, mask: Tensor) -> None:
    if a.dim() != 4 or a.shape != b.shape or mask.shape != (a.shape[0], *a.shape[-2:]):
        raise FrsError(f"{name}: level {level} shapes do not line up: student {tuple(a.shape)}, "
                       f"teacher {tuple(b.shape)}, mask {tuple(mask.shape)}")


def _levels(name: str, *lists) -> int:
    n = len(lists[0])
    if any(x is not None and len(x) != n for x in lists):
        raise FrsError(f"{name}: expected the same number of levels in every argument, got "
                       f"{[None if x is None else len(x) for x in lists]}")
    return n


@functools.lru_cache(maxsize=256)
def position_grid(grids: tuple[tuple[int, int], ...], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Row, column and level of every position when the levels' ``H_l * W_l`` positions lie side by side
    (``(P,)`` long each; kept per level layout and device: a batch shape asks for it once)."""
    rows, cols, levels = [], [], []
    for lv, (h, w) in enumerate(grids):
        rows.append(torch.arange(h).repeat_interleave(w))
        cols.append(torch.arange(w).repeat(h))
        levels.append(torch.full((h * w,), lv))
    return tuple(torch.cat(x).to(device) for x in (rows, cols, levels))


@functools.lru_cache(maxsize=256)
def position_pixels(grids: tuple[tuple[int, int], ...], strides: tuple[int, ...],
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """The input pixel row and column where every position starts (its row and column times its level's stride),
    the levels side by side as in ``position_grid``; ``(P,)`` long each, kept per layout, strides and device."""
    rows, cols, levels = position_grid(grids, device)
    step = torch.tensor(strides, dtype=torch.int64).to(device)[levels]
    return rows * step, cols * step


def positions_within(sizes: Tensor, grids: Sequence[tuple[int, int]], strides: Sequence[int]) -> Tensor:
    """``(B, P)`` bool, True where a position lies over its image's real pixels: ``sizes`` is ``(B, 2)`` long, each
    image's valid (resized) height and width, on the device the result is wanted on. A position of stride ``s`` at
    row ``r`` is real iff ``r * s < h``, the same as ``r < ceil(h / s)`` (``geometry.level_valid_size``; a grid's
    rows are below its height already), and likewise for columns: two comparisons, no host work but the lookup."""
    row_px, col_px = position_pixels(tuple((int(h), int(w)) for h, w in grids), tuple(int(s) for s in strides),
                                     sizes.device)
    return (row_px < sizes[:, 0:1]) & (col_px < sizes[:, 1:2])


def _side_by_side(tensors: Sequence[Tensor], dims: int) -> Tensor:
    """Per level ``(B, [C,] H, W)`` -> ``(B, [C,] P)``, the levels' positions side by side (``dims`` leading dims)."""
    flat = [t.flatten(dims) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dims)


def position_weights(masks: Sequence[Tensor], valid: Sequence[Tensor] | Tensor | None = None) -> Tensor:
    """``(B, P)`` float32: each position's ``S_l / N_l`` (zero where not ``valid``), every level's ``H_l * W_l``
    positions side by side in level order; the weights both FRS losses sum their per-position terms with.

    Args:
        masks: per level ``S_l``, ``(B, H_l, W_l)``.
        valid: optional, True where the position holds real data: per level ``(B, H_l, W_l)`` bool, or already
            side by side, ``(B, P)`` bool.
    """
    w = _side_by_side(masks, 1).float()
    if valid is not None:
        flat = valid if isinstance(valid, Tensor) else _side_by_side(valid, 1)
        if flat.shape != w.shape:
            raise FrsError(f"FRS losses: valid positions {tuple(flat.shape)} do not line up with the masks' "
                           f"{tuple(w.shape)} (batch, positions of every level side by side)")
        w = w * flat
    index = position_grid(tuple((int(m.shape[-2]), int(m.shape[-1])) for m in masks), w.device)[2]
    n = torch.zeros(len(masks), dtype=torch.float32, device=w.device).index_add_(0, index, w.sum(0))
    return w * n.clamp_min(1e-12).reciprocal()[index]


def _check_levels(name: str, a: Sequence[Tensor], b: Sequence[Tensor], masks: Sequence[Tensor],
                  valid: Sequence[Tensor] | Tensor | None) -> None:
    for lv in range(_levels(name, a, b, masks, None if isinstance(valid, Tensor) else valid)):
        _check(name, lv, a[lv], b[lv], masks[lv])


def _feature_term(student_adapted: Sequence[Tensor], teacher: Sequence[Tensor], weights: Tensor) -> Tensor:
    if fused_losses.usable(*student_adapted, *teacher, weights) and not weights.requires_grad:
        return fused_losses.feature_term(student_adapted, [t.detach() for t in teacher], weights)  # two passes
    # the teacher is a fixed target, as in the head term: no gradient reaches it, whatever it carries
    d = torch.sub(_side_by_side(teacher, 2).detach().float(), _side_by_side(student_adapted, 2))  # float32 (B, C, P)
    return (weights * d.square().sum(dim=1)).sum()  # channels summed, not averaged


def _head_term(student_cls_logits: Sequence[Tensor], teacher_cls_logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    if fused_losses.usable(*student_cls_logits, *teacher_cls_logits, weights) and not weights.requires_grad:
        return fused_losses.head_term(student_cls_logits, teacher_cls_logits, weights)  # the same sums, two passes
    target = torch.sigmoid(_side_by_side(teacher_cls_logits, 2).detach().float())
    bce = F.binary_cross_entropy_with_logits(_side_by_side(student_cls_logits, 2).float(), target, reduction="none")
    return (weights * bce.sum(dim=1)).sum()  # summed over K


def feature_loss(student_adapted: Sequence[Tensor], teacher: Sequence[Tensor], masks: Sequence[Tensor],
                 valid: Sequence[Tensor] | None = None) -> Tensor:
    """``sum_l sum S (T - phi(F))^2 / sum S`` over ``(B, C, H, W)`` levels; scalar float32.

    Args:
        student_adapted: per level ``phi_l(F_s)``, ``(B, C, H, W)``, any float dtype.
        teacher: per level ``T_l``, same shape (fp16 from a cache is fine: computed in float32).
        masks: per level ``S_l``, ``(B, H, W)``.
        valid: optional per level ``(B, H, W)`` bool, True where the position holds real data.

    The levels are laid side by side and summed in one pass (a few kernels whatever the number of levels).
    """
    _check_levels("feature_loss", student_adapted, teacher, masks, valid)
    return _feature_term(student_adapted, teacher, position_weights(masks, valid))


def head_loss(student_cls_logits: Sequence[Tensor], teacher_cls_logits: Sequence[Tensor], masks: Sequence[Tensor],
              valid: Sequence[Tensor] | None = None) -> Tensor:
    """``sum_l sum S * BCE(sigmoid(z_s), sigmoid(z_t)) / sum S`` over ``(B, K, H, W)`` logits; scalar float32.

    BCE is taken from logits (``binary_cross_entropy_with_logits``), so it never takes the log of 0.
    """
    _check_levels("head_loss", student_cls_logits, teacher_cls_logits, masks, valid)
    return _head_term(student_cls_logits, teacher_cls_logits, position_weights(masks, valid))


def frs_losses(student_adapted: Sequence[Tensor], teacher: Sequence[Tensor], student_cls_logits: Sequence[Tensor] | None,
               teacher_cls_logits: Sequence[Tensor] | None, masks: Sequence[Tensor],
               valid: Sequence[Tensor] | Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``(feature_loss, head_loss)`` on the same masks, their weights computed once; the head loss is None when
    the logits are (GT-box imitation). ``valid`` as ``position_weights`` takes it."""
    _check_levels("feature_loss", student_adapted, teacher, masks, valid)
    weights = position_weights(masks, valid)
    head = None
    if student_cls_logits is not None:
        _check_levels("head_loss", student_cls_logits, teacher_cls_logits, masks, valid)
        head = _head_term(student_cls_logits, teacher_cls_logits, weights)
    return _feature_term(student_adapted, teacher, weights), head


def distill_weight(step: int, warmup_iters: int = 500) -> float:
    """The FRS loss warm-up ``w(t) = t / warmup_iters`` for the first iterations, then 1, with ``t`` the 0-based
    iteration, as the authors' code computes it (so the first iteration trains on L_GT alone)."""
    if warmup_iters <= 0:
        return 1.0
    return min(1.0, step / warmup_iters)


def gt_box_masks(boxes: Sequence[Tensor], level_sizes: Sequence[tuple[int, int]], strides: Sequence[int]) -> list[Tensor]:
    """Masks for imitation inside GT boxes only: 1 where a position's centre lies in a box, else 0.

    ``boxes``: per image ``(N, 4)`` xyxy view pixels. A box too small to contain any centre still marks
    the position under its own centre, so every object is imitated somewhere. Returns per level ``(B, H, W)``.
    """
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    padded, valid = pad_boxes(boxes, device)  # (B, M, 4), (B, M): batched, no per-image kernels
    out = []
    for (h, w), s in zip(level_sizes, strides):
        cy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        cx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        iny = (cy >= padded[..., 1:2]) & (cy <= padded[..., 3:4]) & valid[..., None]  # (B, M, H)
        inx = (cx >= padded[..., 0:1]) & (cx <= padded[..., 2:3])  # (B, M, W)
        level = (iny[..., :, None] & inx[..., None, :]).any(dim=1).float()  # (B, H, W)
        r = ((padded[..., 1] + padded[..., 3]) / 2 / s).long().clamp(0, h - 1)
        c = ((padded[..., 0] + padded[..., 2]) / 2 / s).long().clamp(0, w - 1)
        level.view(len(boxes), -1).scatter_reduce_(1, r * w + c, valid.float(), reduce="amax")
        out.append(level)
    return out


class FeatureAdapter(nn.Module):
    """phi: one 3x3 conv per level (padding 1, bias, no activation, PyTorch's default init), student -> teacher channels."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise FrsError(f"feature adapter: student has {len(student_channels)} FPN levels, "
                           f"teacher {len(teacher_channels)}; they must line up")
        self.convs = nn.ModuleList(nn.Conv2d(cs, ct, 3, padding=1) for cs, ct in zip(student_channels, teacher_channels))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [conv(f) for conv, f in zip(self.convs, features)]
