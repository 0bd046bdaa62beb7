"""The GFL head: a classification tower and a box tower (GroupNorm), as in the GFL paper (Li et al., 2020).

Per position (one anchor), the classification branch predicts K logits whose sigmoid is the *joint*
class-and-localisation-quality score (trained by the quality focal loss), and the box branch predicts, for
each of the four side distances (left, top, right, bottom), logits over ``reg_max + 1`` bins: a general
distribution whose expectation is the distance in units of the level's stride.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class GFLClsHead(nn.Module):
    """Classification tower and logits conv: per-level features -> per-level ``(B, K, H, W)`` logits."""

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, prior_probability: float = 0.01):
        super().__init__()
        self.tower = _tower(in_channels, num_convs)
        self.logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        for m in [*self.tower.modules(), self.logits]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        # start every score at the prior, so the loss is not swamped by easy negatives (RetinaNet's init)
        nn.init.constant_(self.logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.logits(self.tower(f)) for f in features]


class GFLBoxHead(nn.Module):
    """Box tower and distribution conv: per-level features -> per-level ``(B, 4 * (reg_max + 1), H, W)`` logits,
    channel ``side * (reg_max + 1) + i`` is bin i of side ``side`` (0 left, 1 top, 2 right, 3 bottom)."""

    def __init__(self, in_channels: int, reg_max: int = 16, num_convs: int = 4, num_scales: int = 0):
        super().__init__()
        self.reg_max = reg_max
        # mmdetection's GFL multiplies each level's distribution logits by a learnt scale; 0: none (frs's own)
        self.scales = nn.Parameter(torch.ones(num_scales)) if num_scales else None
        self.tower = _tower(in_channels, num_convs)
        self.distribution = nn.Conv2d(in_channels, 4 * (reg_max + 1), 3, padding=1)
        for m in [*self.tower.modules(), self.distribution]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        out = [self.distribution(self.tower(f)) for f in features]
        if self.scales is not None:
            out = [scale * d.float() for scale, d in zip(self.scales, out)]
        return out


class GFLHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, reg_max: int = 16, num_convs: int = 4, num_scales: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.classification = GFLClsHead(in_channels, num_classes, num_convs)
        self.box = GFLBoxHead(in_channels, reg_max, num_convs, num_scales)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.classification(features), self.box(features)


def expected_distance(logits: Tensor, reg_max: int) -> Tensor:
    """``(N, 4 * (reg_max + 1))`` distribution logits -> ``(N, 4)`` distances in strides: the integral
    ``sum_i softmax(logits)_i * i`` over bins ``0..reg_max`` of each side."""
    probs = logits.float().view(-1, 4, reg_max + 1).softmax(dim=-1)
    return probs @ torch.arange(reg_max + 1, dtype=probs.dtype, device=probs.device)
