"""RetinaNet adapter over torchvision's ``RetinaNet`` (backbone, FPN, head, anchors, losses all torchvision's).

The FRS mask of RetinaNet comes from the whole classification output: A anchors x K classes per position
(9 x 80 on COCO). torchvision's head flattens it to ``(B, H*W*A, K)``; the adapter keeps the per-level
``(B, A*K, H, W)`` map and flattens it the same way only to call torchvision's loss and post-processing.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetClassificationHead, RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from frs_cli.archs import FAMILIES
from frs_cli.models.anchors import doubling_anchors
from frs_cli.models.backbones import P6P7, TINY_BODIES, c5_channels, resnet_fpn
from frs_cli.models.base import DensePass, Detector, FpnLayout, TowerClsHead, to_head_layout
from frs_cli.models.dense_inference import batch_dense_detections
from frs_cli.models.retinanet_loss import retinanet_gt_loss

LAYOUT = FpnLayout.of("retinanet")
STRIDES = LAYOUT.strides
DEFAULT_ANCHOR_SIZE = FAMILIES["retinanet"].anchor_size  # as frs_cli.archs declares it
RATIOS = (0.5, 1.0, 2.0)


def anchor_generator(anchor_size: int = 32) -> AnchorGenerator:
    """torchvision's RetinaNet anchors (3 scales x 3 ratios per level), scaled so P3's base is ``anchor_size``."""
    return doubling_anchors(anchor_size, RATIOS, scales_per_octave=3)


def build_cls_head(spec: dict) -> TowerClsHead:
    """torchvision's RetinaNet classification head, returning per-level ``(B, A*K, H, W)`` logits."""
    norm = partial(nn.GroupNorm, 32) if spec["norm"] == "group_norm" else None
    return TowerClsHead(
        RetinaNetClassificationHead(spec["in_channels"], spec["num_anchors"], spec["num_classes"], norm_layer=norm)
    )


class RetinaNetAdapter(Detector):
    family = "retinanet"
    takes_padded_targets = True  # retinanet_gt_loss

    def __init__(self, model: RetinaNet, arch: str, head_norm: str, mmdet: bool = False):
        channels = model.backbone.out_channels
        super().__init__(model.head.classification_head.num_classes, LAYOUT.levels(channels))
        self.model = model
        self.arch = arch
        self.head_norm = head_norm
        self.mmdet = mmdet  # mmdetection's inference (dense_detections) instead of torchvision's
        self._cls = TowerClsHead(model.head.classification_head)

    @property
    def num_anchors(self) -> int:
        return self.model.head.classification_head.num_anchors

    @property
    def cls_channels(self) -> int:
        return self.num_anchors * self.num_classes

    def cls_head(self) -> nn.Module:
        return self._cls

    def cls_head_spec(self) -> dict:
        return {
            "family": self.family,
            "cls_channels": self.cls_channels,
            "in_channels": self.levels[0].channels,
            "num_anchors": self.num_anchors,
            "num_classes": self.num_classes,
            "norm": self.head_norm,
        }

    def classify(self, features: list[Tensor]) -> tuple[list[Tensor], None]:
        return self._cls(features), None

    def losses_and_detections(self, dense: DensePass, targets, detect: bool):
        """torchvision's ``classification`` (focal) and ``bbox_regression`` losses; its or mmdetection's inference."""
        reg_head = self.model.head.regression_head
        box_deltas = [reg_head.bbox_reg(reg_head.conv(f)) for f in dense.features]
        anchors = dense.anchors(self.model.anchor_generator)
        head_outputs = {
            "cls_logits": to_head_layout(dense.cls_logits, self.num_classes),
            "bbox_regression": to_head_layout(box_deltas, 4),
        }
        losses, detections = {}, None
        if targets is not None:
            # Every image of the padded batch has the same anchors; the batched loss equals torchvision's.
            losses = retinanet_gt_loss(self.model, targets, head_outputs["cls_logits"],
                                       head_outputs["bbox_regression"], anchors[0])
        if detect:
            per_level = [f.shape[-2] * f.shape[-1] * self.num_anchors for f in dense.features]
            split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
            split_anchors = [list(a.split(per_level)) for a in anchors]
            with torch.autocast(dense.x.device.type, enabled=False):
                split = {k: [t.float() for t in v] for k, v in split.items()}
                postprocess = self._postprocess_mmdet if self.mmdet else self.model.postprocess_detections
                detections = postprocess(split, split_anchors, dense.image_sizes)
        return losses, detections

    def _postprocess_mmdet(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                           image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """mmdetection's RetinaNet inference on per-level ``(B, HWA, C)`` head outputs (``dense_detections``)."""
        return batch_dense_detections(head_outputs, anchors, image_sizes, self.model.box_coder.decode_single,
                                      self.model, self.model.topk_candidates)


def build(spec, cfg, num_classes: int, backbone_weights, trained: bool) -> RetinaNetAdapter:
    """torchvision's RetinaNet for ``spec`` (an ``ArchSpec``); ``trained``: weights will be loaded into it.

    The module types follow the config, whether or not the weights are loaded now, so a model rebuilt to
    receive a checkpoint has the layers it was trained with. torchvision freezes BN statistics for
    pretrained v1 bodies; v2 keeps BatchNorm2d and takes P6 from C5. The mmdetection layout
    (``spec.variant == "mmdet"``) takes P6 from C5 with no ReLU before P7, and uses unrounded anchors of
    octave scale 4 on the nominal strides.
    """
    tiny = spec.body in TINY_BODIES
    mmdet = spec.variant == "mmdet"
    if mmdet:
        extra = partial(P6P7, c5_channels(spec.body), spec.fpn_channels, from_c5=True, relu=False)
    else:
        extra = partial(LastLevelP6P7, c5_channels(spec.body) if (spec.v2 and not tiny) else spec.fpn_channels,
                        spec.fpn_channels)
    backbone = resnet_fpn(spec.body, spec.fpn_channels, [2, 3, 4], extra, frozen_bn=trained and not spec.v2,
                          weights=backbone_weights, trainable_layers=cfg.trainable_backbone_layers if trained else 5,
                          style=spec.style)
    size = cfg.anchor_size or DEFAULT_ANCHOR_SIZE
    anchors = doubling_anchors(size, RATIOS, scales_per_octave=3, strides=STRIDES) if mmdet else anchor_generator(size)
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                         norm_layer=partial(nn.GroupNorm, 32) if spec.v2 else None)
    if spec.v2:
        head.regression_head._loss_type = "giou"
    model = RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, score_thresh=cfg.score_thresh,
                      nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
    return RetinaNetAdapter(model, cfg.arch, head_norm="group_norm" if spec.v2 else "none", mmdet=mmdet)

