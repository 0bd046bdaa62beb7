"""What each detector family and architecture is, declared without building anything.

A family declares its FPN levels (names and strides), its anchors per location and what its classification
output holds; an architecture adds its body and FPN channels. From these alone ``signature`` gives the
``FrsSignature`` a built adapter would report, so a student is checked against a teacher (or a cache) before
any detector exists. ``tests/test_registry.py`` keeps the declarations equal to what the adapters build.
"""

from __future__ import annotations

from dataclasses import dataclass

from frs_cli.errors import ModelError
from frs_cli.models.base import FrsSignature, LevelSpec

P3_P7 = (("P3", 8), ("P4", 16), ("P5", 32), ("P6", 64), ("P7", 128))
P2_P6 = (("P2", 4), ("P3", 8), ("P4", 16), ("P5", 32), ("P6", 64))


@dataclass(frozen=True)
class FamilySpec:
    module: str  # the adapter module that builds it (imported only to build)
    levels: tuple[tuple[str, int], ...]  # FPN levels the FRS losses use: (name, stride in input pixels), finest first
    anchors: int  # anchors per location
    per_anchor: str  # "classes": one logit per class and anchor (A x K); "objectness": one per anchor (RPN)
    nms_thresh: float = 0.5  # per-class NMS IoU at inference in the family's configs (mmdetection's test_cfg)
    # the official FRS weights of the feature loss (alpha) and the head loss (beta) for this family (FRS.md): what a
    # recipe that leaves distill.alpha or distill.beta out gets
    alpha: float = 0.0
    beta: float = 0.0

    def cls_channels(self, num_classes: int) -> int:
        """Channels of each level's classification output, the set the FRS mask takes its max over (FRS.md)."""
        return self.anchors * (num_classes if self.per_anchor == "classes" else 1)


FAMILIES: dict[str, FamilySpec] = {
    "retinanet": FamilySpec("frs_cli.models.retinanet", P3_P7, anchors=9, per_anchor="classes",  # 3 scales x 3 ratios
                            alpha=0.005, beta=0.02),
    "fcos": FamilySpec("frs_cli.models.fcos", P3_P7, anchors=1, per_anchor="classes",  # no centerness
                       alpha=0.01, beta=0.05),
    "faster_rcnn": FamilySpec("frs_cli.models.faster_rcnn", P2_P6, anchors=3, per_anchor="objectness",  # 3 ratios
                              alpha=0.002, beta=0.1),
    "gfl": FamilySpec("frs_cli.models.gfl", P3_P7, anchors=1, per_anchor="classes", nms_thresh=0.6,
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


def signature(arch: str, num_classes: int) -> FrsSignature:
    """The ``FrsSignature`` of ``arch`` with ``num_classes`` classes, as its built adapter reports it."""
    spec = arch_spec(arch)
    family = FAMILIES[spec.family]
    levels = tuple(LevelSpec(name, stride, spec.fpn_channels) for name, stride in family.levels)
    return FrsSignature(spec.family, levels, family.cls_channels(num_classes))
