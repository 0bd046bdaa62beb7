"""How the cached FRS masks sit relative to the ground truth: the outside-the-box signal FRS relies on.

Per level, over the real-image positions of every cached view (a position is the centre of its cell,
``((c + 0.5) * stride, (r + 0.5) * stride)`` in view pixels):

- ``mean_inside`` / ``mean_outside``: mean S at positions inside any GT box / inside none;
- ``outside_mass``: the share of the level's total mask mass at positions inside no GT box;
- each of the three None (``null`` in JSON, "–" in tables) where it is undefined: a mean over no positions (no
  position inside a GT box, as in views without objects, or none outside), a share of no mass;
- ``high_far``: how many positions have S >= ``high`` and lie farther than ``margin`` strides from every
  GT box (objects the annotation misses, look-alikes, context), and ``high_total`` of all positions with S >= high.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from frs_cli.data.coco import CocoViews
from frs_cli.data.geometry import level_valid_size
from frs_cli.data.transforms import apply_to_boxes
from frs_cli.errors import CacheFormatError
from frs_cli.progress import NullProgress, Progress


@dataclass
class LevelMaskStats:
    level: str
    stride: int
    positions: int
    mean_inside: float | None
    mean_outside: float | None
    outside_mass: float | None
    high_far: int
    high_total: int

    def to_dict(self) -> dict:
        return asdict(self)


def _inside(boxes: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, pad: float) -> torch.Tensor:
    """(H, W) bool: cell centre inside any box grown by ``pad`` px on every side."""
    if boxes.numel() == 0:
        return torch.zeros((len(cy), len(cx)), dtype=torch.bool)
    iny = (cy[None, :] >= boxes[:, 1:2] - pad) & (cy[None, :] <= boxes[:, 3:4] + pad)
    inx = (cx[None, :] >= boxes[:, 0:1] - pad) & (cx[None, :] <= boxes[:, 2:3] + pad)
    return (iny[:, :, None] & inx[:, None, :]).any(dim=0)


def _non_finite(cache, k: int, level: str, mask: torch.Tensor) -> None:
    """CacheFormatError naming the view whose mask holds NaN or infinite values (statistics over it would be nan)."""
    view = cache.view_name(k)
    bad = int((~torch.isfinite(mask)).sum())
    raise CacheFormatError(f"cache {cache.path!r}: the {level} mask of image {int(cache.image_id[k])} ({view}) holds "
                           f"{bad} non-finite values of {mask.numel()}; expected FRS scores in [0, 1]",
                           hint=f"frs cache verify {cache.path} lists damaged views, and teacher-cache --resume "
                                "rewrites them")


def mask_statistics(cache, dataset: CocoViews, high: float = 0.5, margin: float = 1.0,
                    max_views: int | None = None, progress: Progress | None = None) -> list[LevelMaskStats]:
    """Statistics per level over the cached views written so far (all of a complete cache; the first ``max_views``
    of them when given)."""
    progress = progress or NullProgress()
    views = np.flatnonzero(cache.written)[:max_views]
    if len(views) == 0:
        raise CacheFormatError(f"cache {cache.path!r}: expected written views to measure, got none of {len(cache)} "
                               "(an incomplete cache)", hint="run teacher-cache with --resume to finish it")
    acc = [{"n": 0, "s_in": 0.0, "n_in": 0, "s_out": 0.0, "n_out": 0, "far": 0, "high": 0} for _ in cache.levels]
    progress.start("mask statistics", len(views), unit="view")
    for k in map(int, views):
        geom = cache.view_geometry(k)
        rec = dataset.index.records[dataset.index.position[int(cache.image_id[k])]]
        boxes = apply_to_boxes(torch.from_numpy(rec.boxes_xyxy), geom)
        masks = cache.read(k).masks
        for a, lv, m in zip(acc, cache.levels, masks):
            vh, vw = level_valid_size(geom.valid_size, lv.stride, tuple(m.shape))
            m = m[:vh, :vw].float()
            if not bool(torch.isfinite(m).all()):
                _non_finite(cache, k, lv.name, m)
            cy = (torch.arange(vh, dtype=torch.float32) + 0.5) * lv.stride
            cx = (torch.arange(vw, dtype=torch.float32) + 0.5) * lv.stride
            inside = _inside(boxes, cy, cx, 0.0)
            near = _inside(boxes, cy, cx, margin * lv.stride)
            a["n"] += m.numel()
            a["s_in"] += float(m[inside].sum())
            a["n_in"] += int(inside.sum())
            a["s_out"] += float(m[~inside].sum())
            a["n_out"] += int((~inside).sum())
            hot = m >= high
            a["far"] += int((hot & ~near).sum())
            a["high"] += int(hot.sum())
        progress.update(1)
    progress.stop()
    out = []
    for a, lv in zip(acc, cache.levels):
        total = a["s_in"] + a["s_out"]
        out.append(LevelMaskStats(
            level=lv.name, stride=lv.stride, positions=a["n"],
            mean_inside=a["s_in"] / a["n_in"] if a["n_in"] else None,
            mean_outside=a["s_out"] / a["n_out"] if a["n_out"] else None,
            outside_mass=a["s_out"] / total if total > 0 else None,
            high_far=a["far"], high_total=a["high"],
        ))
    return out
