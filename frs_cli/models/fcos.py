"""FCOS adapter over torchvision's ``FCOS`` (backbone, FPN, head, point "anchors", losses all torchvision's).

FRS on FCOS uses the classification logits alone: K class channels per position (one point per position,
so A = 1). The centerness branch sits on the regression tower and plays no part in the mask or the head
loss; it still trains through torchvision's GT loss and still scales the scores at inference.

The mmdetection layout (``ArchSpec.variant == "mmdet"``, the FCOS of the paper's teachers) keeps
torchvision's towers and adds what mmdetection's ``FCOSHead`` has: a learnt scale per level on the box
output, distances ``exp(scale * x)`` px (or, with ``norm_on_bbox``, ``relu(scale * x) * stride``),
centerness from the classification tower (or, with ``centerness_on_reg``, the regression tower), points
at ``(x + 0.5) * stride``, and its inference: scores ``sigmoid(cls)``, thresholded and top-k'd before
being multiplied by ``sigmoid(centerness)`` (torchvision thresholds their geometric mean).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead, FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from frs_cli.archs import FAMILIES
from frs_cli.models.anchors import doubling_anchors
from frs_cli.models.backbones import resnet_fpn
from frs_cli.models.base import (
    DensePass,
    Detector,
    FpnLayout,
    TowerClsHead,
    drop_biases_before_group_norms,
    to_head_layout,
)
from frs_cli.models.dense_inference import batch_dense_detections

LAYOUT = FpnLayout.of("fcos")
STRIDES = LAYOUT.strides
DEFAULT_ANCHOR_SIZE = FAMILIES["fcos"].anchor_size  # as frs_cli.archs declares it
HEAD_OPTIONS = ("norm_on_bbox", "centerness_on_reg")  # mmdetection FCOSHead switches an ArchSpec may name
TOPK_CANDIDATES = 1000  # per level, before NMS (mmdetection's nms_pre, torchvision's topk_candidates)


def point_generator(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> AnchorGenerator:
    """One square anchor per position, ``anchor_size`` at P3, doubling per level (FCOS's scale ranges are
    4x and 8x of it: torchvision assigns a box to the level where its largest side distance falls)."""
    return doubling_anchors(anchor_size)


def build_cls_head(spec: dict) -> TowerClsHead:
    """torchvision's FCOS classification tower and logits conv, returning per-level ``(B, K, H, W)`` logits."""
    return TowerClsHead(FCOSClassificationHead(spec["in_channels"], 1, spec["num_classes"]))


class FCOSAdapter(Detector):
    family = "fcos"

    def __init__(self, model: FCOS, arch: str, head_options: tuple[str, ...] = (), mmdet: bool = False):
        channels = model.backbone.out_channels
        super().__init__(model.head.classification_head.num_classes, LAYOUT.levels(channels))
        self.model = model
        self.arch = arch
        self.mmdet = mmdet  # mmdetection's head and inference (module docstring); the parameter head.scales
        self.norm_on_bbox = "norm_on_bbox" in head_options
        self.centerness_on_reg = "centerness_on_reg" in head_options or not mmdet  # torchvision's: on reg
        self._cls = TowerClsHead(model.head.classification_head)

    @property
    def cls_channels(self) -> int:
        return self.num_classes

    def cls_head(self) -> nn.Module:
        return self._cls

    def cls_head_spec(self) -> dict:
        return {"family": self.family, "cls_channels": self.cls_channels, "in_channels": self.levels[0].channels,
                "num_classes": self.num_classes}

    def classify(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``(B, K, H, W)`` logits per level, and the classification towers (mmdetection's centerness reads them)."""
        cls_head = self.model.head.classification_head
        cls_towers = [cls_head.conv(f) for f in features]
        return [cls_head.cls_logits(t) for t in cls_towers], cls_towers

    def losses_and_detections(self, dense: DensePass, targets, detect: bool):
        """torchvision's ``classification`` (focal), ``bbox_regression`` (GIoU) and ``bbox_ctrness`` (BCE)
        losses; its or mmdetection's inference."""
        reg = self.model.head.regression_head
        towers = [reg.conv(f) for f in dense.features]
        head_outputs = {
            "cls_logits": to_head_layout(dense.cls_logits, self.num_classes),
            "bbox_regression": to_head_layout(self._box_regression(towers), 4),
            "bbox_ctrness": to_head_layout([reg.bbox_ctrness(t) for t in (towers if self.centerness_on_reg
                                                                          else dense.towers)], 1),
        }
        anchors = dense.anchors(self.model.anchor_generator)
        per_level = [f.shape[-2] * f.shape[-1] for f in dense.features]
        losses, detections = {}, None
        if targets is not None:  # in float32: box decoding in bf16 would round coordinates by several pixels
            losses = self.model.compute_loss(targets, {k: v.float() for k, v in head_outputs.items()}, anchors,
                                             per_level)
        if detect:
            split_anchors = [list(a.split(per_level)) for a in anchors]
            with torch.autocast(dense.x.device.type, enabled=False):
                split = {k: [t.float() for t in v.split(per_level, dim=1)] for k, v in head_outputs.items()}
                postprocess = self._postprocess_mmdet if self.mmdet else self.model.postprocess_detections
                detections = postprocess(split, split_anchors, dense.image_sizes)
        return losses, detections

    def _box_regression(self, towers: list[Tensor]) -> list[Tensor]:
        """Per level ``(B, 4, H, W)`` side distances in units of the level's point size (= its stride), the
        code torchvision's ``BoxLinearCoder(normalize_by_size=True)`` decodes."""
        reg = self.model.head.regression_head
        if not self.mmdet:
            return [nn.functional.relu(reg.bbox_reg(t)) for t in towers]
        out = []
        for t, scale, stride in zip(towers, self.model.head.scales, STRIDES):
            raw = scale * reg.bbox_reg(t).float()  # float: exp overflows in half precision
            out.append(raw.clamp(min=0) if self.norm_on_bbox else raw.exp() / stride)
        return out

    def _postprocess_mmdet(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                           image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """mmdetection's FCOS inference (``dense_detections``: score x centerness after the top-k) on per-level
        ``(B, HW, C)`` head outputs."""
        return batch_dense_detections(head_outputs, anchors, image_sizes, self.model.box_coder.decode, self.model,
                                      TOPK_CANDIDATES, factors="bbox_ctrness")


def build(spec, cfg, num_classes: int, backbone_weights, trained: bool) -> FCOSAdapter:
    """torchvision's FCOS for ``spec`` (an ``ArchSpec``): P3-P7 with P6/P7 from P5 (ReLU between them, as
    both torchvision and mmdetection's FCOS configs), as ``fcos_resnet50_fpn`` builds it (frozen BN
    statistics when the body is pretrained); the mmdetection layout as the module docstring says."""
    mmdet = spec.variant == "mmdet"
    backbone = resnet_fpn(spec.body, spec.fpn_channels, [2, 3, 4], partial(LastLevelP6P7, spec.fpn_channels, spec.fpn_channels),
                          frozen_bn=trained, weights=backbone_weights,
                          trainable_layers=cfg.trainable_backbone_layers if trained else 5, style=spec.style)
    if mmdet:  # point size = stride: the box code is in strides, as torchvision's coder expects
        points = doubling_anchors(STRIDES[0], strides=STRIDES, offset=0.5)
    else:
        points = point_generator(cfg.anchor_size or DEFAULT_ANCHOR_SIZE)
    head = FCOSHead(backbone.out_channels, 1, num_classes)
    if mmdet:
        head.scales = nn.Parameter(torch.ones(len(STRIDES)))  # mmdetection's Scale per level
        drop_biases_before_group_norms(head)  # mmdetection's GN towers have no conv bias
    model = FCOS(backbone, num_classes, anchor_generator=points, head=head, score_thresh=cfg.score_thresh,
                 nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
    return FCOSAdapter(model, cfg.arch, spec.head_options, mmdet=mmdet)
