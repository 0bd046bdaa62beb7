"""Adaptive Training Sample Selection (ATSS, Zhang et al., CVPR 2020), the assignment GFL trains with.

For each ground-truth box: on every level take the ``topk`` anchors whose centres lie nearest the box's
centre; over these candidates, the IoU threshold is their IoU mean plus standard deviation; a candidate is
positive when its IoU reaches that threshold and its centre lies inside the box. An anchor positive for
several boxes goes to the one it overlaps most.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def box_centres(boxes_xyxy: Tensor) -> Tensor:
    """``(N, 4)`` xyxy -> ``(N, 2)`` centre (x, y)."""
    return (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2


def atss_assign(anchors_xyxy: Tensor, anchors_per_level: list[int], gt_boxes_xyxy: Tensor, topk: int = 9) -> Tensor:
    """Index of the assigned ground-truth box for each anchor, ``-1`` for background.

    Args:
        anchors_xyxy: ``(A, 4)`` anchors of one image, levels concatenated in order (view pixels).
        anchors_per_level: how many of the A anchors each level holds.
        gt_boxes_xyxy: ``(M, 4)`` ground-truth boxes (view pixels), M may be 0.
    Returns:
        ``(A,)`` int64 in ``[-1, M)``.
    """
    num = anchors_xyxy.shape[0]
    if gt_boxes_xyxy.numel() == 0:
        return torch.full((num,), -1, dtype=torch.int64, device=anchors_xyxy.device)
    gt = gt_boxes_xyxy.float()
    ious = box_iou(anchors_xyxy.float(), gt)  # (A, M)
    anchor_c = box_centres(anchors_xyxy.float())
    dist = torch.cdist(anchor_c, box_centres(gt))  # (A, M)
    candidates, start = [], 0
    for n in anchors_per_level:
        k = min(topk, n)
        candidates.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)  # (k, M)
        start += n
    cand = torch.cat(candidates, dim=0)  # (C, M) anchor indices, distinct within a column
    cand_iou = ious.gather(0, cand)  # (C, M)
    std = cand_iou.std(dim=0) if cand.shape[0] > 1 else torch.zeros_like(cand_iou[0])
    threshold = cand_iou.mean(dim=0) + std  # (M,)
    c = anchor_c[cand]  # (C, M, 2)
    margin = torch.stack([c[..., 0] - gt[:, 0], c[..., 1] - gt[:, 1], gt[:, 2] - c[..., 0], gt[:, 3] - c[..., 1]], -1)
    positive = (cand_iou >= threshold) & (margin.amin(dim=-1) > 0)  # (C, M)
    score = ious.new_full(ious.shape, -1.0)
    score.scatter_(0, cand, torch.where(positive, cand_iou, torch.full_like(cand_iou, -1.0)))
    best, which = score.max(dim=1)
    return torch.where(best >= 0, which, torch.full_like(which, -1))
