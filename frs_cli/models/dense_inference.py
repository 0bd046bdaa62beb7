"""Inference of a dense (one-stage) head as mmdetection's ``test_cfg`` runs it, for the adapters of its layouts.

Per level: sigmoid class scores above ``score_thresh``, the best ``topk`` (prior, class) pairs (``nms_pre``),
boxes decoded and clipped to the image, scores times an optional per-prior factor (FCOS's centerness);
then boxes of zero width or height dropped (``min_bbox_size = 0``), class-wise NMS, the best
``detections_per_img``. torchvision's RetinaNet keeps empty boxes, and its FCOS thresholds the geometric mean
of score and centerness; a checkpoint converted from mmdetection is scored here as mmdetection scores it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image


@torch.no_grad()
def dense_detections(cls_logits: list[Tensor], decode: Callable[[int, Tensor], Tensor], image_size: tuple[int, int],
                     score_thresh: float, nms_thresh: float, detections_per_img: int, topk: int = 1000,
                     score_factors: list[Tensor] | None = None) -> dict[str, Tensor]:
    """One image's detections ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,) int64}``.

    ``cls_logits``: per level ``(P_l, K)`` logits of its P_l priors (float32); ``decode(level, priors)``: the
    ``(n, 4)`` xyxy boxes of those prior indices; ``score_factors``: per level ``(P_l,)`` logits whose sigmoid
    multiplies the scores after the top-k, or None.
    """
    boxes, scores, labels = [], [], []
    for level, logits in enumerate(cls_logits):
        k = logits.shape[1]
        score = logits.sigmoid().flatten()  # prior-major
        keep = torch.nonzero(score > score_thresh).squeeze(1)
        top = score[keep].topk(min(topk, keep.numel()))
        keep = keep[top.indices]
        prior = keep // k
        s = top.values if score_factors is None else top.values * score_factors[level][prior].sigmoid()
        boxes.append(clip_boxes_to_image(decode(level, prior), image_size))
        scores.append(s)
        labels.append(keep % k)
    b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, s, lab = b[nonempty], s[nonempty], lab[nonempty]
    keep = batched_nms(b, s, lab, nms_thresh)[:detections_per_img]
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


def batch_dense_detections(head_outputs: dict[str, list[Tensor]], priors: list[list[Tensor]],
                           image_sizes: list[tuple[int, int]], decode: Callable[[Tensor, Tensor], Tensor], model,
                           topk: int, factors: str | None = None) -> list[dict[str, Tensor]]:
    """``dense_detections`` of every image of a batch, with the thresholds of torchvision's ``model``.

    ``head_outputs``: per level ``(B, P_l, C)`` float32 ``cls_logits``, ``bbox_regression`` (and ``factors``,
    the key of per-prior score factors with C = 1, or None); ``priors``: per image, per level ``(P_l, 4)``;
    ``decode(codes, priors)``: the ``(n, 4)`` xyxy boxes of n box codes at their n priors.
    """
    results = []
    for i, size in enumerate(image_sizes):
        codes = [t[i] for t in head_outputs["bbox_regression"]]

        def decode_at(lv: int, prior: Tensor, codes=codes, at=priors[i]) -> Tensor:
            return decode(codes[lv][prior], at[lv][prior])

        results.append(dense_detections(
            [t[i] for t in head_outputs["cls_logits"]], decode_at, size, model.score_thresh, model.nms_thresh,
            model.detections_per_img, topk, None if factors is None else [t[i, :, 0] for t in head_outputs[factors]]))
    return results
