"""COCO-format detection data: the annotation index and the images it names, seen through one geometry.

Layout of a dataset root (COCO's own)::

    ROOT/annotations/instances_<split>.json
    ROOT/<split>/<file_name>

Labels are contiguous indices ``0..K-1`` in the order of ascending category id (``label_map =
"contiguous"``), or the category ids themselves (``"category_id"``, K = max id + 1), which is what
torchvision's COCO-pretrained detectors predict. Crowd boxes are dropped, as COCO's evaluation ignores
them; boxes are clipped to their image, and those of zero or negative size or wholly outside the image are
dropped with a warning. An image file is read as its pixels are stored (as torchvision and pycocotools read
COCO), unless its EXIF orientation turns it by 90 degrees and only the turned image has the annotated size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig, ViewGeometry, batch_padded_size, view_geometry
from frs_cli.data.packed import PackedTensors, map_packed
from frs_cli.data.targets import CachedTargets
from frs_cli.data.transforms import apply_to_boxes, apply_to_image, pad_batch, pad_into, resize_image
from frs_cli.errors import ConfigError, DataError
from frs_cli.files import missing_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    boxes_xyxy: np.ndarray  # (N, 4) float32, original pixels
    category_ids: np.ndarray  # (N,) int64


def is_int(value) -> bool:
    """Whether ``value`` is an integer as COCO's JSON holds ids: not a string ("7"), a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _shown(value) -> str:
    return "none" if value is None else json.dumps(value)[:80]


def _json_kind(value) -> str:
    """What a JSON value is, in words ("an object", "a string", "none" for null or a missing key)."""
    if value is None:
        return "none"
    kinds = ((bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"), (numbers.Number, "a number"))
    return next(word for kind, word in kinds if isinstance(value, kind))


def _integer(entry: dict, key: str, where: str) -> int:
    """``entry[key]`` as an id: an integer, else DataError naming the entry, the key and what is there."""
    if not is_int(entry.get(key)):
        raise DataError(f"{where}: expected an integer '{key}', got {_shown(entry.get(key))}")
    return int(entry[key])


def _pixels(entry: dict, key: str, where: str) -> int:
    """``entry[key]`` as an image size: a whole number (some tools write 480.0), else DataError."""
    value = entry.get(key)
    if is_int(value) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    raise DataError(f"{where}: expected a whole number of pixels '{key}', got {_shown(value)}")


def _entries(doc: dict, key: str, source: str) -> Iterable[tuple[dict, str]]:
    """The objects under ``doc[key]``, each with the words that name it in an error ("… images[3]")."""
    for i, entry in enumerate(doc[key]):
        if not isinstance(entry, dict):
            raise DataError(f"{source}: {key}[{i}]: expected an object, got {_shown(entry)}")
        yield entry, f"{source}: {key}[{i}]"


def _read_categories(doc: dict, source: str) -> list[dict]:
    """``[{"id", "name"}]`` of the file's categories, by id."""
    categories = []
    for c, where in _entries(doc, "categories", source):
        cid = _integer(c, "id", where)
        if c.get("name") is None:
            raise DataError(f"{where} (id {cid}): expected a 'name', got none")
        categories.append({"id": cid, "name": str(c["name"])})
    return sorted(categories, key=lambda c: c["id"])


def _read_images(doc: dict, source: str) -> dict[int, tuple[str, int, int]]:
    """``{image id: (file name, height, width)}`` of the file's images (a repeated id: the last entry)."""
    images = {}
    for im, where in _entries(doc, "images", source):
        iid = _integer(im, "id", where)
        where = f"{where} (id {iid})"
        if not isinstance(im.get("file_name"), str):
            raise DataError(f"{where}: expected a string 'file_name', got {_shown(im.get('file_name'))}")
        images[iid] = (im["file_name"], _pixels(im, "height", where), _pixels(im, "width", where))
    return images


def category_differences(ckpt: dict, categories: list[dict], shown: int = 3) -> str | None:
    """How the categories a model file was trained on (``category_ids``, ``category_names``) differ from a
    dataset's (``CocoIndex.categories``), in words, or None: the same, or a model file that does not record its
    ids (then nothing is compared)."""
    ids, names = ckpt.get("category_ids"), ckpt.get("category_names")
    if ids is None or names is None or len(ids) != len(names):
        return None
    model = dict(zip((int(i) for i in ids), names))
    diffs = [f"id {c['id']} is {model[c['id']]!r} in the model, {c['name']!r} in the data" if c["id"] in model
             else f"id {c['id']} ({c['name']!r}) is no category of the model" for c in categories
             if model.get(c["id"]) != c["name"]]
    if not diffs:
        return None
    more = f" (and {len(diffs) - shown} more)" if len(diffs) > shown else ""
    return "; ".join(diffs[:shown]) + more


def object_categories(annotations: Iterable[dict]) -> set[int]:
    """The category ids with at least one object COCO's evaluation counts (an annotation not crowd); a category
    without one has no AP (COCOeval leaves it out of the mean), so a model needs no label for it."""
    return {int(a["category_id"]) for a in annotations if not a.get("iscrowd", 0)}


class CocoIndex:
    """The parsed annotation file: images in ascending id order, their boxes, and the label map.

    Boxes of zero or negative size are dropped with a warning, except in a split that is ``scored``: there
    pycocotools would refuse a negative width or height, so it is refused here, in one line and first.
    """

    def __init__(self, annotation_file: str | Path, label_map: str = "contiguous", scored: bool = False):
        path = Path(annotation_file)
        if not path.is_file():
            raise DataError(f"annotations: expected a COCO JSON file at {str(path)!r}, but it {missing_file(path)}")
        raw = path.read_bytes()
        self.path = path
        self.sha256 = hashlib.sha256(raw).hexdigest()
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"annotations {str(path)!r}: expected JSON, got a parse error ({exc})") from exc
        if not isinstance(doc, dict):
            raise DataError(f"annotations {str(path)!r}: expected a JSON object, got {type(doc).__name__}")
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc.get(key), list):
                raise DataError(f"annotations {str(path)!r}: expected a list under '{key}', found "
                                f"{_json_kind(doc.get(key))}")
        source = f"annotations {str(path)!r}"
        self.categories = _read_categories(doc, source)
        images = _read_images(doc, source)
        if len(images) != len(doc["images"]):
            raise DataError(f"annotations {str(path)!r}: expected unique image ids, found repeats")
        if len({c["id"] for c in self.categories}) != len(self.categories):
            raise DataError(f"annotations {str(path)!r}: expected unique category ids, found repeats")
        bad = [i for i, (_, h, w) in images.items() if h < 1 or w < 1]
        if bad:
            raise DataError(f"annotations {str(path)!r}: image {bad[0]} has a size of zero or less")
        if not self.categories:
            raise DataError(f"annotations {str(path)!r}: expected at least one category, found none")
        cat_ids = [c["id"] for c in self.categories]
        if label_map == "contiguous":
            self.label_to_category = cat_ids
        elif label_map == "category_id":
            if min(cat_ids) < 0:
                raise DataError(f"annotations {str(path)!r}: category ids must be >= 0 for label_map='category_id'")
            _check_id_classes(cat_ids, path)
            self.label_to_category = list(range(max(cat_ids) + 1))
        else:
            raise ConfigError(f"data.label_map: expected 'contiguous' or 'category_id', got {label_map!r}")
        self.category_to_label = {c: i for i, c in enumerate(self.label_to_category)}
        if cat_ids != list(range(1, len(cat_ids) + 1)) and label_map == "contiguous":
            log.info("category ids %s mapped to contiguous labels 0..%d", cat_ids, len(cat_ids) - 1)

        per_image: dict[int, list] = {i: [] for i in images}
        dropped = outside = 0
        for ann, where in _entries(doc, "annotations", source):
            where = f"{source}: annotation {ann['id']}" if is_int(ann.get("id")) else where
            image_id, cat = _integer(ann, "image_id", where), _integer(ann, "category_id", where)
            if "bbox" not in ann:
                raise DataError(f"{where}: expected a 'bbox' [x, y, w, h], got none")
            box = ann["bbox"]
            crowd = bool(ann.get("iscrowd", 0))
            if not (isinstance(box, list) and len(box) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
                raise DataError(f"annotations {str(path)!r}: annotation {ann.get('id')}: expected bbox [x, y, w, h] "
                                f"of 4 finite numbers, got {json.dumps(box)}")
            x, y, w, h = (float(v) for v in box)
            if image_id not in per_image:
                raise DataError(f"annotations {str(path)!r}: annotation {ann.get('id')} names image {image_id}, "
                                "which is not among the images")
            if cat not in self.category_to_label:
                raise DataError(f"annotations {str(path)!r}: annotation {ann.get('id')} has category {cat}, "
                                f"expected one of {cat_ids}")
            if crowd:
                continue
            if not (w > 0 and h > 0):
                if scored and (w < 0 or h < 0):  # scoring would refuse it after the work: refused before
                    raise DataError(f"{where}: expected bbox width and height >= 0 in a split that is scored, got "
                                    f"{json.dumps(box)}")
                dropped += 1
                continue
            # clipped to the image, as torchvision's and mmdetection's pipelines do; a box wholly outside is gone
            _, height, width = images[image_id]
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
            if not (x1 > x0 and y1 > y0):
                outside += 1
                continue
            per_image[image_id].append((x0, y0, x1, y1, cat))
        _warn_dropped(dropped, outside, path)
        self.dropped_boxes = dropped + outside
        self.object_categories = object_categories(doc["annotations"])  # those a model must have labels for

        self.records: list[ImageRecord] = []
        for image_id in sorted(images):
            file_name, height, width = images[image_id]
            anns = per_image[image_id]
            boxes = np.array([a[:4] for a in anns], dtype=np.float32).reshape(-1, 4)
            cats = np.array([a[4] for a in anns], dtype=np.int64)
            self.records.append(ImageRecord(image_id, file_name, height, width, boxes, cats))
        self.position = {r.image_id: i for i, r in enumerate(self.records)}

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)


def _check_id_classes(cat_ids: list[int], path: Path) -> None:
    """Under label_map 'category_id' a model has max id + 1 classes: one DataError when that is far beyond the
    categories' count (more than twice it and 100 more), a model no one means to build (COCO: 91 for 80 passes)."""
    classes, count = max(cat_ids) + 1, len(cat_ids)
    limit = max(2 * count, count + 100)
    if classes > limit:
        raise DataError(f"annotations {str(path)!r}: data.label_map 'category_id' gives {classes} classes (the "
                        f"largest category id is {max(cat_ids)}) for {count} categories, expected at most {limit}",
                        hint=f"set data.label_map = 'contiguous' (labels 0..{count - 1} in the order of ascending id)")


def _warn_dropped(dropped: int, outside: int, path: Path) -> None:
    """One warning for the boxes an annotation file lost: of no area, or wholly outside their image."""
    what = []
    if dropped:
        what.append(f"{dropped} boxes of zero or negative size")
    if outside:
        what.append(f"{outside} boxes wholly outside their image")
    if what:
        log.warning("dropped %s in %r", " and ".join(what), str(path))


_EXIF_ORIENTATION = 0x0112
_TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_DEEP_MODES = {"I", "F"}  # PIL modes of more than 8 bits a channel (also "I;16" and its kin); RGB would clip them


def _check_mode(im, path: Path) -> None:
    """DataError for an opened image of more than 8 bits a channel (RGB would clip it to white)."""
    if im.mode in _DEEP_MODES or im.mode.startswith("I;"):
        raise DataError(f"image {str(path)!r}: expected 8 bits a channel (RGB, grey, palette, CMYK), got "
                        f"PIL mode {im.mode!r}", hint="convert the images to 8 bits a channel")


def _read_turned(im, size: tuple[int, int] | None) -> bool:
    """Whether an opened image is read turned: its EXIF orientation turns it by 90 degrees and only the turned
    image has the annotated ``size`` ``(H, W)``."""
    return size is not None and (im.height, im.width) != tuple(size) and (im.width, im.height) == tuple(size) \
        and im.getexif().get(_EXIF_ORIENTATION) in _TURNED


def _undecodable(path: Path, exc: Exception) -> DataError:
    return DataError(f"image {str(path)!r}: could not be decoded ({str(exc).splitlines()[0]})",
                     hint="replace the file with the image, or remove the image from the annotation file")


def _size_fault(path: Path, annotated: tuple[int, int], stored: tuple[int, int]) -> DataError | None:
    """DataError for an image file whose ``(H, W)`` as read is not its annotated size, else None."""
    if tuple(stored) == tuple(annotated):
        return None
    return DataError(f"image {str(path)!r}: annotations say {annotated[0]}x{annotated[1]} (height x width), "
                     f"the file is {stored[0]}x{stored[1]}")


def read_image(path: Path, size: tuple[int, int] | None = None) -> Tensor:
    """Decode an image file to ``(3, H, W)`` uint8 RGB; DataError for a missing or corrupt file or one of more
    than 8 bits a channel. The stored pixels, unless ``size`` (the annotated ``(H, W)``) is given, the file's EXIF
    orientation turns it by 90 degrees and only the turned image has that size: then the turned image (the boxes
    were drawn on it, as a viewer shows it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"image: expected a file at {str(path)!r}, but it {missing_file(path)}")
    try:
        with Image.open(path) as im:
            _check_mode(im, path)
            if _read_turned(im, size):
                im = ImageOps.exif_transpose(im)
            array = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _undecodable(path, exc) from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def check_header(path: Path, size: tuple[int, int]) -> None:
    """What ``read_image(path, size)`` would refuse that the file's header tells, without decoding its pixels: a
    file that does not open as an image, one of more than 8 bits a channel, or one not of the annotated ``size``
    ``(H, W)`` as it would be read. A file cut short after a sound header passes; its decoding fails."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            _check_mode(im, path)
            stored = (im.width, im.height) if _read_turned(im, size) else (im.height, im.width)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _undecodable(path, exc) from exc
    fault = _size_fault(path, size, stored)
    if fault is not None:
        raise fault


@dataclass
class Sample:
    """One view of one image, ready for batching."""

    image: Tensor  # (3, resized_h, resized_w) uint8
    boxes: Tensor  # (N, 4) float32 boxes_xyxy in view pixels
    labels: Tensor  # (N,) int64 contiguous labels
    image_id: int
    geometry: ViewGeometry
    teacher: CachedTargets | None = None  # the view's cached teacher targets (built by cache.reader)


def _file_size(path: Path) -> int:
    """The size of the regular file at ``path`` (a link followed) in bytes, else -1."""
    try:
        st = path.stat()
    except OSError:
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


class CocoViews(torch.utils.data.Dataset):
    """Views of a COCO-format split. Indexed by ``(position, view)`` pairs from ``ViewSampler``.

    ``position`` counts images in ascending id order; ``view`` is ``"orig"`` or ``"hflip"``, optionally at another
    short side than the geometry's (``"hflip@640"``, ``geometry.parse_view``).
    """

    def __init__(self, index: CocoIndex, image_dir: str | Path, geometry: GeometryConfig):
        self.index = index
        self.image_dir = Path(image_dir)
        self.geometry = geometry
        self._sizes: list[int] | None = None  # file_sizes(), once
        if not self.image_dir.is_dir():
            raise DataError(f"images: expected a directory at {str(self.image_dir)!r}, but it does not exist")

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, geometry: GeometryConfig, scored: bool = False) -> CocoViews:
        """The views of ``split``; ``scored``: it is the split an evaluation scores (``CocoIndex``)."""
        return cls(CocoIndex(cfg.annotation_file(split), cfg.label_map, scored), cfg.image_dir(split), geometry)

    def __len__(self) -> int:
        return len(self.index)

    def require_images(self, command: str, split: str, hint: str) -> None:
        """One DataError, naming the split and its annotation file, when that file lists no image: no work to do."""
        if len(self.index) == 0:
            raise DataError(f"{command}: expected images in split {split!r}, its annotation file "
                            f"{str(self.index.path)!r} lists none", hint=hint)

    def file_sizes(self) -> list[int]:
        """Each image file's size in bytes, in the index's order; -1 where there is no file. Statted once for this
        object (``check_files`` and a cache's image-files check share it), in threads: on a network file system
        each stat waits on its server."""
        if self._sizes is None:
            paths = [self.image_dir / r.file_name for r in self.index.records]
            parts = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]
            with ThreadPoolExecutor(max_workers=min(16, max(1, len(parts)))) as pool:
                self._sizes = [size for part in pool.map(lambda ps: [_file_size(p) for p in ps], parts)
                               for size in part]
        return self._sizes

    def check_files(self, count: int | None = None) -> None:
        """One DataError naming the first of the split's image files (of the first ``count``) that is missing and
        how many are: found before the work, not hours into it. Only their presence is checked (a stat each)."""
        records = self.index.records[:count]
        if count is None or count >= len(self.index.records):
            missing = [self.image_dir / r.file_name for r, size in zip(records, self.file_sizes()) if size < 0]
        else:
            missing = [self.image_dir / r.file_name for r in records if not (self.image_dir / r.file_name).is_file()]
        if missing:
            raise DataError(f"image: expected a file at {str(missing[0])!r}, but it {missing_file(missing[0])}",
                            hint=f"{len(missing)} of the {len(records)} image files of "
                                 f"{str(self.index.path)!r} {'is' if len(missing) == 1 else 'are'} missing")

    def check_images(self, count: int | None = None) -> None:
        """``check_files``, then one DataError naming the first of those files whose header shows that it would not
        be read (``check_header``: not an image, more than 8 bits a channel, not its annotated size). Headers only,
        no pixel decoded: 500 JPEGs of 640x480 take about 20 ms from the page cache, against 1.5 s to decode."""
        self.check_files(count)
        for rec in self.index.records[:count]:
            check_header(self.image_dir / rec.file_name, (rec.height, rec.width))

    def geometry_of(self, position: int, view: str) -> ViewGeometry:
        rec = self.index.records[position]
        return view_geometry(rec.height, rec.width, self.geometry, view)

    def original(self, key) -> tuple[Tensor, ViewGeometry]:
        """The decoded file of view ``key`` at its original size (``(3, H, W)`` uint8) and the view's geometry."""
        position, view = key if isinstance(key, tuple) else (key, "orig")
        rec = self.index.records[position]
        path = self.image_dir / rec.file_name
        image = read_image(path, (rec.height, rec.width))
        fault = _size_fault(path, (rec.height, rec.width), tuple(image.shape[-2:]))
        if fault is not None:
            raise fault
        return image, self.geometry_of(position, view)

    def __getitem__(self, key) -> Sample:
        position, _ = key if isinstance(key, tuple) else (key, "orig")
        rec = self.index.records[position]
        image, geom = self.original(key)
        labels = torch.tensor([self.index.category_to_label[int(c)] for c in rec.category_ids], dtype=torch.int64)
        return Sample(
            image=apply_to_image(image, geom),
            boxes=apply_to_boxes(torch.from_numpy(rec.boxes_xyxy), geom),
            labels=labels,
            image_id=rec.image_id,
            geometry=geom,
        )


class OriginalViews(torch.utils.data.Dataset):
    """``CocoViews.original`` as a Dataset: DataLoader workers only decode, and ``resize_batch`` resizes on the
    device (the teacher's GPU keeps up with far more images than CPU resizing delivers)."""

    def __init__(self, views: CocoViews):
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, key) -> tuple[Tensor, ViewGeometry]:
        return self.views.original(key)


@dataclass
class Originals:
    """A batch of views as decoded files: each file once (``images``), and per view the index of its file in
    ``images`` and the view's geometry. The two views of an image share its file, its decoding, its copy to the
    device and its resize (``resize_batch``)."""

    images: list[Tensor]
    views: list[tuple[int, ViewGeometry]]

    @staticmethod
    def of(items: Sequence[tuple[Tensor, ViewGeometry]]) -> Originals:
        """From ``(image, geometry)`` pairs; pairs holding the same tensor object share it."""
        images, index, views = [], {}, []
        for image, geom in items:
            if id(image) not in index:
                index[id(image)] = len(images)
                images.append(image)
            views.append((index[id(image)], geom))
        return Originals(images, views)

    def pin_memory(self) -> Originals:  # the DataLoader's pinning thread calls it
        return Originals([im.pin_memory() for im in self.images], self.views)


class OriginalBatches(torch.utils.data.Dataset):
    """Batches of ``CocoViews.original``, for a DataLoader with ``batch_size=None`` and a sampler of key lists: a
    worker decodes each file of a batch once however many of its views the batch holds (teacher-cache batches
    hold both views of each image), and ``resize_batch`` resizes each once on the device."""

    def __init__(self, views: CocoViews):
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, keys: Sequence[tuple[int, str]]) -> Originals:
        images, index, views = [], {}, []
        for position, view in keys:
            if position not in index:
                index[position] = len(images)
                images.append(self.views.original((position, view))[0])
            views.append((index[position], self.views.geometry_of(position, view)))
        return Originals(images, views)


def collate_originals(items):
    """The DataLoader's collate for ``OriginalViews`` and ``OriginalBatches``: the items as they are."""
    return items


def resize_batch(batch: Originals | Sequence[tuple[Tensor, ViewGeometry]],
                 device) -> tuple[Tensor, list[tuple[int, int]]]:
    """Originals (``OriginalBatches``' or ``OriginalViews``' pairs) -> the padded ``(B, 3, H, W)`` uint8 batch and
    the valid sizes, resized and flipped on ``device`` exactly as ``apply_to_image`` does on the CPU (the same
    float32 bilinear; a device's last-bit rounding can move a pixel by one level at most). Each file goes to the
    device once and is resized once per size; an ``hflip`` view is the flip of that resize."""
    batch = batch if isinstance(batch, Originals) else Originals.of(batch)
    on_device = [im.to(device, non_blocking=True) for im in batch.images]
    resized: dict[tuple[int, int, int], Tensor] = {}
    images = []
    for i, g in batch.views:
        key = (i, g.resized_h, g.resized_w)
        if key not in resized:
            resized[key] = resize_image(on_device[i], g)
        images.append(resized[key].flip(-1) if g.hflip else resized[key])
    geoms = [g for _, g in batch.views]
    return pad_batch(images, batch_padded_size(geoms)), [g.valid_size for g in geoms]


class ViewSampler(torch.utils.data.Sampler):
    """Yields ``(position, view)`` pairs: each image once per epoch, in one of ``views``.

    Deterministic in ``(seed, epoch)``; with ``world_size > 1`` each rank takes every ``world_size``-th
    item of the shuffled order (padded by wrapping, like ``DistributedSampler``). ``start`` skips that
    many items of this rank's epoch, so a run resumed mid-epoch sees exactly the items it had not seen.
    ``view_prob`` is the chance of each view after the first (``[0.5]`` for orig/hflip = random flip).
    """

    def __init__(self, num_images: int, views=("orig",), shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, view_choice: str = "random"):
        if num_images < 1:
            raise DataError("dataset: expected at least one image, found none")
        if view_choice not in ("random", "all"):
            raise ConfigError(f"view_choice: expected 'random' or 'all', got {view_choice!r}")
        self.num_images = num_images
        self.views = tuple(views)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.view_choice = view_choice
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def _items(self) -> list[tuple[int, str]]:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        if self.view_choice == "all":
            items = [(p, v) for p in range(self.num_images) for v in self.views]
        else:
            picks = torch.randint(len(self.views), (self.num_images,), generator=g).tolist()
            items = [(p, self.views[k]) for p, k in enumerate(picks)]
        if self.shuffle:
            order = torch.randperm(len(items), generator=g).tolist()
            items = [items[i] for i in order]
        total = -(-len(items) // self.world_size) * self.world_size
        items = (items * (total // len(items) + 1))[:total]
        return items[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_epoch = self.num_images * (len(self.views) if self.view_choice == "all" else 1)
        return -(-per_epoch // self.world_size)  # noqa: PLE0303 - the ceiling of a count over a positive size

    def __iter__(self):
        return iter(self._items()[self.start :])


class ListSampler(torch.utils.data.Sampler):
    """Yields the given items in order: dataset keys for ``sampler=``, lists of keys for ``batch_sampler=``."""

    def __init__(self, items):
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Batch:
    """A padded batch. ``images`` is zero outside each ``image_sizes[i]`` box (bottom/right padding).

    ``packed``: set by ``collate``, the one buffer that images, every target tensor and the teacher's tensors are
    views of (see ``data.packed``), so that ``pin_memory`` pins once and ``to`` copies once. A batch built
    otherwise, or whose tensors were replaced since, is pinned and moved tensor by tensor.
    """

    images: Tensor  # (B, 3, H, W) uint8
    image_sizes: list[tuple[int, int]]  # valid (resized) size of each image
    targets: list[dict[str, Tensor]]  # per image {"boxes": (N, 4) float32 xyxy view pixels, "labels": (N,)}
    image_ids: list[int]
    geometries: list[ViewGeometry]
    teacher: CachedTargets | None = None  # the views' cached teacher targets, batched (CachedTargets.fill_batch)
    packed: PackedTensors | None = field(default=None, repr=False, compare=False)

    def tensors(self) -> list[Tensor]:
        """Images, each target's tensors (image by image, in key order), then the teacher's ``tensors()``."""
        out = [self.images, *(v for t in self.targets for v in t.values())]
        return out if self.teacher is None else [*out, *self.teacher.tensors()]

    def with_tensors(self, tensors: Sequence[Tensor], packed: PackedTensors | None = None) -> Batch:
        """The same batch made of ``tensors`` (in ``tensors()`` order)."""
        rest = iter(tensors[1:])
        targets = [{k: next(rest) for k in t} for t in self.targets]
        teacher = None if self.teacher is None else self.teacher.with_tensors(list(rest))
        return Batch(tensors[0], self.image_sizes, targets, self.image_ids, self.geometries, teacher, packed)

    def __getstate__(self) -> dict:
        """What pickling sends (a DataLoader worker's batch to the main process): when packed, the buffer and the
        batch's structure, not each tensor, so that one shared storage crosses over; ``__setstate__`` makes the
        views again."""
        state = dict(self.__dict__)
        if self.packed is not None and self.packed.holds(self.tensors()):
            state["images"] = None
            state["targets"] = [dict.fromkeys(t) for t in self.targets]
            if self.teacher is not None:
                state["teacher"] = self.teacher.with_tensors([None] * len(self.teacher.tensors()))
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.__dict__.update(self.with_tensors(list(self.packed.views), self.packed).__dict__)

    def pin_memory(self) -> Batch:
        """Pins in place (the DataLoader's pin-memory thread calls this) and returns the batch."""
        pinned = self.with_tensors(*map_packed(lambda t: t.pin_memory(), self.packed, self.tensors()))
        self.images, self.targets, self.teacher = pinned.images, pinned.targets, pinned.teacher
        self.packed = pinned.packed
        return self

    def to(self, device, non_blocking: bool = True) -> Batch:
        """The same batch on ``device`` (one copy when packed; the original is left where it was)."""
        return self.with_tensors(*map_packed(lambda t: t.to(device, non_blocking=non_blocking), self.packed,
                                             self.tensors()))


def collate(samples: list[Sample]) -> Batch:
    """Views -> a padded batch whose tensors (images, each view's boxes and labels, the teacher's targets) are
    views of one buffer, in shared memory when built in a DataLoader worker (see ``data.packed``)."""
    geoms = [s.geometry for s in samples]
    h, w = batch_padded_size(geoms)
    specs = [(samples[0].image.dtype, (len(samples), samples[0].image.shape[0], h, w))]
    for s in samples:
        specs += [(s.boxes.dtype, s.boxes.shape), (s.labels.dtype, s.labels.shape)]
    teachers = None if samples[0].teacher is None else [s.teacher for s in samples]
    if teachers is not None:
        specs += CachedTargets.batch_specs(teachers)
    packed = PackedTensors.allocate(specs)
    images, views = packed.views[0], packed.views[1 : 1 + 2 * len(samples)]
    pad_into(images, [s.image for s in samples])
    targets = []
    for s, boxes, labels in zip(samples, views[0::2], views[1::2], strict=True):
        boxes.copy_(s.boxes)
        labels.copy_(s.labels)
        targets.append({"boxes": boxes, "labels": labels})
    teacher = None if teachers is None else CachedTargets.fill_batch(teachers, packed.views[1 + 2 * len(samples) :])
    return Batch(
        images=images,
        image_sizes=[g.valid_size for g in geoms],
        targets=targets,
        image_ids=[s.image_id for s in samples],
        geometries=geoms,
        teacher=teacher,
        packed=packed,
    )
