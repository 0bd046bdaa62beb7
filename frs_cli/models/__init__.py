"""Detector adapters by name: one factory, ``build_detector``, over torchvision's detectors.

Weights are a torchvision weights enum name (downloaded by torchvision when a user asks for it and the
machine has internet, or found in torch's hub cache), the path of a checkpoint written by ``frs train`` /
``frs distill``, or the path of a weights file torchvision publishes (``frs_cli.models.weights``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from frs_cli.archs import (
    ARCHS,
    FAMILIES,
    MMDET_ARCHS,
    ArchSpec,
    FrsSignature,
    LevelSpec,
    ModelConfig,
    arch_spec,
    check_compatible,
    default_anchor_size,
    signature,
)
from frs_cli.data.coco import category_differences
from frs_cli.errors import ModelError
from frs_cli.files import missing_file
from frs_cli.models.backbones import TINY_BODIES
from frs_cli.models.base import (
    Detector,
    DetectorOutput,
    fingerprint_state_dict,
)
from frs_cli.models.torchfile import load_torch_file, refuse_training_state
from frs_cli.models.weights import (
    CHECKPOINT_FORMAT,
    Published,
    WeightsSource,
    check_checkpoint_format,
    check_hub_copy,
    hub_checkpoints,
    is_mmdet_checkpoint,
    is_weights_enum,
    resolve_weights,
    state_in,
    state_mismatch,
    without_batch_counts,
)

__all__ = [
    "ARCHS",
    "CHECKPOINT_FORMAT",
    "FAMILIES",
    "MMDET_ARCHS",
    "ArchSpec",
    "Detector",
    "DetectorOutput",
    "FrsSignature",
    "LevelSpec",
    "ModelConfig",
    "anchor_mismatch",
    "build_cls_head",
    "build_detector",
    "build_teacher",
    "check_compatible",
    "check_distillable",
    "default_anchor_size",
    "fingerprint_state_dict",
    "load_checkpoint_file",
    "load_state",
    "load_torch_file",
    "model_fingerprint",
    "signature",
    "warn_other_categories",
    "warn_untrained_teacher",
]

log = logging.getLogger(__name__)
# torchvision's v1 COCO weights were trained with FrozenBatchNorm2d eps 0 (torchvision's builders set it too)
EPS_ZERO_WEIGHTS = ("RetinaNet_ResNet50_FPN_Weights.COCO_V1", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1")


# seconds a download may wait for the network at one step (connecting, or between two reads) before it fails: a
# proxy or firewall that takes the connection and never answers would otherwise hold a job for ever
DOWNLOAD_TIMEOUT_S = 60.0


def _download_state_dict(weights, label: str) -> dict:
    """The state dict of a torchvision weights enum: torch's hub cache holds it after the first download (or
    a copy put there by hand, checked here: torch itself checks the hash of downloads only). ``label``: how
    messages name it ("teacher.weights RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1")."""
    file_name = check_hub_copy(Published.of(weights), label)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torch.hub's urlopen sets none: a silent network hung for ever
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as exc:  # URLError is an OSError, and so is the timeout
        raise ModelError(f"{label}: download failed ({exc})",
                         hint=f"without internet, pass the path of torchvision's file {file_name} instead, or put "
                              f"it in torch's hub cache {str(hub_checkpoints())!r}") from exc
    finally:
        socket.setdefaulttimeout(previous)


def _family(name: str):
    """The module implementing a family: ``build(spec, cfg, num_classes, backbone_weights, trained)``,
    ``build_cls_head(head_spec)`` and ``DEFAULT_ANCHOR_SIZE`` (``frs_cli.archs``' declaration)."""
    return importlib.import_module(FAMILIES[name].module)


def anchor_mismatch(student: ModelConfig, teacher_arch: str, teacher_anchor_size: int) -> str | None:
    """None when the student's anchors are the teacher's size at the finest level (``anchor_size``, 0 read as the
    arch's own), else a sentence naming both. FRS's head term pairs each position's classification output (per
    anchor, or per level's scale range for FCOS) with the teacher's of the same index, which then stands for
    boxes of another size."""
    s = student.anchor_size or default_anchor_size(student.arch)
    t = teacher_anchor_size or default_anchor_size(teacher_arch)
    if s == t:
        return None
    return (f"the student's anchors are {s} px at the finest level (student.anchor_size), the teacher's {t} px: "
            "the head term pairs each anchor's classification output with the teacher's of the same index, which "
            f"stands for boxes of another size; set student.anchor_size = {t}, or distill.beta = 0 to distil the "
            "features alone")


def build_detector(cfg: ModelConfig, num_classes: int, load_weights: bool = True, table: str = "") -> Detector:
    """The adapter named by ``cfg.arch`` with ``num_classes`` object classes, weights loaded.

    ``load_weights=False`` builds the architecture only (for example to receive a checkpoint's weights).
    ``table``: the recipe table ``cfg`` is ("teacher", "student"), so that a weights error names the key
    (``teacher.weights``); "" names ``weights`` alone.
    """
    spec = arch_spec(cfg.arch)
    if num_classes < 1:
        raise ModelError(f"model: expected at least one class, got num_classes={num_classes}")
    if not cfg.nms_thresh:  # the NMS threshold of the config the arch mirrors (GFL's 0.6, most others' 0.5)
        cfg = dataclasses.replace(cfg, nms_thresh=spec.nms_iou())
    prefix = f"{table}." if table else ""
    source = resolve_weights(cfg.weights, cfg.arch, f"{prefix}weights") if (load_weights and cfg.weights) else None
    backbone_weights = None
    if cfg.weights_backbone and load_weights and not cfg.weights:  # full weights overwrite the backbone's anyway
        if spec.body in TINY_BODIES:
            raise ModelError(f"{prefix}weights_backbone: {cfg.arch} has no pretrained backbone, got "
                             f"{cfg.weights_backbone!r}")
        backbone_weights = _backbone_weights(cfg.weights_backbone, spec.body, f"{prefix}weights_backbone")
    # torchvision's weights (enum or file) are built as torchvision builds a pretrained model (v1: frozen BN)
    pretrained = source.kind in ("enum", "torchvision") if source else is_weights_enum(cfg.weights)
    trained = pretrained or bool(cfg.weights_backbone)
    detector = _family(spec.family).build(spec, cfg, num_classes, backbone_weights, trained)
    if spec.pixel_norm != "imagenet_rgb":  # the default stays the buffers' own float32 values, bit for bit
        detector.set_pixel_norm(spec.pixel_norm)
    if source is not None:
        _load_source(detector, source)
    return detector


# The random initialisation of a teacher without weights: every build of one recipe's teacher is the same model.
UNTRAINED_TEACHER_SEED = 0


def build_teacher(cfg: ModelConfig, num_classes: int) -> Detector:
    """A recipe's teacher (``build_detector``). One without weights (a random detection head: tests, timing
    benches) is initialised from ``UNTRAINED_TEACHER_SEED``, the global random state left as it was, so that
    every build of it is the same teacher: a resumed ``teacher-cache`` matches the cache it continues (whose
    fingerprint is that of the built state), the processes of a torchrun job write one teacher's targets, and
    ``distill --online`` runs the teacher a cache of the same recipe holds."""
    if cfg.weights:
        return build_detector(cfg, num_classes, table="teacher")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_TEACHER_SEED)
        return build_detector(cfg, num_classes, table="teacher")


def warn_untrained_teacher(cfg: ModelConfig, command: str) -> None:
    """One warning when the teacher ``cfg`` names no weights: its detection head is then random (its backbone at
    best ImageNet's), so its FRS masks and targets teach nothing. Tests and timing benches do this on purpose;
    a user has most likely forgotten ``teacher.weights`` (FRS.md's known trap: check the teacher is the trained one)."""
    if not cfg.weights:
        backbone = f"an ImageNet backbone ({cfg.weights_backbone}) and " if cfg.weights_backbone else ""
        log.warning("%s: teacher.weights is empty, so the teacher (%s) has %sa random detection head: its FRS masks "
                    "and targets teach nothing; set teacher.weights to a torchvision weights name or a checkpoint path",
                    command, cfg.arch, backbone)


def warn_other_categories(detector: Detector, categories: list[dict], command: str) -> None:
    """One warning when the model file ``detector`` was loaded from was trained on other categories than a
    dataset's (``CocoIndex.categories``, names by id; ``data.coco.category_differences``): a teacher's class
    channels, and so its FRS masks and head targets, would stand for other classes. ``eval`` warns alike."""
    differs = category_differences(getattr(detector, "trained_on", {}), categories)
    if differs:
        log.warning("%s: the teacher was trained on other categories than the data has: %s (is teacher.weights the "
                    "teacher of this dataset?)", command, differs)


def _backbone_weights(text: str, body: str, key: str):
    """The state dict of an ImageNet enum (downloaded, or from torch's hub cache) or of a file, for ``body``;
    ModelError naming ``key`` ("student.weights_backbone") for a file that is not ``body``'s."""
    source = resolve_weights(text, body, key)
    if source.kind == "enum":
        return _download_state_dict(source.enum, source.label)
    if source.kind == "frs":
        raise ModelError(f"{source.label}: expected torchvision's ImageNet {body} weights, got an "
                         "frs detector checkpoint", hint="a detector checkpoint belongs in weights")
    if source.published:
        log.info("%s is torchvision's %s", source.label, source.published.name)
    with torch.device("meta"):  # the body's names and shapes, no memory: the file is named here, the builder cannot
        expected = getattr(torchvision.models, body)(weights=None).state_dict()
    detail = state_mismatch(expected, source.content)
    if detail:
        raise ModelError(f"{source.label}: does not fit torchvision's {body}: {detail}",
                         hint=f"expected the ImageNet weights of {body} (its classifier 'fc' included)")
    return source.content


def build_cls_head(spec: dict) -> nn.Module:
    """Rebuild a classification head from ``Detector.cls_head_spec()`` (weights to be loaded after)."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise ModelError(f"classification head: unknown family {family!r}", hint=f"known: {', '.join(FAMILIES)}")
    return _family(family).build_cls_head(spec)


def check_distillable(student: ModelConfig, teacher: ModelConfig, num_classes: int, command: str = "distill") -> None:
    """FrsError naming ``command``, before any work, when a recipe's student cannot be distilled from its teacher
    (see ``check_compatible``). Compares the registry's declarations alone: nothing is built, loaded or downloaded."""
    check_compatible(signature(student.arch, num_classes), signature(teacher.arch, num_classes), command)


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a model file written by frs; ModelError if it is missing or not one (a training state, another file)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint: expected a file at {str(p)!r}, but it {missing_file(p)}")
    try:
        ckpt = load_torch_file(p)
    except ModelError as exc:
        raise ModelError(f"checkpoint {str(p)!r}: {exc.message}") from None
    refuse_training_state(ckpt, f"checkpoint {str(p)!r}", p)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        got = f"keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        mmdet = is_mmdet_checkpoint(ckpt)
        weights = not mmdet and state_in(ckpt)[0] is not None  # what --pipeline's weights settings load
        hint = (f"an mmdetection checkpoint: frs convert mmdet {p} --arch ARCH --out FILE.pt makes a model file of it"
                if mmdet else "a file of weights alone: frs eval --pipeline RECIPE --set teacher.weights=FILE scores "
                "it as the recipe's teacher builds it" if weights else None)
        raise ModelError(f"checkpoint {str(p)!r}: expected an frs model file (keys 'arch', 'model'), got {got}",
                         hint=hint)
    check_checkpoint_format(ckpt, f"checkpoint {str(p)!r}")
    return ckpt


def load_state(detector: Detector, state: dict, source: str) -> None:
    """Load a torchvision-style state dict into the adapter's detector; ModelError naming ``source`` (the setting
    and the file: "teacher.weights 'x.pth'", "checkpoint 'x.pt'") and what does not fit."""
    core = detector.core()
    expected = core.state_dict()
    detail = state_mismatch(expected, state)
    if detail:
        hint = ("this looks like an ImageNet classifier: name it in weights_backbone" if "fc.weight" in state
                else "the weights must be of the recipe's arch, for the dataset's class count")
        raise ModelError(f"{source}: do not fit {detector.arch} with {detector.num_classes} classes: {detail}",
                         hint=hint)
    core.load_state_dict(without_batch_counts(state, expected), strict=False)


def load_weights_into(detector: Detector, weights: str) -> None:
    """Load ``weights`` (enum name, frs checkpoint or torchvision file) into an already built ``detector``."""
    _load_source(detector, resolve_weights(weights, detector.arch))


def _load_source(detector: Detector, source: WeightsSource) -> None:
    if source.kind == "frs":
        ckpt = source.content
        if ckpt["arch"] != detector.arch:
            raise ModelError(f"{source.label}: holds a {ckpt['arch']}, expected {detector.arch}")
        if ckpt.get("num_classes") != detector.num_classes:
            raise ModelError(f"{source.label}: has {ckpt.get('num_classes')} classes, "
                             f"the dataset has {detector.num_classes}")
        load_state(detector, ckpt["model"], source.label)
        # the categories its class channels stand for, for warn_other_categories
        detector.trained_on = {key: ckpt.get(key) for key in ("category_ids", "category_names")}
        return
    published = source.published
    if published and published.categories and published.categories != detector.num_classes:
        raise ModelError(f"{source.label}: predict {published.categories} classes, the dataset has "
                         f"{detector.num_classes}",
                         hint=f"COCO-pretrained torchvision weights predict COCO's category ids 0..{published.categories - 1}: "
                              f"they need a dataset of COCO's categories and data.label_map = 'category_id' "
                              f"(for a dataset of other categories, train a teacher on it: frs train)")
    state = _download_state_dict(source.enum, source.label) if source.kind == "enum" else source.content
    load_state(detector, detector.adapt_torchvision_state(state), source.label)
    if published and source.kind == "torchvision":
        log.info("%s are torchvision's %s (sha256 prefix %s)", source.label, published.name,
                 published.hash_prefix)
    if published and published.name in EPS_ZERO_WEIGHTS:
        for m in detector.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = 0.0


def model_fingerprint(detector: Detector) -> str:
    return fingerprint_state_dict(detector.core().state_dict())
