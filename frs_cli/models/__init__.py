"""Detector adapters by name: one factory, ``build_detector``, over torchvision's detectors.

Weights are a torchvision weights enum name (downloaded by torchvision when a user asks for it and the
machine has internet, or found in torch's hub cache), the path of a checkpoint written by ``frs train`` /
``frs distill``, or the path of a weights file torchvision publishes (``frs_cli.models.weights``).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

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
from frs_cli.models.torchfile import load_torch_file, refuse_training_state
from frs_cli.models.weights import (
    CHECKPOINT_FORMAT,
    Published,
    WeightsSource,
    check_checkpoint_format,
    check_hub_copy,
    is_weights_enum,
    resolve_weights,
    state_mismatch,
    without_batch_counts,
)

__all__ = [
    "ARCHS", "CHECKPOINT_FORMAT", "Detector", "DetectorOutput", "FrsSignature", "LevelSpec", "ModelConfig",
    "build_cls_head", "build_detector",
    "check_compatible", "check_distillable",
    "fingerprint_state_dict", "load_checkpoint_file", "load_state", "load_torch_file", "model_fingerprint",
]

log = logging.getLogger(__name__)
# torchvision's v1 COCO weights were trained with FrozenBatchNorm2d eps 0 (torchvision's builders set it too)
EPS_ZERO_WEIGHTS = ("RetinaNet_ResNet50_FPN_Weights.COCO_V1", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1")


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


def _download_state_dict(weights) -> dict:
    """The state dict of a torchvision weights enum: torch's hub cache holds it after the first download (or
    a copy put there by hand, checked here: torch itself checks the hash of downloads only)."""
    file_name = check_hub_copy(Published.of(weights))
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as exc:  # URLError is an OSError
        raise ModelError(f"weights {weights}: download failed ({exc})",
                         hint=f"without internet, pass the path of torchvision's file {file_name} instead, or put "
                              "it in torch's hub cache ($TORCH_HOME/hub/checkpoints/)") from exc


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
    source = resolve_weights(cfg.weights, cfg.arch) if (load_weights and cfg.weights) else None
    backbone_weights = None
    if cfg.weights_backbone and load_weights and not cfg.weights:  # full weights overwrite the backbone's anyway
        if spec.body in TINY_BODIES:
            raise ModelError(f"weights_backbone: {cfg.arch} has no pretrained backbone, got {cfg.weights_backbone!r}")
        backbone_weights = _backbone_weights(cfg.weights_backbone, spec.body)
    # torchvision's weights (enum or file) are built as torchvision builds a pretrained model (v1: frozen BN)
    pretrained = source.kind in ("enum", "torchvision") if source else is_weights_enum(cfg.weights)
    trained = pretrained or bool(cfg.weights_backbone)
    detector = _family(spec.family).build(spec, cfg, num_classes, backbone_weights, trained)
    if spec.pixel_norm != "imagenet_rgb":  # the default stays the buffers' own float32 values, bit for bit
        detector.set_pixel_norm(spec.pixel_norm)
    if source is not None:
        _load_source(detector, source)
    return detector


def _backbone_weights(text: str, body: str):
    """The state dict of an ImageNet enum (downloaded, or from torch's hub cache) or of a file, for ``body``."""
    source = resolve_weights(text, body)
    if source.kind == "enum":
        return _download_state_dict(source.enum)
    if source.kind == "frs":
        raise ModelError(f"weights_backbone {source.label}: expected torchvision's ImageNet {body} weights, got an "
                         "frs detector checkpoint", hint="a detector checkpoint belongs in weights")
    if source.published:
        log.info("weights_backbone %s is torchvision's %s", source.label, source.published.name)
    return source.content


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
    """Read a model file written by frs; ModelError if it is missing or not one (a training state, another file)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint: expected a file at {str(p)!r}, but it does not exist")
    try:
        ckpt = load_torch_file(p)
    except ModelError as exc:
        raise ModelError(f"checkpoint {str(p)!r}: {exc.message}") from None
    refuse_training_state(ckpt, f"checkpoint {str(p)!r}", p)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        got = f"keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"checkpoint {str(p)!r}: expected an frs model file (keys 'arch', 'model'), got {got}")
    check_checkpoint_format(ckpt, repr(str(p)))
    return ckpt


def load_state(detector: Detector, state: dict, source: str) -> None:
    """Load a torchvision-style state dict into the adapter's detector; ModelError naming what does not fit."""
    core = detector.core()
    expected = core.state_dict()
    detail = state_mismatch(expected, state)
    if detail:
        hint = ("this looks like an ImageNet classifier: name it in weights_backbone" if "fc.weight" in state
                else "the weights must be of the recipe's arch, for the dataset's class count")
        raise ModelError(f"weights {source}: do not fit {detector.arch} with {detector.num_classes} classes: {detail}",
                         hint=hint)
    core.load_state_dict(without_batch_counts(state, expected), strict=False)


def load_weights_into(detector: Detector, weights: str) -> None:
    """Load ``weights`` (enum name, frs checkpoint or torchvision file) into an already built ``detector``."""
    _load_source(detector, resolve_weights(weights, detector.arch))


def _load_source(detector: Detector, source: WeightsSource) -> None:
    if source.kind == "frs":
        ckpt = source.content
        if ckpt["arch"] != detector.arch:
            raise ModelError(f"checkpoint {source.label}: holds a {ckpt['arch']}, expected {detector.arch}")
        if ckpt.get("num_classes") != detector.num_classes:
            raise ModelError(f"checkpoint {source.label}: has {ckpt.get('num_classes')} classes, "
                             f"the dataset has {detector.num_classes}")
        load_state(detector, ckpt["model"], source.label)
        return
    published = source.published
    if published and published.categories and published.categories != detector.num_classes:
        raise ModelError(f"weights {source.label}: predict {published.categories} classes, the dataset has "
                         f"{detector.num_classes}",
                         hint="for COCO-pretrained torchvision weights set data.label_map = 'category_id'")
    state = _download_state_dict(source.enum) if source.kind == "enum" else source.content
    load_state(detector, detector.adapt_torchvision_state(state), source.label)
    if published and source.kind == "torchvision":
        log.info("weights %s are torchvision's %s (sha256 prefix %s)", source.label, published.name,
                 published.hash_prefix)
    if published and published.name in EPS_ZERO_WEIGHTS:
        for m in detector.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = 0.0


def model_fingerprint(detector: Detector) -> str:
    return fingerprint_state_dict(detector.core().state_dict())
