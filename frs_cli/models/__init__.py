"""Detector adapters by name: one factory, ``build_detector``, over torchvision's detectors.

Weights are either a torchvision weights enum name (downloaded by torchvision when a user asks for it and
the machine has internet) or the path of a checkpoint written by ``frs train`` / ``frs distill``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frs_cli.errors import ModelError
from frs_cli.models.backbones import TINY_BODIES
from frs_cli.models.base import (
    Detector,
    DetectorOutput,
    FrsSignature,
    LevelSpec,
    check_compatible,
    fingerprint_state_dict,
)
from frs_cli.models.config import ModelConfig

__all__ = [
    "ARCHS", "Detector", "DetectorOutput", "FrsSignature", "LevelSpec", "ModelConfig", "build_cls_head", "build_detector",
    "check_compatible", "check_distillable",
    "fingerprint_state_dict", "load_checkpoint_file", "load_state", "model_fingerprint",
]

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


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
        head_options=("norm_on_bbox", "centerness_on_reg"),
        summary="mmdetection fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco")
    return archs


MMDET_ARCHS = _mmdet_archs()

# family -> the module that builds it (imported when first used)
FAMILIES = {
    "retinanet": "frs_cli.models.retinanet",
    "fcos": "frs_cli.models.fcos",
    "faster_rcnn": "frs_cli.models.faster_rcnn",
    "gfl": "frs_cli.models.gfl",
}

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


def _is_weights_enum(name: str) -> bool:
    return bool(name) and "_Weights." in name and not Path(name).exists()


def _get_weights_enum(name: str):
    from torchvision.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelError(f"weights: expected a torchvision weights enum name or a checkpoint path, got {name!r}",
                         hint="for example RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1") from exc


def _download_state_dict(weights) -> dict:
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as exc:  # URLError is an OSError
        raise ModelError(f"weights {weights}: download failed ({exc})",
                         hint="without internet, pass the path of a local checkpoint instead") from exc


def _family(name: str):
    """The module implementing a family: ``build(spec, cfg, num_classes, backbone_weights, trained)``,
    ``build_cls_head(head_spec)`` and ``DEFAULT_ANCHOR_SIZE``."""
    return importlib.import_module(FAMILIES[name])


def build_detector(cfg: ModelConfig, num_classes: int, load_weights: bool = True) -> Detector:
    """The adapter named by ``cfg.arch`` with ``num_classes`` object classes, weights loaded.

    ``load_weights=False`` builds the architecture only (for example to receive a checkpoint's weights).
    """
    if cfg.arch not in ARCHS:
        raise ModelError(f"model: unknown arch {cfg.arch!r}", hint=f"valid names: {', '.join(ARCHS)}")
    if num_classes < 1:
        raise ModelError(f"model: expected at least one class, got num_classes={num_classes}")
    spec = ARCHS[cfg.arch]
    backbone_weights = None
    if cfg.weights_backbone and load_weights and not cfg.weights:  # full weights overwrite the backbone's anyway
        if spec.body in TINY_BODIES:
            raise ModelError(f"weights_backbone: {cfg.arch} has no pretrained backbone, got {cfg.weights_backbone!r}")
        backbone_weights = _get_weights_enum(cfg.weights_backbone)
    trained = _is_weights_enum(cfg.weights) or bool(cfg.weights_backbone)
    detector = _family(spec.family).build(spec, cfg, num_classes, backbone_weights, trained)
    if spec.pixel_norm != "imagenet_rgb":  # the default stays the buffers' own float32 values, bit for bit
        detector.set_pixel_norm(spec.pixel_norm)
    if load_weights and cfg.weights:
        load_weights_into(detector, cfg.weights)
    return detector


def build_cls_head(spec: dict) -> nn.Module:
    """Rebuild a classification head from ``Detector.cls_head_spec()`` (weights to be loaded after)."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise ModelError(f"classification head: unknown family {family!r}", hint=f"known: {', '.join(FAMILIES)}")
    return _family(family).build_cls_head(spec)


def check_distillable(student: ModelConfig, teacher: ModelConfig, num_classes: int) -> None:
    """FrsError, before any work, when a recipe's student cannot be distilled from its teacher (see
    ``check_compatible``). Compares the architectures alone: no weights are loaded or downloaded."""
    check_compatible(build_detector(student, num_classes, load_weights=False).signature,
                     build_detector(teacher, num_classes, load_weights=False).signature)


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a checkpoint written by frs; ModelError if it is missing or not one of ours."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint: expected a file at {str(p)!r}, but it does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ModelError(f"checkpoint {str(p)!r}: not a readable torch checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise ModelError(f"checkpoint {str(p)!r}: expected an frs checkpoint (keys 'arch', 'model'), got another file")
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise ModelError(f"checkpoint {str(p)!r}: format {ckpt['format']} is newer than this frs reads "
                         f"({CHECKPOINT_FORMAT})", hint="upgrade frs")
    return ckpt


def load_state(detector: Detector, state: dict, source: str) -> None:
    """Load a torchvision-style state dict into the adapter's detector; ModelError naming what does not fit."""
    core = detector.core()
    expected = core.state_dict()
    # BatchNorm2d counts batches, FrozenBatchNorm2d does not: either side may lack these entries.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in expected}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                  f"{len(wrong)} of another shape (e.g. {[(k, tuple(state[k].shape)) for k in wrong[:2]]})")
        raise ModelError(f"weights {source}: do not fit {detector.arch} with {detector.num_classes} classes: {detail}")
    core.load_state_dict(state, strict=False)


def load_weights_into(detector: Detector, weights: str) -> None:
    if _is_weights_enum(weights):
        enum = _get_weights_enum(weights)
        categories = len(enum.meta.get("categories", []))
        if categories and categories != detector.num_classes:
            raise ModelError(f"weights {weights}: predict {categories} classes, the dataset has {detector.num_classes}",
                             hint="for COCO-pretrained torchvision weights set data.label_map = 'category_id'")
        load_state(detector, detector.adapt_torchvision_state(_download_state_dict(enum)), weights)
        if weights.split(".")[-2:] in (["RetinaNet_ResNet50_FPN_Weights", "COCO_V1"],
                                       ["FasterRCNN_ResNet50_FPN_Weights", "COCO_V1"]):
            for m in detector.modules():  # these weights were trained with eps 0 (torchvision does the same)
                if isinstance(m, FrozenBatchNorm2d):
                    m.eps = 0.0
        return
    ckpt = load_checkpoint_file(weights)
    if ckpt["arch"] != detector.arch:
        raise ModelError(f"checkpoint {weights!r}: holds a {ckpt['arch']}, expected {detector.arch}")
    if ckpt.get("num_classes") != detector.num_classes:
        raise ModelError(f"checkpoint {weights!r}: has {ckpt.get('num_classes')} classes, "
                         f"the dataset has {detector.num_classes}")
    load_state(detector, ckpt["model"], repr(weights))


def model_fingerprint(detector: Detector) -> str:
    return fingerprint_state_dict(detector.core().state_dict())
