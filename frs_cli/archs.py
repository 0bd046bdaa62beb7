"""What each detector family and architecture is, declared without building anything.

A family declares its FPN levels (names and strides), its anchors per location and what its classification
output holds; an architecture adds its body and FPN channels. From these alone ``signature`` gives the
``FrsSignature`` a built adapter would report, so a student is checked against a teacher (or a cache) before
any detector exists. ``tests/test_registry.py`` keeps the declarations equal to what the adapters build.
``ModelConfig`` is a recipe's ``[teacher]`` or ``[student]`` table, the arch it names and how it is built.

Nothing here imports torch: the commands that only read recipes and this table (``frs models``, ``frs recipe``)
start in a fraction of a second, and ``frs_cli.models`` builds what is declared here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from frs_cli.errors import FrsError, ModelError, check_range


@dataclass(frozen=True)
class LevelSpec:
    name: str  # "P3"
    stride: int  # input pixels per position
    channels: int  # FPN channels

    def to_dict(self) -> dict:
        return {"name": self.name, "stride": self.stride, "channels": self.channels}


@dataclass(frozen=True)
class FrsSignature:
    """What FRS needs to line up between a teacher and a student: the family (which head output is the
    "classification" output), the FPN levels (names and strides) and the classification channels per
    position. FPN channel counts may differ: the adapters phi map the student's onto the teacher's."""

    family: str
    levels: tuple[LevelSpec, ...]
    cls_channels: int


def check_compatible(student: FrsSignature, teacher: FrsSignature, command: str = "distill") -> None:
    """FrsError, its line starting with ``command``, unless student and teacher line up for FRS: same family, the
    same FPN levels one to one (names and strides), the same classification channels per position. FPN channels
    may differ (phi)."""
    if student.family != teacher.family:
        raise FrsError(f"{command}: the teacher is a {teacher.family} detector, the student a {student.family}; FRS "
                       "compares the same head output of both (its mask and head loss)",
                       hint="pick a student of the teacher's family")
    s = [(lv.name, lv.stride) for lv in student.levels]
    t = [(lv.name, lv.stride) for lv in teacher.levels]
    if s != t:
        raise FrsError(f"{command}: student FPN levels {s} do not line up with the teacher's {t}",
                       hint="pick a student of the same detector family and strides")
    if student.cls_channels != teacher.cls_channels:
        raise FrsError(f"{command}: the teacher's {teacher.family} classification output has {teacher.cls_channels} "
                       f"channels per position, the student's {student.cls_channels}",
                       hint="teacher and student need the same classes and anchors per position")


P3_P7 = (("P3", 8), ("P4", 16), ("P5", 32), ("P6", 64), ("P7", 128))
P2_P6 = (("P2", 4), ("P3", 8), ("P4", 16), ("P5", 32), ("P6", 64))


@dataclass(frozen=True)
class FamilySpec:
    module: str  # the adapter module that builds it (imported only to build)
    levels: tuple[tuple[str, int], ...]  # FPN levels the FRS losses use: (name, stride in input pixels), finest first
    anchors: int  # anchors per location
    per_anchor: str  # "classes": one logit per class and anchor (A x K); "objectness": one per anchor (RPN)
    anchor_size: int  # the anchor (FCOS: point) size at the finest level, px, that a recipe's anchor_size = 0 means
    nms_thresh: float = 0.5  # per-class NMS IoU at inference in the family's configs (mmdetection's test_cfg)
    # the official FRS weights of the feature loss (alpha) and the head loss (beta) for this family (FRS.md): what a
    # recipe that leaves distill.alpha or distill.beta out gets
    alpha: float = 0.0
    beta: float = 0.0

    def cls_channels(self, num_classes: int) -> int:
        """Channels of each level's classification output, the set the FRS mask takes its max over (FRS.md)."""
        return self.anchors * (num_classes if self.per_anchor == "classes" else 1)


FAMILIES: dict[str, FamilySpec] = {
    # torchvision's anchors: 32 px at P3, doubling per level, 3 scales x 3 ratios
    "retinanet": FamilySpec("frs_cli.models.retinanet", P3_P7, anchors=9, per_anchor="classes", anchor_size=32,
                            alpha=0.005, beta=0.02),
    # torchvision's: one point per position, its "anchor" size the stride (8 px at P3); no centerness
    "fcos": FamilySpec("frs_cli.models.fcos", P3_P7, anchors=1, per_anchor="classes", anchor_size=8,
                       alpha=0.01, beta=0.05),
    # torchvision's RPN: 32 px at P2, doubling per level, ratios 0.5 / 1 / 2
    "faster_rcnn": FamilySpec("frs_cli.models.faster_rcnn", P2_P6, anchors=3, per_anchor="objectness", anchor_size=32,
                              alpha=0.002, beta=0.1),
    # ATSS / GFL: octave scale 8 x stride 8 at P3
    "gfl": FamilySpec("frs_cli.models.gfl", P3_P7, anchors=1, per_anchor="classes", anchor_size=64, nms_thresh=0.6,
                      alpha=0.1, beta=0.05),
}


@dataclass(frozen=True)
class ArchSpec:
    family: str  # adapter family
    body: str  # torchvision ResNet name, or a key of TINY_BODIES
    v2: bool = False  # torchvision's "v2" variant (RetinaNet: P6 from C5, GN head, GIoU; Faster R-CNN: 2-conv RPN, BN FPN and box head)
    fpn_channels: int = 256
    summary: str = ""
    variant: str = ""  # "mmdet": mmdetection's layout of the family, what frs_cli.models.mmdet_convert loads
    style: str = "pytorch"  # ResNet bottleneck stride on the 3x3 conv (pytorch) or the first 1x1 (caffe)
    pixel_norm: str = "imagenet_rgb"  # how the body expects pixels: a key of frs_cli.models.base.PIXEL_NORMS
    head_options: tuple[str, ...] = ()  # family-specific head switches (FCOS: norm_on_bbox, centerness_on_reg)
    nms_thresh: float = 0.0  # per-class NMS IoU at inference in the config it mirrors; 0: its family's

    def nms_iou(self) -> float:
        """The NMS IoU threshold of the config this arch mirrors (mmdetection's ``test_cfg``): its own, else its
        family's."""
        return self.nms_thresh or FAMILIES[self.family].nms_thresh


def _mmdet_archs() -> dict[str, ArchSpec]:
    """The layouts of mmdetection's models, for the paper's teachers (``frs convert mmdet``) and their students.
    The model-zoo config each one holds is named in its summary."""
    caffe = {"style": "caffe", "pixel_norm": "detectron_bgr", "variant": "mmdet"}
    torch_style = {"pixel_norm": "mmdet_rgb", "variant": "mmdet"}
    archs = {}
    for depth in (50, 101):
        body = f"resnet{depth}"
        archs[f"retinanet_resnet{depth}_fpn_mmdet"] = ArchSpec(
            "retinanet", body, **torch_style, summary=f"mmdetection retinanet_r{depth}_fpn_*_coco")
        archs[f"fcos_resnet{depth}_caffe_fpn_mmdet"] = ArchSpec(
            "fcos", body, **caffe, summary=f"mmdetection fcos_r{depth}-caffe_fpn_gn-head[_ms-640-800-2x]_coco")
        archs[f"fcos_resnet{depth}_fpn_mmdet"] = ArchSpec(
            "fcos", body, **torch_style, summary="mmdetection's plain FCOS head on a pytorch-style body (a student)")
        archs[f"fasterrcnn_resnet{depth}_fpn_mmdet"] = ArchSpec(
            "faster_rcnn", body, **torch_style, summary=f"mmdetection faster-rcnn_r{depth}_fpn_*_coco")
        archs[f"gfl_resnet{depth}_fpn_mmdet"] = ArchSpec(
            "gfl", body, **torch_style, summary=f"mmdetection gfl_r{depth}_fpn_*_coco")
    archs["fcos_resnet50_caffe_fpn_tricks_mmdet"] = ArchSpec(
        "fcos", "resnet50", variant="mmdet", style="caffe", pixel_norm="detectron2_bgr",
        head_options=("norm_on_bbox", "centerness_on_reg"), nms_thresh=0.6,
        summary="mmdetection fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco")
    return archs


MMDET_ARCHS = _mmdet_archs()

ARCHS: dict[str, ArchSpec] = {
    "retinanet_resnet50_fpn": ArchSpec("retinanet", "resnet50", summary="torchvision RetinaNet R50-FPN (COCO 36.4 AP)"),
    "retinanet_resnet50_fpn_v2": ArchSpec("retinanet", "resnet50", v2=True,
                                          summary="torchvision RetinaNet R50-FPN v2 (COCO 41.5 AP)"),
    "retinanet_resnet18_fpn": ArchSpec("retinanet", "resnet18", summary="RetinaNet R18-FPN"),
    "retinanet_resnet34_fpn": ArchSpec("retinanet", "resnet34", summary="RetinaNet R34-FPN"),
    "retinanet_resnet18_fpn_v2": ArchSpec("retinanet", "resnet18", v2=True,
                                          summary="RetinaNet R18-FPN, v2 head (GroupNorm, GIoU, P6 from C5)"),
    "retinanet_resnet34_fpn_v2": ArchSpec("retinanet", "resnet34", v2=True,
                                          summary="RetinaNet R34-FPN, v2 head (GroupNorm, GIoU, P6 from C5)"),
    "retinanet_resnet101_fpn": ArchSpec("retinanet", "resnet101", summary="RetinaNet R101-FPN"),
    "retinanet_resnext101_32x8d_fpn": ArchSpec("retinanet", "resnext101_32x8d", summary="RetinaNet X101-32x8d-FPN"),
    # CPU-sized models use the v2 head (GroupNorm, GIoU): with 64 channels, the v1 head's std-0.01 init shrinks
    # the signal about 1000x over its four convs and training from scratch stalls on the focal-loss plateau.
    "retinanet_small_fpn": ArchSpec("retinanet", "small", v2=True, fpn_channels=64,
                                    summary="small CPU RetinaNet, v2 head (demo teacher, 64-ch FPN)"),
    "retinanet_tiny_fpn": ArchSpec("retinanet", "tiny", v2=True, fpn_channels=64,
                                   summary="tiny CPU RetinaNet, v2 head (tests, demo student, 64-ch FPN)"),
    # FCOS: torchvision's (GroupNorm head, centerness on the regression branch, GIoU loss)
    "fcos_resnet50_fpn": ArchSpec("fcos", "resnet50", summary="torchvision FCOS R50-FPN (COCO 39.2 AP)"),
    "fcos_resnet18_fpn": ArchSpec("fcos", "resnet18", summary="FCOS R18-FPN"),
    "fcos_resnet34_fpn": ArchSpec("fcos", "resnet34", summary="FCOS R34-FPN"),
    "fcos_resnet101_fpn": ArchSpec("fcos", "resnet101", summary="FCOS R101-FPN"),
    "fcos_small_fpn": ArchSpec("fcos", "small", fpn_channels=64, summary="small CPU FCOS (demo teacher, 64-ch FPN)"),
    "fcos_tiny_fpn": ArchSpec("fcos", "tiny", fpn_channels=64, summary="tiny CPU FCOS (tests, demo student, 64-ch FPN)"),
    # Faster R-CNN: torchvision's; FRS uses the RPN objectness on P2-P6
    "fasterrcnn_resnet50_fpn": ArchSpec("faster_rcnn", "resnet50", summary="torchvision Faster R-CNN R50-FPN (COCO 37.0 AP)"),
    "fasterrcnn_resnet50_fpn_v2": ArchSpec("faster_rcnn", "resnet50", v2=True,
                                           summary="torchvision Faster R-CNN R50-FPN v2 (COCO 46.7 AP)"),
    "fasterrcnn_resnet18_fpn": ArchSpec("faster_rcnn", "resnet18", summary="Faster R-CNN R18-FPN"),
    "fasterrcnn_resnet34_fpn": ArchSpec("faster_rcnn", "resnet34", summary="Faster R-CNN R34-FPN"),
    "fasterrcnn_resnet101_fpn": ArchSpec("faster_rcnn", "resnet101", summary="Faster R-CNN R101-FPN"),
    "fasterrcnn_small_fpn": ArchSpec("faster_rcnn", "small", fpn_channels=64,
                                     summary="small CPU Faster R-CNN (demo teacher, 64-ch FPN)"),
    "fasterrcnn_tiny_fpn": ArchSpec("faster_rcnn", "tiny", fpn_channels=64,
                                    summary="tiny CPU Faster R-CNN (tests, demo student, 64-ch FPN)"),
    # GFL: built here from torchvision parts (ATSS assignment, quality focal + distribution focal + GIoU)
    "gfl_resnet50_fpn": ArchSpec("gfl", "resnet50", summary="GFL R50-FPN (no torchvision weights)"),
    "gfl_resnet18_fpn": ArchSpec("gfl", "resnet18", summary="GFL R18-FPN"),
    "gfl_resnet34_fpn": ArchSpec("gfl", "resnet34", summary="GFL R34-FPN"),
    "gfl_resnet101_fpn": ArchSpec("gfl", "resnet101", summary="GFL R101-FPN (the paper's GFL teacher)"),
    "gfl_small_fpn": ArchSpec("gfl", "small", fpn_channels=64, summary="small CPU GFL (demo teacher, 64-ch FPN)"),
    "gfl_tiny_fpn": ArchSpec("gfl", "tiny", fpn_channels=64, summary="tiny CPU GFL (tests, demo student, 64-ch FPN)"),
}
ARCHS.update(MMDET_ARCHS)


def arch_spec(arch: str) -> ArchSpec:
    """The declaration of ``arch``; ModelError naming the valid ones for an unknown name."""
    if arch not in ARCHS:
        raise ModelError(f"model: unknown arch {arch!r}", hint=f"valid names: {', '.join(ARCHS)}")
    return ARCHS[arch]


def default_anchor_size(arch: str) -> int:
    """The anchor size at the finest level that ``anchor_size = 0`` gives ``arch`` (its family's)."""
    return FAMILIES[arch_spec(arch).family].anchor_size


def signature(arch: str, num_classes: int) -> FrsSignature:
    """The ``FrsSignature`` of ``arch`` with ``num_classes`` classes, as its built adapter reports it."""
    spec = arch_spec(arch)
    family = FAMILIES[spec.family]
    levels = tuple(LevelSpec(name, stride, spec.fpn_channels) for name, stride in family.levels)
    return FrsSignature(spec.family, levels, family.cls_channels(num_classes))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "retinanet_resnet50_fpn"  # a name from `frs models` (ARCHS below)
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
