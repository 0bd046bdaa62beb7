"""The model part of a recipe."""

from __future__ import annotations

import os
from dataclasses import dataclass

from frs_cli.errors import check_range


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "retinanet_resnet50_fpn"  # a name from `frs models` (frs_cli.models.ARCHS)
    # "" random init | torchvision weights enum (RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1) | path of an frs
    # checkpoint | path of torchvision's file for this arch (retinanet_resnet50_fpn_v2_coco-5905b1c5.pth)
    weights: str = ""
    weights_backbone: str = ""  # "" | ImageNet enum (ResNet50_Weights.IMAGENET1K_V1) or the path of its file
    trainable_backbone_layers: int = 3  # with pretrained weights: how many ResNet stages train (0-5)
    anchor_size: int = 0  # anchor size at the finest level, px, doubling per level; 0: the family's default (RetinaNet 32, FCOS 8, Faster R-CNN 32 at P2, GFL 64)
    score_thresh: float = 0.05  # detections below this score are dropped at inference
    nms_thresh: float = 0.0  # IoU threshold of per-class NMS at inference; 0: the arch's (`frs models`: GFL 0.6, most 0.5)
    detections_per_img: int = 100  # at most this many detections per image (COCO's maxDets)

    def __post_init__(self):  # a path given as ~/x (quoted, or after '=', the shell leaves it) is the home's
        for name in ("weights", "weights_backbone"):
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("~"):
                object.__setattr__(self, name, os.path.expanduser(value))

    def check(self, table: str) -> None:
        """ConfigError naming ``table.<key>`` for a value no detector could use."""
        check_range(table, "trainable_backbone_layers", self.trainable_backbone_layers, 0, 5)
        check_range(table, "anchor_size", self.anchor_size, 0)
        check_range(table, "score_thresh", self.score_thresh, 0, 1)
        check_range(table, "nms_thresh", self.nms_thresh, 0, 1)
        check_range(table, "detections_per_img", self.detections_per_img, 1)
