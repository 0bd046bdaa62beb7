"""A cache's identity: the teacher, dataset and geometry fingerprints, built here and nowhere else.

``teacher-cache`` records them (``fingerprints`` in the root attributes); ``distill --cache`` and a resumed
``teacher-cache`` compare a recipe with them. The teacher is identified by where its weights come from, so
``distill --cache`` never builds, loads or downloads it:

- a torchvision weights enum: ``torchvision:<Enum.MEMBER>@<hash prefix>``, the hash torchvision publishes in the
  file's name (no download); a local file with that hash is the same teacher;
- a file (an frs checkpoint, or a state dict): ``file:<sha256 of its bytes, first 16 hex>``;
- no weights (random init, or ImageNet backbone weights only): ``state:<fingerprint of the built teacher's
  state dict>``, which only the writer, holding the built teacher, can compute.

Caches written before this scheme hold the bare state-dict fingerprint (16 hex, no prefix): it is still
compared where that costs no build (the writer's built teacher, or an frs checkpoint's recorded fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from frs_cli.archs import ModelConfig
from frs_cli.cache.schema import FILE_BYTES
from frs_cli.data.coco import CocoIndex, CocoViews
from frs_cli.data.geometry import GeometryConfig
from frs_cli.errors import CacheMismatchError
from frs_cli.models import weights
from frs_cli.models.base import Detector, fingerprint_state_dict
from frs_cli.models.weights import Published, get_weights_enum, is_weights_enum, sha256_file, torch_load

log = logging.getLogger(__name__)
KEYS = ("teacher", "dataset", "geometry")


def dataset_fingerprint(index: CocoIndex) -> str:
    """What a cache's targets take from the annotation file, hashed: each image's id, file name, height and width in
    the index's order, and the categories (id and name). ``split:`` and the first 16 hex of the SHA-256.

    The boxes are left out: the teacher's features and masks never read them, and the student reads them from the
    file as it trains, so a corrected box or a file re-serialised (another indent, key order, an added field) keeps
    its caches. The label map is compared on its own (``label_difference``), the image files' bytes by their sizes
    (``refuse_other_images``)."""
    content = {"images": [[r.image_id, r.file_name, r.height, r.width] for r in index.records],
               "categories": [[c["id"], c["name"]] for c in index.categories]}
    digest = hashlib.sha256(json.dumps(content, separators=(",", ":")).encode())
    return f"split:{digest.hexdigest()[:16]}"


def file_fingerprint(index: CocoIndex) -> str:
    """The dataset fingerprint of caches written before 2026-12-07: the annotation file's bytes and the image ids
    it yields, hashed (first 16 hex, no prefix). Any edit of the file changes it, a box or a space included."""
    h = hashlib.sha256(index.sha256.encode())
    h.update(np.asarray(index.image_ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def older_scheme(fingerprint) -> bool:
    """Whether a stored fingerprint is of the scheme before the current one (16 hex, no ``kind:`` prefix): the
    teacher's state dict, or the dataset's annotation file bytes (``file_fingerprint``)."""
    return isinstance(fingerprint, str) and ":" not in fingerprint


def comparable_dataset(stored: str | None, index: CocoIndex) -> str:
    """The dataset fingerprint of ``index`` to compare with a cache's ``stored`` one, in the stored one's scheme: the
    file's bytes for a cache written before 2026-12-07 (16 hex, no prefix), else ``dataset_fingerprint``."""
    if older_scheme(stored):
        return file_fingerprint(index)
    return dataset_fingerprint(index)


def geometry_fingerprint(cfg: GeometryConfig) -> str:
    """The resize / pad settings, hashed (first 16 hex): teacher and student must see the same pixels."""
    text = json.dumps(cfg.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def teacher_fingerprint(cfg: ModelConfig, detector: Detector | None = None) -> str | None:
    """The teacher's identity from ``cfg.weights`` (see the module docstring), without building or loading it.

    ``detector``: the built teacher, for weights that name no file or enum (``state:...``). None when the
    teacher cannot be identified so: no weights and no ``detector``, or a weights file that is not there.
    """
    if is_weights_enum(cfg.weights):
        return _published_id(Published.of(get_weights_enum(cfg.weights, "teacher.weights")))
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            return None
        digest = sha256_file(path)
        for published in weights.published_weights(cfg.arch):  # torchvision's own file: the same teacher as its enum
            if published.hash_prefix and digest.startswith(published.hash_prefix):
                return _published_id(published)
        return f"file:{digest[:16]}"
    if detector is not None:
        return f"state:{_state_fingerprint(detector)}"
    return None


def cache_fingerprints(teacher_cfg: ModelConfig, teacher: Detector, index: CocoIndex,
                       geometry: GeometryConfig) -> dict[str, str]:
    """What ``teacher-cache`` records for the built ``teacher`` of ``teacher_cfg`` over ``index``."""
    return {"teacher": teacher_fingerprint(teacher_cfg, teacher), "dataset": dataset_fingerprint(index),
            "geometry": geometry_fingerprint(geometry)}


def comparable_teacher(stored: str | None, cfg: ModelConfig, detector: Detector | None = None) -> str | None:
    """The fingerprint to compare with a cache's ``stored`` teacher fingerprint, in the stored one's scheme;
    None when ``cfg`` cannot tell without building the teacher (the cache's teacher then stands alone)."""
    if older_scheme(stored):  # a cache written before the weights were the identity
        if detector is not None:
            return _state_fingerprint(detector)
        if cfg.weights and Path(cfg.weights).is_file() and not is_weights_enum(cfg.weights):
            content = torch_load(cfg.weights, f"teacher.weights {cfg.weights!r}")
            if isinstance(content, dict) and isinstance(content.get("fingerprint"), str):
                return content["fingerprint"]  # what frs checkpoints record of their state dict
        return None
    return teacher_fingerprint(cfg, detector)


def recipe_fingerprints(stored: dict, teacher_cfg: ModelConfig, index: CocoIndex, geometry: GeometryConfig,
                        teacher: Detector | None = None) -> dict[str, str]:
    """The fingerprints a recipe gives, to compare with a cache's ``stored`` ones: dataset and geometry always,
    the teacher when it can be told without building it (``comparable_teacher``)."""
    expected = {"dataset": comparable_dataset(stored.get("dataset"), index), "geometry": geometry_fingerprint(geometry)}
    theirs = comparable_teacher(stored.get("teacher"), teacher_cfg, teacher)
    if theirs is None:
        gone = bool(teacher_cfg.weights) and not is_weights_enum(teacher_cfg.weights) \
            and not Path(teacher_cfg.weights).is_file()
        # a teacher file moved away is allowed (the cache holds all it needs), but a mistyped path should be seen
        (log.warning if gone else log.info)(
            "the recipe's teacher (weights %r) is %s: the cache's own (fingerprint %s) is used as recorded",
            teacher_cfg.weights, "not a file here" if gone else "not at hand", stored.get("teacher"))
    else:
        expected["teacher"] = theirs
    return expected


def what_differs(key: str, attrs: dict, expected: dict, teacher_cfg: ModelConfig, index: CocoIndex,
                 geometry: GeometryConfig) -> str:
    """The difference of ``key`` (teacher / dataset / geometry) between a cache (its root ``attrs``) and a recipe,
    in the values a user set, where the cache records them; the two fingerprints otherwise."""
    fingerprints = f"fingerprint {attrs.get('fingerprints', {}).get(key)} in the cache, {expected.get(key)} here"
    if key == "geometry" and isinstance(attrs.get("geometry"), dict):
        mine = geometry.to_dict()
        differ = [f"geometry.{k} {json.dumps(v)} in the cache, {json.dumps(mine.get(k))} here"
                  for k, v in attrs["geometry"].items() if mine.get(k) != v]
        return "; ".join(differ) or fingerprints
    if key == "dataset" and isinstance(attrs.get("dataset"), dict):
        info = attrs["dataset"]
        theirs = f"split {info.get('split')!r}: {info.get('num_images')} images of {info.get('annotation_file')}"
        names = [c["name"] for c in index.categories]
        if older_scheme(attrs.get("fingerprints", {}).get("dataset")):  # the file's bytes: any edit of it
            same_file = Path(str(info.get("annotation_file"))).resolve() == Path(index.path).resolve()
            what = " (the file was changed since)" if same_file else ""
        elif isinstance(info.get("category_names"), list) and info["category_names"] != names:
            then = info["category_names"]
            first = next((i for i, (a, b) in enumerate(zip(then, names)) if a != b), min(len(then), len(names)))
            shown = [repr(n[first]) if first < len(n) else "none" for n in (then, names)]
            what = (f"; {len(then)} categories in the cache, {len(names)} here, the first that differs (in id order) "
                    f"{shown[0]} in the cache, {shown[1]} here")
        elif info.get("num_images") == len(index.records):
            what = " (the images' ids, file names or sizes, or the categories' ids, differ)"
        else:
            what = ""
        return f"{theirs} in the cache, {len(index.records)} images of {index.path} here{what}"
    if key == "teacher":
        return (f"teacher.weights {attrs.get('teacher', {}).get('weights')!r} in the cache, {teacher_cfg.weights!r} "
                f"here; {fingerprints}")
    return fingerprints


def _labels_text(labels: list) -> str:
    ids = [int(c) for c in labels]
    mode = "category_id" if ids == list(range(len(ids))) else "contiguous"
    shown = ", ".join(map(str, ids)) if len(ids) <= 8 else f"{', '.join(map(str, ids[:3]))}, ..., {ids[-1]}"
    return f"{len(ids)} classes for category ids [{shown}] (data.label_map {mode!r})"


def label_difference(attrs: dict, index: CocoIndex, expected: dict) -> str | None:
    """How the classes of a cache's teacher (its recorded ``dataset.label_to_category``) differ from those the
    recipe's ``data.label_map`` gives the same annotations (the dataset fingerprint in ``expected`` is the cache's),
    else None. The fingerprint covers the file, not the map: with another map the student would learn other
    classes than the cached teacher's outputs, and a teacher built for them has another head."""
    if expected.get("dataset") != (attrs.get("fingerprints") or {}).get("dataset"):
        return None  # another dataset altogether: named as such
    theirs = attrs.get("dataset", {}).get("label_to_category") if isinstance(attrs.get("dataset"), dict) else None
    if not isinstance(theirs, list) or not all(isinstance(c, int) for c in theirs) \
            or theirs == list(index.label_to_category):
        return None
    return f"its teacher has {_labels_text(theirs)}, this recipe gives {_labels_text(index.label_to_category)}"


def refuse_other_recipe(path: str, attrs: dict, teacher_cfg: ModelConfig, index: CocoIndex, geometry: GeometryConfig,
                        *, classes_hint: str, hint: str, teacher: Detector | None = None) -> None:
    """CacheMismatchError when the cache at ``path`` (its root ``attrs``) was written for another recipe than the one
    of teacher config ``teacher_cfg``, split ``index`` and ``geometry`` (``recipe_fingerprints``; ``teacher``: the
    built teacher, where the caller holds one): for other classes first (``label_difference``: another label map
    makes another head; ``classes_hint``), else the first of teacher / dataset / geometry that differs
    (``first_difference``, named by ``what_differs``; ``hint``). Each caller gives its own hints."""
    stored = attrs.get("fingerprints", {})
    expected = recipe_fingerprints(stored, teacher_cfg, index, geometry, teacher)
    labels = label_difference(attrs, index, expected)  # before the teacher: another map makes another head
    if labels is not None:
        raise CacheMismatchError(f"cache {path!r}: was written for other classes ({labels})", hint=classes_hint)
    key = first_difference(stored, expected)
    if key is not None:
        raise CacheMismatchError(f"cache {path!r}: was written for another {key} "
                                 f"({what_differs(key, attrs, expected, teacher_cfg, index, geometry)})", hint=hint)


def image_files_record(dataset: CocoViews) -> dict:
    """The split's image files as a cache records them (``dataset.image_files``): how many, their bytes, and a
    digest of each file's size in the index's order (first 16 hex). An image re-encoded, or swapped for another of
    the same width and height, changes its size: the annotations (the dataset fingerprint) do not tell, and the
    cached targets would no longer be the teacher's on what the student reads. A stat per file, no read, shared
    with ``check_files`` (``CocoViews.file_sizes``); a missing file is -1."""
    digest, total = hashlib.sha256(), 0
    for rec, size in zip(dataset.index.records, dataset.file_sizes(), strict=True):
        digest.update(f"{rec.image_id}:{size}\n".encode())
        total += max(size, 0)
    return {"files": len(dataset.index.records), "bytes": total, "sizes_sha256": digest.hexdigest()[:16]}


def refuse_other_images(path: str, attrs: dict, dataset: CocoViews, hint: str, backend=None) -> None:
    """CacheMismatchError when the image files of ``dataset`` are not those the cache at ``path`` (its root
    ``attrs``) was completed with (``image_files_record``, recorded as the writer marks it complete); a missing file
    is named first (``check_files``). ``backend``: the cache's open store, whose sizes (``index/file_bytes``, where
    stored) let the line name the first file that changed; without them it names the totals. A cache still being
    written, or of an older frs, records none and is not checked."""
    stored = attrs.get("dataset", {}).get("image_files")
    if not isinstance(stored, dict):
        return
    found = image_files_record(dataset)
    if found["sizes_sha256"] == stored.get("sizes_sha256"):
        return
    dataset.check_files()
    before = np.asarray(backend.array(FILE_BYTES)[...]) if backend is not None and backend.has(FILE_BYTES) else None
    now = dataset.file_sizes()
    changed = [] if before is None or len(before) != len(now) else \
        [i for i, (a, b) in enumerate(zip(before, now, strict=True)) if int(a) != b]
    if changed:
        first = changed[0]
        what = (f"{len(changed)} of {len(now)} files changed size, the first "
                f"{str(dataset.image_dir / dataset.index.records[first].file_name)!r}: {int(before[first])} bytes "
                f"then, {now[first]} now")
    else:  # no sizes stored, or none that differs: the record's totals
        what = (f"the files' sizes differ: {stored.get('files')} files of {stored.get('bytes')} bytes then, "
                f"{found['files']} of {found['bytes']} now")
    raise CacheMismatchError(f"cache {path!r}: was written from other image files than {str(dataset.image_dir)!r} "
                             f"holds now ({what}), so its targets are not the teacher's on these images", hint=hint)


def first_difference(stored: dict, expected: dict) -> str | None:
    """The first of teacher / dataset / geometry present in ``expected`` whose fingerprint differs from
    ``stored``'s, else None."""
    for key in KEYS:
        if key in expected and stored.get(key) != expected[key]:
            return key
    return None


def _published_id(published: Published) -> str:
    return f"torchvision:{published.name}@{published.hash_prefix}"


def _state_fingerprint(detector: Detector) -> str:
    return fingerprint_state_dict(detector.core().state_dict())
