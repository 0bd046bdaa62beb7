"""COCO box mAP through pycocotools (or faster-coco-eval), behind a small API that raises ``DataError``.

This module is the only importer of pycocotools and faster-coco-eval in the project. pycocotools prints progress to stdout and
fails with bare ``assert``/``KeyError``/``IndexError`` on bad input; here its output is silenced and the
inputs are checked first, so a problem arrives as one line naming what was expected and what arrived.

Conventions: a detection is a COCO result ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
with the box in ORIGINAL image pixels at full float precision (no rounding). Metrics are fractions in
0..1; a size range (small/medium/large) without any ground-truth object is UNDEFINED: pycocotools says -1,
this module says ``None`` (``null`` in JSON, "–" in tables), and averages and plots leave it out. Reading it
as 0.0 would say "fails on large objects" about a set that has none.

Backends: ``"pycocotools"`` (the default, the reference) and ``"faster"`` (faster-coco-eval, an optional
extra: ``pip install 'frs[faster-eval]'``), which computes the same twelve numbers in C++.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frs_cli.data.coco import is_int, object_categories
from frs_cli.errors import DataError
from frs_cli.files import missing_file, write_json
from frs_cli.optional import require
from frs_cli.progress import NullProgress, Progress

log = logging.getLogger(__name__)

# The first six entries of COCOeval.stats, in its order: what frs reports.
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# All twelve entries of COCOeval.stats (recall at 1, 10, 100 detections per image, then by size at 100).
STAT_KEYS = METRIC_KEYS + ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster")
UNDEFINED_TEXT = "\u2013"  # en dash: how tables show an undefined metric


def defined(value) -> bool:
    """Whether a metric value is a number (``None`` = undefined: no ground truth in that size range)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def format_metric(value, percent: bool = True, digits: int = 1) -> str:
    """A metric for a table: ``"41.5"`` (percent) or "–" when undefined."""
    if not defined(value):
        return UNDEFINED_TEXT
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def mean_defined(values) -> float | None:
    """Mean of the defined values; ``None`` when none is defined (undefined values are left out, not zeros)."""
    kept = [float(v) for v in values if defined(v)]
    return sum(kept) / len(kept) if kept else None

_REQUIRED_TOP = ("images", "annotations", "categories")
_REQUIRED_ANN = ("id", "image_id", "category_id", "bbox")


def _quiet():
    """Swallow pycocotools' prints (it writes progress lines to stdout)."""
    return contextlib.redirect_stdout(io.StringIO())


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_box(box, where: str) -> None:
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise DataError(f"{where}: expected bbox [x, y, w, h] of 4 finite numbers, got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise DataError(f"{where}: expected bbox width and height >= 0, got {list(box)!r}")


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{what}: expected a JSON file at {str(path)!r}, but it {missing_file(path)}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{what}: expected valid JSON in {str(path)!r}, got a parse error: {exc}") from None


def _check_ground_truth(data, source: str) -> None:
    """Validate a COCO ground-truth dict in place; fill ``area`` and ``iscrowd`` where missing."""
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    missing = [key for key in _REQUIRED_TOP if key not in data]
    if missing:
        raise DataError(f"{source}: expected keys images, annotations, categories; missing {', '.join(missing)}")
    for key in _REQUIRED_TOP:
        if not isinstance(data[key], list):
            raise DataError(f"{source}: expected '{key}' to be a list, got {type(data[key]).__name__}")
    image_ids, category_ids = set(), set()
    for key, ids in (("images", image_ids), ("categories", category_ids)):
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or not is_int(entry.get("id")):
                raise DataError(f"{source}: expected {key}[{i}] to have an integer 'id', got {entry!r}")
            if entry["id"] in ids:  # COCO's index would keep the last entry of an id and drop the others
                kind = {"images": "image", "categories": "category"}[key]
                raise DataError(f"{source}: expected unique {kind} ids, found {entry['id']} twice ({key}[{i}])")
            ids.add(entry["id"])
    ann_ids = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict) or any(key not in ann for key in _REQUIRED_ANN):
            raise DataError(f"{where}: expected keys {', '.join(_REQUIRED_ANN)}, got {ann!r}")
        for key in ("image_id", "category_id"):
            if not is_int(ann[key]):
                raise DataError(f"{where}: expected an integer '{key}', got {json.dumps(ann[key])[:80]}")
        if ann["image_id"] not in image_ids:
            raise DataError(f"{where}: expected an image_id listed in 'images', got {ann['image_id']!r}")
        if ann["category_id"] not in category_ids:
            raise DataError(f"{where}: expected a category_id listed in 'categories', got {ann['category_id']!r}")
        _check_box(ann["bbox"], where)
        if "area" not in ann:  # COCO's own files carry the mask area; fall back to the box area
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        ann_ids.append(ann["id"])
    # COCOeval records a match as the matched GT's id, and treats id 0 as "unmatched": a ground truth with
    # id 0 can never be a true positive. Duplicate ids collapse in COCO's index. Renumber in either case.
    if not all(is_int(a) and a > 0 for a in ann_ids) or len(set(ann_ids)) != len(ann_ids):
        log.warning("%s: annotation ids are not unique positive integers; renumbering them 1..%d",
                    source, len(ann_ids))
        for new_id, ann in enumerate(data["annotations"], start=1):
            ann["id"] = new_id


def load_coco(annotation_file: str | Path) -> COCO:
    """Load a COCO ground-truth file into a pycocotools ``COCO``, silently.

    Checks the file exists, parses as JSON and has ``images``, ``annotations`` and ``categories`` lists;
    each annotation needs ``id``, ``image_id``, ``category_id`` and ``bbox`` referring to listed images
    and categories. Missing ``area`` is filled with the box area, missing ``iscrowd`` with 0, and
    annotation ids that are not unique positive integers are renumbered (pycocotools mis-scores id 0).
    Raises ``DataError`` (one line) on any problem.
    """
    path = Path(annotation_file)
    data = _read_json(path, "COCO annotations")
    _check_ground_truth(data, f"COCO annotations {str(path)!r}")
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    log.debug("loaded %s: %d images, %d annotations, %d categories", path,
              len(data["images"]), len(data["annotations"]), len(data["categories"]))
    return coco


def _check_detections(dets, source: str) -> list[dict]:
    if not isinstance(dets, list):
        raise DataError(f"{source}: expected a JSON list of detections, got {type(dets).__name__}")
    for i, det in enumerate(dets):
        where = f"{source}: detection [{i}]"
        if not isinstance(det, dict):
            raise DataError(f"{where}: expected an object, got {det!r}")
        for key in ("image_id", "category_id"):
            if not is_int(det.get(key)):
                raise DataError(f"{where}: expected an integer '{key}', got {det.get(key)!r}")
        if not _is_number(det.get("score")):
            raise DataError(f"{where}: expected a finite number 'score', got {det.get('score')!r}")
        _check_box(det.get("bbox"), where)
    return dets


def load_detections(path: str | Path) -> list[dict]:
    """Read a COCO results file: a JSON list of ``{image_id, category_id, bbox [x, y, w, h], score}``.

    Raises ``DataError`` for a missing file, invalid JSON or an entry of the wrong shape.
    """
    path = Path(path)
    return _check_detections(_read_json(path, "COCO detections"), f"COCO detections {str(path)!r}")


def evaluate_detections(coco_gt: COCO, detections: list[dict], image_ids: Sequence[int] | None = None,
                        backend: str = "pycocotools", progress: Progress | None = None) -> dict[str, float | None]:
    """COCO box mAP (``COCOeval``, iouType ``bbox``, pycocotools' default parameters).

    Args:
        coco_gt: ground truth from ``load_coco``.
        detections: COCO results (see the module docstring); not modified.
        image_ids: evaluate only these images (default: every GT image); detections on other images are
            dropped. Images listed here without detections count their ground truth as missed.
        backend: ``"pycocotools"`` or ``"faster"`` (faster-coco-eval; same numbers).
        progress: told of the evaluator's three stages (match, accumulate, summarize).
    Returns:
        ``{key: value for key in METRIC_KEYS}``, fractions in 0..1 (AP is averaged over IoU 0.50:0.95).
        A size range with no ground truth in the evaluated images gives ``None`` (pycocotools says -1).
        No detections give 0.0 wherever ground truth exists.
    Raises:
        DataError: a detection or an image id not in the ground truth, a malformed detection, an unknown
            backend, or ``"faster"`` without faster-coco-eval installed.
    """
    stats = coco_stats(coco_gt, detections, image_ids, backend, progress)
    return {key: stats[key] for key in METRIC_KEYS}


def coco_stats(coco_gt: COCO, detections: list[dict], image_ids: Sequence[int] | None = None,
               backend: str = "pycocotools", progress: Progress | None = None) -> dict[str, float | None]:
    """All twelve ``COCOeval.stats`` as ``{key: value for key in STAT_KEYS}``; -1 (undefined) becomes ``None``.

    Same arguments and errors as ``evaluate_detections``.
    """
    if backend not in BACKENDS:
        raise DataError(f"eval backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    _check_detections(detections, "detections")
    selected = _selected_images(coco_gt, image_ids)
    gt_categories = set(coco_gt.getCatIds())
    gt_images = set(coco_gt.getImgIds())
    for det in detections:
        if det["image_id"] not in gt_images:
            raise DataError(f"detections: expected image ids of the ground truth, got unknown image_id "
                            f"{det['image_id']}")
        if det["category_id"] not in gt_categories:
            raise DataError(f"detections: expected category ids of the ground truth "
                            f"{sorted(gt_categories)}, got unknown category_id {det['category_id']}")
    wanted = set(selected)
    # loadRes writes id/area/iscrowd/segmentation into the dicts it gets: hand it copies.
    kept = [copy.deepcopy(det) for det in detections if det["image_id"] in wanted]
    run = _run_faster if backend == "faster" else _run_pycocotools
    progress = progress or NullProgress()
    progress.start(f"COCO eval ({backend})", 3, unit="stage")
    try:
        raw = run(coco_gt, kept, selected, progress)
    finally:
        progress.stop()
    return {key: (None if v < 0 else v) for key, v in zip(STAT_KEYS, raw)}


def _selected_images(coco_gt: COCO, image_ids: Sequence[int] | None) -> list[int]:
    gt_images = set(coco_gt.getImgIds())
    if image_ids is None:
        return sorted(gt_images)
    selected = sorted({int(i) for i in image_ids})
    unknown = [i for i in selected if i not in gt_images]
    if unknown:
        raise DataError(f"image_ids: expected ids of ground-truth images, got unknown id {unknown[0]}"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    if not selected:
        raise DataError("image_ids: expected at least one image id, got none")
    return selected


def _empty_results(coco_gt: COCO, cls):
    """A results object with no detections (``loadRes`` indexes ``anns[0]`` and fails on an empty list)."""
    res = cls()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                   "annotations": []}
    with _quiet():
        res.createIndex()
    return res


def _stages(evaluator, progress: Progress) -> None:
    for stage in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
        stage()
        progress.update(1)


def _run_pycocotools(coco_gt: COCO, kept: list[dict], selected: list[int], progress: Progress) -> list[float]:
    with _quiet():
        coco_dt = coco_gt.loadRes(kept) if kept else _empty_results(coco_gt, COCO)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = selected
        _stages(evaluator, progress)
    return [float(v) for v in evaluator.stats[: len(STAT_KEYS)]]


def _run_faster(coco_gt: COCO, kept: list[dict], selected: list[int], progress: Progress) -> list[float]:
    fast = require("faster_coco_eval", "eval backend 'faster'", error=DataError,
                   hint="pip install 'frs[faster-eval]', or use the default backend pycocotools")
    FastCOCO, COCOeval_faster = fast.COCO, fast.COCOeval_faster
    with _quiet():
        gt = FastCOCO(copy.deepcopy(coco_gt.dataset))
        dt = gt.loadRes(kept) if kept else _empty_results(gt, FastCOCO)
        evaluator = COCOeval_faster(gt, dt, iouType="bbox")
        evaluator.params.imgIds = selected
        _stages(evaluator, progress)
    return [float(v) for v in evaluator.stats[: len(STAT_KEYS)]]


def unlabelled_categories(category_ids: Iterable[int], label_to_category: Sequence[int]) -> list[int]:
    """The ids among ``category_ids`` (the categories with objects: ``object_categories``) that no label of
    ``label_to_category`` maps to, sorted: those whose objects no detection can score."""
    return sorted(set(category_ids) - {int(c) for c in label_to_category})


class CocoEvaluator:
    """Collect per-image detections, then compute COCO box mAP: ``reset() -> process(...) -> evaluate()``.

    ``process(image_ids, outputs)`` takes one output per image id, a dict with
    ``boxes``: ``(N, 4)`` float xyxy in ORIGINAL image pixels, ``scores``: ``(N,)``,
    ``labels``: ``(N,)`` integer contiguous label indices, mapped to category ids by ``label_to_category``, which
    must give every ground-truth category a label; detections of a label that is no category of the ground truth
    (with ``label_map = 'category_id'``: 0 and the ids COCO skips) are left out.
    Every processed image counts in ``evaluate()``, also one with no detections (its objects are missed).
    ``results`` holds the COCO results list; ``write_results(path)`` saves it as JSON.
    """

    def __init__(self, coco_gt: COCO, label_to_category: Sequence[int]):
        categories = set(coco_gt.getCatIds())
        mapping = [int(c) for c in label_to_category]
        with_objects = object_categories(coco_gt.dataset.get("annotations", []))
        missing = unlabelled_categories(with_objects, mapping)
        if not mapping or missing:
            raise DataError(f"model labels: expected a label for every category id with objects in the ground truth "
                            f"{sorted(with_objects)}, got labels for {mapping} (none for {missing})")
        self.coco_gt = coco_gt
        self.label_to_category = mapping
        # labels of no ground-truth category (label_map = 'category_id': background 0 and the ids COCO skips, as in
        # torchvision's 91 outputs) cannot be right: their detections are left out (COCOeval would ignore them too)
        self._scored = torch.tensor([c in categories for c in mapping])
        self._gt_images = set(coco_gt.getImgIds())
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []
        self._image_ids: dict[int, None] = {}  # insertion-ordered set

    def process(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        if len(image_ids) != len(outputs):
            raise DataError(f"process: expected one output per image id, got {len(outputs)} outputs "
                            f"for {len(image_ids)} image ids")
        for image_id, out in zip(image_ids, outputs):
            image_id = int(image_id)
            if image_id not in self._gt_images:
                raise DataError(f"process: expected image ids of the ground truth, got unknown image_id {image_id}")
            if image_id in self._image_ids:
                log.warning("image %d processed twice; its detections are kept from both calls", image_id)
            self._image_ids[image_id] = None
            self.results.extend(self._convert(image_id, out))

    def _convert(self, image_id: int, out: dict) -> list[dict]:
        try:
            boxes = torch.as_tensor(out["boxes"]).detach().to("cpu", torch.float64)
            scores = torch.as_tensor(out["scores"]).detach().to("cpu", torch.float64)
            labels = torch.as_tensor(out["labels"]).detach().to("cpu", torch.int64)
        except (KeyError, TypeError) as exc:
            raise DataError(f"process: expected an output dict with boxes, scores, labels for image "
                            f"{image_id}, got {exc!r}") from None
        n = boxes.shape[0] if boxes.dim() == 2 else -1
        if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != (n,) or labels.shape != (n,):
            raise DataError(f"process: expected boxes (N, 4), scores (N,), labels (N,) for image {image_id}, "
                            f"got {tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}")
        if n and (labels.min() < 0 or labels.max() >= len(self.label_to_category)):
            raise DataError(f"process: expected labels in 0..{len(self.label_to_category) - 1}, got "
                            f"{int(labels.min())}..{int(labels.max())} for image {image_id}")
        keep = self._scored[labels]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        return [
            {"image_id": image_id, "category_id": self.label_to_category[label], "bbox": box, "score": score}
            for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist())
        ]

    @property
    def image_ids(self) -> list[int]:
        return list(self._image_ids)

    def evaluate(self, backend: str = "pycocotools") -> dict[str, float | None]:
        """``evaluate_detections`` over the processed images; ``DataError`` if none were processed."""
        if not self._image_ids:
            raise DataError("CocoEvaluator.evaluate: expected at least one processed image, got none")
        return evaluate_detections(self.coco_gt, self.results, image_ids=self.image_ids, backend=backend)

    def write_results(self, path: str | Path) -> None:
        """Write ``results`` as a COCO results JSON (full float precision), via a temp file and rename."""
        write_json(path, self.results)
