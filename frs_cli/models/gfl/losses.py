"""GFL's training losses, from the paper's definitions (Li et al., "Generalized Focal Loss", NeurIPS 2020).

- Quality focal loss on the joint score sigma (sigmoid of a class logit), against a soft target y: the IoU
  of the predicted box with its ground truth at the positive's class, 0 everywhere else::

      QFL(sigma) = -|y - sigma|**beta * ((1 - y) * log(1 - sigma) + y * log(sigma)),   beta = 2

- Distribution focal loss on each side distance y (in strides, 0 <= y < reg_max), with y_l = floor(y),
  y_r = y_l + 1 and S the softmax over the side's bins::

      DFL(S) = -((y_r - y) * log S_{y_l} + (y - y_l) * log S_{y_r})
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Element-wise QFL: ``logits`` and soft ``target`` in [0, 1] of the same shape -> loss of that shape (float32)."""
    logits, target = logits.float(), target.float()
    scale = (target - logits.sigmoid()).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * scale


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """DFL per distance: ``logits (N, reg_max + 1)``, ``target (N,)`` in ``[0, reg_max)`` -> ``(N,)`` float32."""
    logits, target = logits.float(), target.float()
    left = target.floor().long()
    w_left = (left + 1).float() - target
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, left + 1, reduction="none") * (1 - w_left))


def paired_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """IoU of each row of ``a (N, 4)`` with the same row of ``b (N, 4)`` -> ``(N,)``."""
    lt = torch.maximum(a_xyxy[:, :2], b_xyxy[:, :2])
    rb = torch.minimum(a_xyxy[:, 2:], b_xyxy[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    return inter / (_area(a_xyxy) + _area(b_xyxy) - inter).clamp(min=1e-6)


def _area(boxes_xyxy: Tensor) -> Tensor:
    return (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=0).prod(dim=1)


def side_distances(points: Tensor, boxes_xyxy: Tensor, strides: Tensor) -> Tensor:
    """``(N, 2)`` points, ``(N, 4)`` boxes, ``(N,)`` strides -> ``(N, 4)`` left, top, right, bottom in strides."""
    d = torch.cat([points - boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - points], dim=1)
    return d / strides[:, None]


def boxes_from_distances(points: Tensor, distances: Tensor, strides: Tensor) -> Tensor:
    """Inverse of ``side_distances``: ``(N, 4)`` distances in strides -> ``(N, 4)`` xyxy boxes."""
    d = distances * strides[:, None]
    return torch.cat([points - d[:, :2], points + d[:, 2:]], dim=1)
