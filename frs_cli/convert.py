"""``frs convert``: a detector trained elsewhere -> an frs model file (``frs eval``, a teacher for ``frs teacher-cache``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from frs_cli.data.geometry import GeometryConfig
from frs_cli.errors import ModelError
from frs_cli.files import check_output_file
from frs_cli.models import ARCHS, MMDET_ARCHS, build_detector, load_state
from frs_cli.models.config import ModelConfig
from frs_cli.models.mmdet_convert import (
    COCO_CATEGORY_IDS,
    COCO_NAMES,
    num_classes_of,
    read_mmdet_state,
    to_adapter_state,
)
from frs_cli.train.checkpoint import atomic_save, model_payload

log = logging.getLogger(__name__)


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


def convert_mmdet(checkpoint: str | Path, arch: str, out: str | Path, allow_pickle: bool = False) -> Converted:
    """Write the frs model file ``out`` holding the weights of the mmdetection ``checkpoint`` in the adapter
    ``arch`` (one of ``MMDET_ARCHS``). Labels map to COCO's category ids when the model has COCO's 80 classes,
    else to 0..K-1; geometry and inference settings are mmdetection's COCO test settings (short side 800, long
    side at most 1333, padding to 32; score 0.05, 100 detections, the config's NMS threshold)."""
    if arch not in MMDET_ARCHS:
        raise ModelError(f"convert mmdet: expected an mmdetection layout for --arch, got {arch!r}",
                         hint=f"one of: {', '.join(MMDET_ARCHS)}")
    check_output_file(out, "convert mmdet --out")
    state = read_mmdet_state(checkpoint, allow_pickle=allow_pickle)
    family = ARCHS[arch].family
    num_classes = num_classes_of(state, family)
    cfg = ModelConfig(arch=arch, nms_thresh=mmdet_test_nms(arch))
    detector = build_detector(cfg, num_classes, load_weights=False)
    converted = to_adapter_state(state, family, detector.core().state_dict())
    load_state(detector, converted, repr(str(checkpoint)))
    if num_classes == len(COCO_CATEGORY_IDS):
        categories, names = COCO_CATEGORY_IDS, COCO_NAMES
    else:
        log.warning("%d classes, not COCO's 80: labels map to category ids 0..%d", num_classes, num_classes - 1)
        categories, names = range(num_classes), [f"class_{i}" for i in range(num_classes)]
    payload = model_payload(detector, cfg, categories, names, GeometryConfig())
    payload["converted_from"] = {"format": "mmdet", "file": Path(checkpoint).name}
    atomic_save(payload, out)
    return Converted(arch, num_classes, len(converted), payload["fingerprint"], Path(out))
