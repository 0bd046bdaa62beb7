"""FCOS adapter over torchvision's ``FCOS`` (backbone, FPN, head, point "anchors", losses all torchvision's).

FRS on FCOS uses the classification logits alone: K class channels per position (one point per position,
so A = 1). The centerness branch sits on the regression tower and plays no part in the mask or the head
loss; it still trains through torchvision's GT loss and still scales the scores at inference.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS, FCOSClassificationHead, FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from frs_cli.models.backbones import resnet_fpn
from frs_cli.models.base import Detector, DetectorOutput, LevelSpec, to_head_layout

LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")
STRIDES = (8, 16, 32, 64, 128)
DEFAULT_ANCHOR_SIZE = 8  # torchvision's: one point per position, "anchor" size = stride (8 px at P3)


def point_generator(anchor_size: int = DEFAULT_ANCHOR_SIZE) -> AnchorGenerator:
    """One square anchor per position, ``anchor_size`` at P3, doubling per level (FCOS's scale ranges are
    4x and 8x of it: torchvision assigns a box to the level where its largest side distance falls)."""
    return AnchorGenerator(tuple((anchor_size * 2**i,) for i in range(5)), ((1.0,),) * 5)


class FCOSClsHead(nn.Module):
    """torchvision's FCOS classification tower and logits conv, returning per-level ``(B, K, H, W)`` logits."""

    def __init__(self, head: FCOSClassificationHead):
        super().__init__()
        self.head = head

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [self.head.cls_logits(self.head.conv(f)) for f in features]


def build_cls_head(spec: dict) -> FCOSClsHead:
    return FCOSClsHead(FCOSClassificationHead(spec["in_channels"], 1, spec["num_classes"]))


class FCOSAdapter(Detector):
    family = "fcos"

    def __init__(self, model: FCOS, arch: str):
        channels = model.backbone.out_channels
        super().__init__(model.head.classification_head.num_classes,
                         [LevelSpec(n, s, channels) for n, s in zip(LEVEL_NAMES, STRIDES)])
        self.model = model
        self.arch = arch
        self._cls = FCOSClsHead(model.head.classification_head)

    @property
    def cls_channels(self) -> int:
        return self.num_classes

    def cls_head(self) -> nn.Module:
        return self._cls

    def cls_head_spec(self) -> dict:
        return {"family": self.family, "cls_channels": self.cls_channels, "in_channels": self.levels[0].channels,
                "num_classes": self.num_classes}

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]], targets=None, detect=None) -> DetectorOutput:
        """See ``Detector``; ``cls_logits`` per level are ``(B, K, H, W)``, losses torchvision's
        ``classification`` (focal), ``bbox_regression`` (GIoU) and ``bbox_ctrness`` (BCE)."""
        x = self.normalize(images, image_sizes)
        features = list(self.model.backbone(x).values())
        cls_logits = self._cls(features)
        reg = self.model.head.regression_head
        towers = [reg.conv(f) for f in features]
        out = DetectorOutput(features=features, cls_logits=cls_logits)

        detect = (not self.training) if detect is None else detect
        if targets is None and not detect:
            return out
        head_outputs = {
            "cls_logits": to_head_layout(cls_logits, self.num_classes),
            "bbox_regression": to_head_layout([nn.functional.relu(reg.bbox_reg(t)) for t in towers], 4),
            "bbox_ctrness": to_head_layout([reg.bbox_ctrness(t) for t in towers], 1),
        }
        anchors = self.model.anchor_generator(ImageList(x, list(image_sizes)), features)
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        if targets is not None:  # in float32: box decoding in bf16 would round coordinates by several pixels
            out.losses = self.model.compute_loss(targets, {k: v.float() for k, v in head_outputs.items()}, anchors,
                                                 per_level)
        if detect:
            split_anchors = [list(a.split(per_level)) for a in anchors]
            with torch.autocast(x.device.type, enabled=False):
                split = {k: [t.float() for t in v.split(per_level, dim=1)] for k, v in head_outputs.items()}
                out.detections = self.model.postprocess_detections(split, split_anchors, list(image_sizes))
        return out


def build(spec, cfg, num_classes: int, backbone_weights, trained: bool) -> FCOSAdapter:
    """torchvision's FCOS for ``spec`` (an ``ArchSpec``): P3-P7 with P6/P7 from P5, as ``fcos_resnet50_fpn``
    builds it (frozen BN statistics when the body is pretrained)."""
    backbone = resnet_fpn(spec.body, spec.fpn_channels, [2, 3, 4], partial(LastLevelP6P7, spec.fpn_channels, spec.fpn_channels),
                          frozen_bn=trained, weights=backbone_weights,
                          trainable_layers=cfg.trainable_backbone_layers if trained else 5)
    points = point_generator(cfg.anchor_size or DEFAULT_ANCHOR_SIZE)
    head = FCOSHead(backbone.out_channels, 1, num_classes)
    model = FCOS(backbone, num_classes, anchor_generator=points, head=head, score_thresh=cfg.score_thresh,
                 nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
    return FCOSAdapter(model, cfg.arch)
