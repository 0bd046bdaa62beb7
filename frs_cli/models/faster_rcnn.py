"""Faster R-CNN adapter over torchvision's ``FasterRCNN`` (backbone, FPN, RPN, ROI head, losses all torchvision's).

FRS on Faster R-CNN takes its mask and head loss from the RPN objectness logits: A = 3 anchors (one size,
three aspect ratios) per position on all five RPN levels P2-P6 (FPN outputs "0".."3" and "pool"). The ROI
head plays no part in distillation; its losses are part of the GT loss.

Labels: frs labels are ``0..K-1``; torchvision's ROI head reserves output 0 for background, so the box
predictor has K + 1 outputs and label k is output k + 1 (targets are shifted in, detections shifted back).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frs_cli.archs import FAMILIES
from frs_cli.models.anchors import doubling_anchors
from frs_cli.models.backbones import TINY_BODIES, resnet_fpn
from frs_cli.models.base import DensePass, Detector, FpnLayout

LAYOUT = FpnLayout.of("faster_rcnn")
STRIDES = LAYOUT.strides
DEFAULT_ANCHOR_SIZE = FAMILIES["faster_rcnn"].anchor_size  # as frs_cli.archs declares it
RATIOS = (0.5, 1.0, 2.0)
NO_CLASS_BIAS = -20.0  # logit of a predictor row no label ever uses (softmax weight ~ e**-20)


def rpn_anchor_generator(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> AnchorGenerator:
    return doubling_anchors(anchor_size, RATIOS)


class RPNObjectnessHead(nn.Module):
    """The RPN's shared conv(s) and objectness conv, returning per-level ``(B, A, H, W)`` logits."""

    def __init__(self, head: RPNHead):
        super().__init__()
        self.conv = head.conv
        self.cls_logits = head.cls_logits

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.cls_logits(self.conv(f)) for f in features]


def build_cls_head(spec: dict) -> RPNObjectnessHead:
    return RPNObjectnessHead(RPNHead(spec["in_channels"], spec["num_anchors"], conv_depth=spec["conv_depth"]))


class FasterRCNNAdapter(Detector):
    family = "faster_rcnn"

    def __init__(self, model: FasterRCNN, arch: str, num_classes: int):
        channels = model.backbone.out_channels
        super().__init__(num_classes, LAYOUT.levels(channels))
        self.model = model
        self.arch = arch
        self._cls = RPNObjectnessHead(model.rpn.head)

    @property
    def num_anchors(self) -> int:
        return self.model.rpn.head.cls_logits.out_channels

    @property
    def cls_channels(self) -> int:
        return self.num_anchors

    def cls_head(self) -> nn.Module:
        return self._cls

    def cls_head_spec(self) -> dict:
        return {"family": self.family, "cls_channels": self.cls_channels, "in_channels": self.levels[0].channels,
                "num_anchors": self.num_anchors, "conv_depth": len(self.model.rpn.head.conv)}

    def adapt_torchvision_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision's COCO box predictor has output c for category id c (0: background); with
        ``label_map = 'category_id'`` (label = category id) frs wants output c + 1, and output 1 (label 0,
        never annotated) gets no weight and a very low logit."""
        out = dict(state)
        rep = "roi_heads.box_predictor."
        w, b = state[rep + "cls_score.weight"], state[rep + "cls_score.bias"]
        n = w.shape[0]
        order = torch.tensor([0, 0, *range(1, n)])
        out[rep + "cls_score.weight"] = w[order].clone()
        out[rep + "cls_score.bias"] = b[order].clone()
        out[rep + "cls_score.weight"][1] = 0
        out[rep + "cls_score.bias"][1] = NO_CLASS_BIAS
        bw, bb = state[rep + "bbox_pred.weight"], state[rep + "bbox_pred.bias"]
        out[rep + "bbox_pred.weight"] = bw.view(n, 4, -1)[order].reshape(-1, bw.shape[-1]).clone()
        out[rep + "bbox_pred.bias"] = bb.view(n, 4)[order].reshape(-1).clone()
        out[rep + "bbox_pred.weight"][4:8] = 0
        out[rep + "bbox_pred.bias"][4:8] = 0
        return out

    def classify(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The RPN objectness ``(B, 3, H, W)`` per level (P2-P6), and the RPN towers (the box deltas read them)."""
        towers = [self.model.rpn.head.conv(f) for f in features]
        return [self.model.rpn.head.cls_logits(t) for t in towers], towers

    def losses_and_detections(self, dense: DensePass, targets, detect: bool):
        """torchvision's ``loss_objectness``, ``loss_rpn_box_reg`` (RPN) and ``loss_classifier``, ``loss_box_reg``
        (ROI head), and its inference. Proposal sampling is random (torchvision's samplers): seed for
        reproducible losses."""
        rpn, roi = self.model.rpn, self.model.roi_heads
        named, sizes, objectness = dense.named, dense.image_sizes, dense.cls_logits
        deltas = [rpn.head.bbox_pred(t) for t in dense.towers]  # (B, 4A, H, W)
        anchors = dense.anchors(rpn.anchor_generator)
        per_level = [o[0].numel() for o in objectness]
        obj_flat, deltas_flat = concat_box_prediction_layers(objectness, deltas)
        # float32 from here: box decoding in bf16 would round coordinates by several pixels
        obj_flat, deltas_flat = obj_flat.float(), deltas_flat.float()
        proposals = rpn.box_coder.decode(deltas_flat.detach(), anchors).view(len(anchors), -1, 4)
        proposals, _ = rpn.filter_proposals(proposals, obj_flat, sizes, per_level)
        losses, detections = {}, None
        if targets is not None:
            shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
            labels, matched = rpn.assign_targets_to_anchors(anchors, shifted)
            loss_obj, loss_rpn_box = rpn.compute_loss(obj_flat, deltas_flat, labels,
                                                      rpn.box_coder.encode(matched, anchors))
            sampled, _, roi_labels, roi_targets = roi.select_training_samples(proposals, shifted)
            cls_scores, box_deltas = roi.box_predictor(roi.box_head(roi.box_roi_pool(named, sampled, sizes)))
            loss_cls, loss_box = fastrcnn_loss(cls_scores, box_deltas, roi_labels, roi_targets)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box,
                      "loss_classifier": loss_cls, "loss_box_reg": loss_box}
        if detect:
            cls_scores, box_deltas = roi.box_predictor(roi.box_head(roi.box_roi_pool(named, proposals, sizes)))
            with torch.autocast(dense.x.device.type, enabled=False):
                boxes, scores, labels = roi.postprocess_detections(cls_scores.float(), box_deltas.float(),
                                                                   [p.float() for p in proposals], sizes)
            detections = [{"boxes": b, "scores": s, "labels": lab - 1} for b, s, lab in zip(boxes, scores, labels)]
        return losses, detections


def build(spec, cfg, num_classes: int, backbone_weights, trained: bool) -> FasterRCNNAdapter:
    """torchvision's Faster R-CNN for ``spec`` (an ``ArchSpec``), as ``fasterrcnn_resnet50_fpn(_v2)`` builds it.

    CPU-sized bodies get a 256-wide box head and fewer proposals (their images are ~128 px, not 800).
    """
    tiny = spec.body in TINY_BODIES
    ch = spec.fpn_channels
    backbone = resnet_fpn(spec.body, ch, [1, 2, 3, 4], LastLevelMaxPool, frozen_bn=trained and not spec.v2,
                          weights=backbone_weights, trainable_layers=cfg.trainable_backbone_layers if trained else 5,
                          fpn_norm=nn.BatchNorm2d if spec.v2 else None, style=spec.style)
    size = cfg.anchor_size or DEFAULT_ANCHOR_SIZE
    if spec.variant == "mmdet":  # mmdetection's RPN anchors: unrounded, on the nominal strides
        anchors = doubling_anchors(size, RATIOS, strides=STRIDES)
    else:
        anchors = rpn_anchor_generator(size)
    rpn_head = RPNHead(ch, anchors.num_anchors_per_location()[0], conv_depth=2 if spec.v2 else 1)
    if spec.v2:
        box_head, rep = FastRCNNConvFCHead((ch, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d), 1024
    else:
        rep = 256 if tiny else 1024
        box_head = TwoMLPHead(ch * 7 * 7, rep)
    sizes = {"rpn_pre_nms_top_n_train": 500, "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 300,
             "rpn_post_nms_top_n_test": 300, "box_batch_size_per_image": 128} if tiny else {}
    model = FasterRCNN(backbone, None, rpn_anchor_generator=anchors, rpn_head=rpn_head,
                       box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), box_head=box_head,
                       box_predictor=FastRCNNPredictor(rep, num_classes + 1), box_score_thresh=cfg.score_thresh,
                       box_nms_thresh=cfg.nms_thresh, box_detections_per_img=cfg.detections_per_img, **sizes)
    return FasterRCNNAdapter(model, cfg.arch, num_classes)
