"""``frs convert``: a detector trained elsewhere -> an frs model file (``frs eval``, a teacher for ``frs teacher-cache``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from frs_cli.archs import ModelConfig
from frs_cli.data.coco import CocoIndex
from frs_cli.data.geometry import GeometryConfig
from frs_cli.errors import ConfigError, ModelError
from frs_cli.files import check_output_file
from frs_cli.models import ARCHS, MMDET_ARCHS, build_detector, load_state
from frs_cli.models.mmdet_convert import (
    COCO_CATEGORY_IDS,
    COCO_NAMES,
    num_classes_of,
    read_mmdet_state,
    to_adapter_state,
)
from frs_cli.train.checkpoint import atomic_save, model_payload


@dataclass(frozen=True)
class Converted:
    arch: str
    num_classes: int
    tensors: int  # entries written
    fingerprint: str  # of the converted weights (frs_cli.models.model_fingerprint)
    out: Path


def mmdet_test_nms(arch: str) -> float:
    """The NMS IoU threshold of the mmdetection config an arch mirrors (its ``test_cfg``)."""
    return ARCHS[arch].nms_iou()


def convert_mmdet(checkpoint: str | Path, arch: str, out: str | Path, allow_pickle: bool = False,
                  categories: str | Path | None = None) -> Converted:
    """Write the frs model file ``out`` holding the weights of the mmdetection ``checkpoint`` in the adapter
    ``arch`` (one of ``MMDET_ARCHS``). Label i maps to the i-th category, in id order, of the COCO annotation
    file ``categories`` (the dataset the model was trained on: mmdetection's numbering when its config's
    ``classes`` list them in that order); without one, a model of COCO's 80 classes maps to COCO's ids and any
    other is refused. Geometry and inference settings are mmdetection's COCO test settings (short side 800, long
    side at most 1333, padding to 32; score 0.05, 100 detections, the config's NMS threshold)."""
    if arch not in MMDET_ARCHS:
        raise ModelError(f"convert mmdet: expected an mmdetection layout for --arch, got {arch!r}",
                         hint=f"one of: {', '.join(MMDET_ARCHS)}")
    check_output_file(out, "convert mmdet --out")
    if Path(out).suffix.lower() == ".onnx":  # the file written is PyTorch's, whatever its name says
        raise ConfigError(f"convert mmdet --out: expected the name of an frs model file (PyTorch's format, such as "
                          f"model.pt), got an ONNX name {str(out)!r}",
                          hint="write model.pt, then frs export --onnx model.pt model.onnx")
    if Path(out).resolve() == Path(checkpoint).resolve():  # the rename would replace the only copy of the source
        raise ConfigError(f"convert mmdet --out: expected a new file, got the checkpoint being converted {str(out)!r}",
                          hint="write the frs model file under another name")
    listed = CocoIndex(categories).categories if categories is not None else None  # a bad file fails before the work
    state = read_mmdet_state(checkpoint, allow_pickle=allow_pickle)
    family = ARCHS[arch].family
    num_classes = num_classes_of(state, family)
    label_to_category, names = _categories(num_classes, listed, categories)
    cfg = ModelConfig(arch=arch, nms_thresh=mmdet_test_nms(arch))
    detector = build_detector(cfg, num_classes, load_weights=False)
    converted = to_adapter_state(state, family, detector.core().state_dict())
    load_state(detector, converted, f"mmdet checkpoint {str(checkpoint)!r}")
    payload = model_payload(detector, cfg, label_to_category, names, GeometryConfig())
    payload["converted_from"] = {"format": "mmdet", "file": Path(checkpoint).name}
    atomic_save(payload, out)
    return Converted(arch, num_classes, len(converted), payload["fingerprint"], Path(out))


def _categories(num_classes: int, listed: list[dict] | None, source) -> tuple[list[int], list[str]]:
    """(category id, name) of each label of a model of ``num_classes`` classes: ``listed`` (the ``--categories``
    file's, in id order), else COCO's for 80 classes; ModelError when they cannot be told."""
    if listed is not None:
        if len(listed) != num_classes:
            raise ModelError(f"convert mmdet --categories: expected {num_classes} categories, one per class of the "
                             f"checkpoint, got {len(listed)} in {str(source)!r}")
        return [c["id"] for c in listed], [c["name"] for c in listed]
    if num_classes != len(COCO_CATEGORY_IDS):
        raise ModelError(f"convert mmdet: expected COCO's 80 classes or --categories, got a checkpoint of "
                         f"{num_classes} classes, whose labels name no category ids",
                         hint="pass --categories with the annotation file of the dataset it was trained on "
                              "(label i is its i-th category in id order)")
    return list(COCO_CATEGORY_IDS), list(COCO_NAMES)
