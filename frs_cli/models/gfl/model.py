"""GFL (Generalized Focal Loss, Li et al. 2020) on torchvision's ResNet-FPN, anchors and box ops.

One square anchor per position (octave scale 8: 64 px at P3, doubling per level) serves only the ATSS
assignment; boxes are regressed from the anchor's centre as four side distributions (``reg_max = 16``).
Training loss, with N_pos the positives of the batch (the paper's normalisation)::

    L = [ sum QFL  +  2.0 * sum_pos GIoU(box, gt)  +  0.25 * sum_pos sum_sides DFL ] / N_pos

Inference: score = sigmoid(class logit) (the joint class-quality score), per level the top 1000 above
``score_thresh``, decoded boxes clipped to the image, per-class NMS, the best ``detections_per_img``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from frs_cli.models.anchors import doubling_anchors
from frs_cli.models.gfl.assign import atss_assign, box_centres
from frs_cli.models.gfl.head import GFLHead, expected_distance
from frs_cli.models.gfl.losses import (
    boxes_from_distances,
    distribution_focal_loss,
    paired_iou,
    quality_focal_loss,
    side_distances,
)
from frs_cli.models.retinanet_loss import giou_loss, pad_targets

QFL_BETA = 2.0
GIOU_WEIGHT = 2.0
DFL_WEIGHT = 0.25  # the paper's 1/4: DFL averaged over the four sides
ATSS_TOPK = 9
TOPK_CANDIDATES = 1000


def _flatten(per_level: list[Tensor]) -> Tensor:
    """``(B, C, H, W)`` per level -> ``(B, sum H*W, C)``, positions row-major, levels in order (the anchor order)."""
    return torch.cat([t.flatten(2).transpose(1, 2) for t in per_level], dim=1)


class GFL(nn.Module):
    """Backbone + FPN, GFL head, anchors; ``compute_loss`` and ``postprocess_detections`` on head outputs."""

    def __init__(self, backbone: nn.Module, num_classes: int, strides: list[int], anchor_size: int, reg_max: int = 16,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100,
                 mmdet: bool = False):
        super().__init__()
        self.backbone = backbone
        # mmdet: mmdetection's layout (a learnt scale per level on the box logits; unrounded anchors on the
        # nominal strides)
        self.head = GFLHead(backbone.out_channels, num_classes, reg_max, num_scales=len(strides) if mmdet else 0)
        self.drop_empty = mmdet  # mmdetection drops boxes of zero width or height before NMS (min_bbox_size 0)
        # torchvision's anchors, or (mmdet) unrounded ones on the nominal strides
        self.anchor_generator = doubling_anchors(anchor_size, levels=len(strides),
                                                 strides=tuple(strides) if mmdet else None)
        self.strides = list(strides)
        self.num_classes, self.reg_max = num_classes, reg_max
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def _anchor_strides(self, per_level: list[int], device) -> Tensor:
        return torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(per_level, self.strides)])

    def compute_loss(self, targets: list[dict[str, Tensor]], cls_logits: list[Tensor], distributions: list[Tensor],
                     anchors: list[Tensor]) -> dict[str, Tensor]:
        """Losses ``quality_focal``, ``giou`` and ``distribution_focal``, already weighted (scalars, float32).

        ``cls_logits`` per level ``(B, K, H, W)``, ``distributions`` per level ``(B, 4 * (reg_max + 1), H, W)``,
        ``anchors`` per image ``(sum H*W, 4)``; targets' boxes are xyxy view pixels, labels ``0..K-1``.
        """
        per_level = [t.shape[-2] * t.shape[-1] for t in cls_logits]
        logits, dists = _flatten(cls_logits), _flatten(distributions)  # (B, A, K), (B, A, 4(R+1))
        b, n, k = logits.shape
        # every anchor of the batch at once, the positives picked by masks rather than by their indices, so that
        # no step waits for the device to count them (torch.nonzero would, once per image)
        matched = torch.stack([atss_assign(a, per_level, t["boxes"], ATSS_TOPK) for a, t in zip(anchors, targets)])
        pos = (matched >= 0).reshape(-1)  # (B*A,)
        boxes, labels, _ = pad_targets(targets, logits.device)
        which = matched.clamp(min=0)
        gt = torch.gather(boxes, 1, which[..., None].expand(b, n, 4)).reshape(-1, 4)  # a positive's box
        points = box_centres(torch.stack(anchors).reshape(-1, 4))
        s = self._anchor_strides(per_level, logits.device).repeat(b)
        dist = dists.reshape(b * n, -1)
        pred = boxes_from_distances(points, expected_distance(dist, self.reg_max), s)
        # the soft target: how well a positive's prediction localises its box, at its class (no gradient)
        quality = torch.where(pos, paired_iou(pred.detach(), gt), 0.0).view(b, n, 1)
        at_class = torch.gather(labels, 1, which)[..., None] == torch.arange(k, device=logits.device)
        quality_target = torch.where(at_class, quality, 0.0)
        num_pos = pos.sum().clamp(min=1)
        qfl = quality_focal_loss(logits, quality_target, QFL_BETA).sum() / num_pos
        giou = torch.where(pos, giou_loss(pred, gt), 0.0).sum() / num_pos
        target = side_distances(points, gt, s).clamp(min=0, max=self.reg_max - 0.01)  # (B*A, 4)
        dfl = distribution_focal_loss(dist.float().reshape(-1, self.reg_max + 1), target.reshape(-1)).view(-1, 4)
        dfl = torch.where(pos[:, None], dfl, 0.0).sum() / num_pos
        return {"quality_focal": qfl, "giou": GIOU_WEIGHT * giou, "distribution_focal": DFL_WEIGHT * dfl}

    @torch.no_grad()
    def postprocess_detections(self, cls_logits: list[Tensor], distributions: list[Tensor], anchors: list[Tensor],
                               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (N, 4) xyxy view pixels, "scores": (N,), "labels": (N,) int64}``, N <= detections_per_img."""
        per_level = [t.shape[-2] * t.shape[-1] for t in cls_logits]
        k = self.num_classes
        results = []
        for i, size in enumerate(image_sizes):
            level_anchors = anchors[i].split(per_level)
            boxes, scores, labels = [], [], []
            for lv, stride in enumerate(self.strides):
                score = cls_logits[lv][i].float().sigmoid().flatten(1).t().flatten()  # (H*W*K,), position-major
                keep = torch.nonzero(score > self.score_thresh).squeeze(1)
                score = score[keep]
                top = score.topk(min(TOPK_CANDIDATES, score.numel()))
                keep, score = keep[top.indices], top.values
                position, label = keep // k, keep % k
                dist = distributions[lv][i].float().flatten(1).t()[position]  # (n, 4(R+1))
                points = box_centres(level_anchors[lv][position])
                strides = torch.full((len(position),), float(stride), device=points.device)
                boxes.append(clip_boxes_to_image(boxes_from_distances(points, expected_distance(dist, self.reg_max),
                                                                      strides), size))
                scores.append(score)
                labels.append(label)
            b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            if self.drop_empty:
                nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
                b, s, lab = b[nonempty], s[nonempty], lab[nonempty]
            keep = batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
        return results
