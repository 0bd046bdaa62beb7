"""RetinaNet's GT loss computed for the whole batch at once, equal to torchvision's ``RetinaNet.compute_loss``.

torchvision loops over images and indexes with boolean masks, which costs about 550 kernel launches and 11
host syncs per image (``bench/loss_ops.py``). At small image sizes that, not the GPU, bounds a training
process. Here the targets are padded to the batch's largest box count and every step is one batched op
with no host sync (torchvision's box coder copies small tensors from the host at every call, so the weights
are kept on the device, ``coder_weights``, and boxes are decoded by ``decode_deltas``). The rules are
torchvision's, unchanged:

- IoU matcher: IoU ≥ 0.5 foreground, < 0.4 background, in between ignored; with low-quality matches, every
  anchor that reaches some box's highest IoU gets its best box back, as ``Matcher.set_low_quality_matches_``
  does;
- classification: sigmoid focal loss (α 0.25, γ 2) summed over foreground and background anchors, divided
  by the image's foreground count (at least 1), averaged over images;
- regression: L1 on the encoded deltas (v1) or GIoU on the decoded boxes (v2), summed over foreground
  anchors, divided by the same count, averaged over images.

``tests/test_models.py`` checks both terms against torchvision's own on batches with empty images.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import encode_boxes
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops import sigmoid_focal_loss

from frs_cli.data.transforms import pad_boxes

BACKGROUND = -1
IGNORED = -2


class PaddedTargets(NamedTuple):
    """A batch's targets padded to one row count: boxes (B, M, 4) float32 xyxy, labels (B, M) int64, valid (B, M)
    bool (``pad_targets``). The batched loss takes them in place of the per-image list; their shapes do not depend
    on the boxes when M is fixed, as a CUDA graph of the training step needs (``frs_cli.train.step_graphs``)."""

    boxes: Tensor
    labels: Tensor
    valid: Tensor


def pad_targets(targets: list[dict[str, Tensor]] | PaddedTargets, device: torch.device, rows: int = 1) -> PaddedTargets:
    """Per-image ``boxes`` (M_i, 4) xyxy and ``labels`` (M_i,) -> boxes (B, M, 4), labels (B, M), valid (B, M),
    M = max(``rows``, max M_i); ``PaddedTargets`` are returned as they are.

    Padding as ``pad_boxes``: rows (0, 0, 1, 1), label 0, not valid.
    """
    if isinstance(targets, PaddedTargets):
        return targets
    boxes, valid = pad_boxes([t["boxes"] for t in targets], device, rows)
    labels = torch.zeros(valid.shape, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):
        labels[i, : len(t["labels"])] = t["labels"].to(device)
    return PaddedTargets(boxes, labels, valid)


def batched_box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU of boxes (B, M, 4) with anchors (N, 4), both xyxy -> (B, M, N), computed as ``box_iou`` does."""
    area_b = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (B, M)
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])  # (N,)
    lt = torch.max(boxes[:, :, None, :2], anchors[None, None, :, :2])
    rb = torch.min(boxes[:, :, None, 2:], anchors[None, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_b[..., None] + area_a[None, None, :] - inter)


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU of paired boxes (N, 4) xyxy -> (N,), the value of ``torchvision.ops.generalized_box_iou_loss``.

    torchvision computes the intersection through a boolean-mask assignment (a host sync on a GPU); the
    clamped product below is the same number without it.
    """
    pred = pred.float() if not pred.is_floating_point() else pred
    x1, y1, x2, y2 = pred.unbind(-1)
    gx1, gy1, gx2, gy2 = target.unbind(-1)
    inter = (torch.min(x2, gx2) - torch.max(x1, gx1)).clamp(min=0) * (torch.min(y2, gy2) - torch.max(y1, gy1)).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
    enclosing = (torch.max(x2, gx2) - torch.min(x1, gx1)) * (torch.max(y2, gy2) - torch.min(y1, gy1))
    return 1 - (inter / (union + eps) - (enclosing - union) / (enclosing + eps))


def match_anchors(iou: Tensor, valid: Tensor, fg_thresh: float = 0.5, bg_thresh: float = 0.4) -> Tensor:
    """torchvision's ``Matcher`` (allow_low_quality_matches=True) for a padded batch.

    iou: (B, M, N); valid: (B, M). Returns (B, N) int64: the matched box index, BACKGROUND or IGNORED.
    Images without a valid box get BACKGROUND everywhere, as torchvision's ``compute_loss`` gives them.
    """
    iou = iou.masked_fill(~valid[..., None], -1.0)
    best, matches = iou.max(dim=1)  # (B, N)
    all_matches = matches
    matches = torch.where(best < bg_thresh, BACKGROUND, torch.where(best < fg_thresh, IGNORED, matches))
    highest_per_box = iou.max(dim=2, keepdim=True).values  # (B, M, 1)
    restore = ((iou == highest_per_box) & valid[..., None]).any(dim=1)  # (B, N)
    return torch.where(restore, all_matches, matches)


@functools.lru_cache(maxsize=16)
def coder_weights(weights: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A box coder's ``weights`` as a tensor on ``device``, made once per dtype and device. torchvision's
    ``BoxCoder.encode_single`` copies them from the host at every call, a copy that makes the host wait for the
    device in the middle of each step (``bench/loader_cost.py --sync-points``); the encoding itself is its
    ``encode_boxes``."""
    return torch.as_tensor(weights, dtype=dtype, device=device)


def decode_deltas(coder, deltas: Tensor, anchors: Tensor) -> Tensor:
    """Boxes ``(N, 4)`` xyxy from a box coder's ``deltas`` ``(N, 4)`` on ``anchors`` ``(N, 4)``: the numbers of
    torchvision's ``BoxCoder.decode_single`` (its weights, its clip of the log-size deltas, the anchors in the
    deltas' dtype), without the two one-element tensors it copies from the host at every call."""
    anchors = anchors.to(deltas.dtype)
    width, height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * width, anchors[:, 1] + 0.5 * height
    wx, wy, ww, wh = coder.weights
    dx, dy, dw, dh = deltas[:, 0] / wx, deltas[:, 1] / wy, deltas[:, 2] / ww, deltas[:, 3] / wh
    x, y = dx * width + cx, dy * height + cy
    half_w = 0.5 * (torch.exp(dw.clamp(max=coder.bbox_xform_clip)) * width)
    half_h = 0.5 * (torch.exp(dh.clamp(max=coder.bbox_xform_clip)) * height)
    return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=1)


def retinanet_gt_loss(model: RetinaNet, targets: list[dict[str, Tensor]] | PaddedTargets, cls_logits: Tensor,
                      bbox_regression: Tensor, anchors: Tensor) -> dict[str, Tensor]:
    """torchvision's RetinaNet losses, batched.

    targets: per image, or already padded (``PaddedTargets``: padding rows change no term); cls_logits: (B, N, K)
    and bbox_regression: (B, N, 4) in torchvision's head layout; anchors: (N, 4) xyxy, the same for every image of
    the padded batch. Returns {"classification", "bbox_regression"} scalars.
    """
    b, n, k = cls_logits.shape
    boxes, labels, valid = pad_targets(targets, anchors.device)
    matched = match_anchors(batched_box_iou(boxes, anchors.to(boxes.dtype)), valid,
                            model.proposal_matcher.high_threshold, model.proposal_matcher.low_threshold)
    fg = matched >= 0  # (B, N)
    num_fg = fg.sum(dim=1).clamp(min=1)  # (B,)
    idx = matched.clamp(min=0)

    # a comparison, not F.one_hot, which checks its input's range and so waits for the GPU
    classes = torch.arange(k, device=labels.device)
    target = ((torch.gather(labels, 1, idx)[..., None] == classes) & fg[..., None]).to(cls_logits.dtype)
    focal = sigmoid_focal_loss(cls_logits, target, reduction="none").sum(dim=2)  # (B, N)
    cls_loss = (torch.where(matched != IGNORED, focal, 0.0).sum(dim=1) / num_fg).sum() / b

    reg_head = model.head.regression_head
    gt = torch.gather(boxes, 1, idx[..., None].expand(b, n, 4)).reshape(b * n, 4)
    flat_anchors = anchors.expand(b, n, 4).reshape(b * n, 4)
    deltas = bbox_regression.reshape(b * n, 4)
    if reg_head._loss_type == "l1":
        weights = coder_weights(tuple(reg_head.box_coder.weights), gt.dtype, gt.device)
        per_anchor = F.l1_loss(deltas, encode_boxes(gt, flat_anchors, weights), reduction="none").sum(1)
    elif reg_head._loss_type == "giou":
        per_anchor = giou_loss(decode_deltas(reg_head.box_coder, deltas, flat_anchors), gt)
    else:
        raise ValueError(f"box loss {reg_head._loss_type!r}: the batched loss implements 'l1' and 'giou'")
    reg_loss = (torch.where(fg, per_anchor.view(b, n), 0.0).sum(dim=1) / num_fg).sum() / max(1, b)
    return {"classification": cls_loss, "bbox_regression": reg_loss}
