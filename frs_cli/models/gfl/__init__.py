"""GFL (Generalized Focal Loss) built from torchvision parts, and its adapter.

FRS on GFL takes its mask and head loss from the classification logits: K class channels per position
(one anchor per position; the logits' sigmoid is GFL's joint class-quality score).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from frs_cli.archs import FAMILIES
from frs_cli.models.backbones import P6P7, resnet_fpn
from frs_cli.models.base import DensePass, Detector, FpnLayout, drop_biases_before_group_norms
from frs_cli.models.gfl.head import GFLClsHead
from frs_cli.models.gfl.model import GFL

__all__ = ["DEFAULT_ANCHOR_SIZE", "GFL", "GFLAdapter", "build", "build_cls_head"]

LAYOUT = FpnLayout.of("gfl")
STRIDES = LAYOUT.strides
DEFAULT_ANCHOR_SIZE = FAMILIES["gfl"].anchor_size  # as frs_cli.archs declares it
NUM_CONVS = 4


def build_cls_head(spec: dict) -> GFLClsHead:
    return GFLClsHead(spec["in_channels"], spec["num_classes"], spec["num_convs"])


class GFLAdapter(Detector):
    family = "gfl"

    def __init__(self, model: GFL, arch: str):
        channels = model.backbone.out_channels
        super().__init__(model.num_classes, LAYOUT.levels(channels))
        self.model = model
        self.arch = arch

    @property
    def cls_channels(self) -> int:
        return self.num_classes

    def cls_head(self) -> nn.Module:
        return self.model.head.classification

    def cls_head_spec(self) -> dict:
        return {"family": self.family, "cls_channels": self.cls_channels, "in_channels": self.levels[0].channels,
                "num_classes": self.num_classes, "num_convs": NUM_CONVS}

    def classify(self, features: list[Tensor]) -> tuple[list[Tensor], None]:
        """``(B, K, H, W)`` logits per level."""
        return self.model.head.classification(features), None

    def losses_and_detections(self, dense: DensePass, targets, detect: bool):
        """Losses ``quality_focal``, ``giou``, ``distribution_focal`` (weighted as the paper: 1, 2, 1/4)."""
        distributions = self.model.head.box(dense.features)
        anchors = dense.anchors(self.model.anchor_generator)
        losses, detections = {}, None
        if targets is not None:
            losses = self.model.compute_loss(targets, dense.cls_logits, distributions, anchors)
        if detect:
            detections = self.model.postprocess_detections(dense.cls_logits, distributions, anchors, dense.image_sizes)
        return losses, detections


def build(spec, cfg, num_classes: int, backbone_weights, trained: bool) -> GFLAdapter:
    """GFL for ``spec`` (an ``ArchSpec``): P3-P7 with P6/P7 from P5, GroupNorm head, frozen BN statistics
    when the body is pretrained (as torchvision's one-stage detectors). The mmdetection layout has no ReLU
    between P6 and P7 (its FPN's ``add_extra_convs='on_output'``) and a learnt scale per level."""
    mmdet = spec.variant == "mmdet"
    extra = (partial(P6P7, spec.fpn_channels, spec.fpn_channels, from_c5=False, relu=False) if mmdet
             else partial(LastLevelP6P7, spec.fpn_channels, spec.fpn_channels))
    backbone = resnet_fpn(spec.body, spec.fpn_channels, [2, 3, 4], extra, frozen_bn=trained, weights=backbone_weights,
                          trainable_layers=cfg.trainable_backbone_layers if trained else 5, style=spec.style)
    model = GFL(backbone, num_classes, list(STRIDES), cfg.anchor_size or DEFAULT_ANCHOR_SIZE,
                score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
                mmdet=mmdet)
    if mmdet:
        drop_biases_before_group_norms(model)  # mmdetection's GN towers have no conv bias
    return GFLAdapter(model, cfg.arch)
