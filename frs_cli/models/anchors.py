"""Anchors on a fixed-stride grid, unrounded: the priors of mmdetection's models, for the adapters that load them.

torchvision's ``AnchorGenerator`` rounds each base anchor to whole pixels and derives a level's stride from
the padded image (``image size // grid size``: 114 px instead of 128 at P7 of an 800-px-high batch).
mmdetection's generators keep fractional base anchors and use each level's nominal stride. A checkpoint
trained with the one decodes a few pixels off with the other, so the converted models use this generator.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


class GridAnchors(AnchorGenerator):
    """Per level: anchors of ``sizes[l]`` (px) x ``aspect_ratios`` (height / width), centred at
    ``((x + offset) * stride, (y + offset) * stride)`` for every feature position.

    ``forward(image_list, feature_maps)`` returns, as torchvision's generator, one ``(sum_l H_l*W_l*A, 4)``
    float32 xyxy tensor per image, position-major and anchor-minor within a level (ratio-major, then size).
    ``offset`` 0 for mmdetection's anchor heads (RetinaNet, GFL, the RPN), 0.5 for its point heads (FCOS).
    """

    def __init__(self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...],
                 strides: tuple[int, ...], offset: float = 0.0):
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides)
        self.offset = offset

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        scales = torch.as_tensor(scales, dtype=torch.float64, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64, device=device)
        h_ratios = torch.sqrt(ratios)
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).to(dtype)  # (A, 4), not rounded

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        device = feature_maps[0].device
        per_level = []
        for fmap, stride, base in zip(feature_maps, self.strides, self.cell_anchors):
            h, w = fmap.shape[-2:]
            ys = (torch.arange(h, dtype=torch.float32, device=device) + self.offset) * stride
            xs = (torch.arange(w, dtype=torch.float32, device=device) + self.offset) * stride
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([x, y, x, y], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            per_level.append((shifts + base.to(device=device, dtype=torch.float32)[None]).reshape(-1, 4))
        anchors = torch.cat(per_level)
        return [anchors for _ in image_list.image_sizes]


def doubling_anchors(base: float, ratios: tuple[float, ...] = (1.0,), levels: int = 5, scales_per_octave: int = 1,
                     strides: tuple[int, ...] | None = None, offset: float = 0.0) -> AnchorGenerator:
    """The anchors every family uses: at level l (finest first) sizes ``base * 2**l * 2**(i / scales_per_octave)``
    for ``i < scales_per_octave``, each in every aspect ratio of ``ratios`` (height / width).

    Without ``strides``, torchvision's ``AnchorGenerator`` (sizes rounded down to whole pixels, strides from the
    padded image); with them, ``GridAnchors`` (unrounded sizes on those nominal strides, centres at
    ``(x + offset) * stride``: mmdetection's priors).
    """
    grid = strides is not None
    sizes = tuple(tuple(_size(base * 2**lv * 2 ** (i / scales_per_octave), grid) for i in range(scales_per_octave))
                  for lv in range(levels))
    aspect = (tuple(ratios),) * levels
    return GridAnchors(sizes, aspect, tuple(strides), offset) if grid else AnchorGenerator(sizes, aspect)


def _size(size: float, exact: bool) -> float | int:
    return float(size) if exact else int(size)


def octave_anchors(strides: tuple[int, ...], octave_scale: float, scales_per_octave: int,
                   ratios: tuple[float, ...]) -> GridAnchors:
    """mmdetection's ``octave_base_scale`` anchors on doubling ``strides``: at stride s, sizes
    ``octave_scale * s * 2**(i / n)``."""
    return doubling_anchors(octave_scale * strides[0], ratios, len(strides), scales_per_octave, strides)
