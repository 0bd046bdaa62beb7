"""An embedded synthetic detection dataset: textured shapes on cluttered backgrounds, in COCO format.

``generate`` writes, with no downloads::

    OUT_DIR/train/000000000001.jpg ...
    OUT_DIR/val/...
    OUT_DIR/annotations/instances_train.json
    OUT_DIR/annotations/instances_val.json

Conventions:

- Everything is a pure function of ``SynthConfig``. Image ``i`` of a split is drawn from
  ``np.random.default_rng([seed, split_code, i])`` (train 0, val 1), so it does not depend on the order
  of drawing, on threads, or on how many images the other split has.
- Image ids run ``1..train`` in the training split and go on with ``train+1..train+val`` in validation,
  so they are unique across both files. A file name is the 12-digit zero-padded id plus ``.jpg``.
  Annotation ids start at 1 in each file.
- Boxes are COCO ``[x, y, w, h]`` in pixels, origin at the top-left corner of the top-left pixel. A box is
  the full (amodal) extent of the shape, clipped to the image and snapped outwards to 1/16 px, so every
  coordinate is exact in binary floating point and ``area == w * h`` holds exactly.
- Colour never identifies the class: each object gets a random colour and texture (flat, gradient or
  stripes, plus noise); backgrounds are smooth colour noise with gradients, stripes and clutter lines.
- Shapes are drawn one after the other and later ones may occlude earlier ones, but a placement is
  retried (then skipped) if it would leave an earlier shape with less than half of its pixels visible.
- ``LOOKALIKES`` are drawn like the annotated shapes but never annotated: a hollow ring (looks like the
  circle) and a rhombus (looks like a rotated square).
- Shapes are rasterised at ``SUPERSAMPLE`` times the resolution and box-filtered down (anti-aliased
  edges). Pillow fills polygons including their boundary, so a drawn edge may reach up to
  ``1 / (2 * SUPERSAMPLE)`` px beyond its box.
- The set is written into a hidden folder beside the output (``.<name>.<pid>.partial``) and renamed into place
  once whole, so an output folder that exists is complete. A stopped run removes its hidden folder; one a
  killed run left (SIGKILL, a power cut) is removed by the next run for the same output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from frs_cli.errors import ConfigError
from frs_cli.files import check_can_create, storage_error, write_json
from frs_cli.lock import process_alive
from frs_cli.names import sibling

CATEGORIES: list[dict] = [
    {"id": i + 1, "name": name, "supercategory": "shape"}
    for i, name in enumerate(("circle", "square", "triangle", "star", "cross"))
]
LOOKALIKES: tuple[str, ...] = ("ring", "rhombus")

SUPERSAMPLE = 3
MIN_VISIBLE = 0.5  # an earlier shape must keep at least this share of its pixels visible
MIN_INSIDE = 0.6  # a shape's box must keep at least this share of its area inside the image
BOX_GRID = 16  # boxes are snapped outwards to 1/BOX_GRID px, so they are exact binary fractions
PLACEMENT_TRIES = 8
JPEG_QUALITY = 90
_SPLITS = (("train", 0), ("val", 1))


MAX_SIZE = 8192  # the long side synth draws at most (COCO's images are up to 640 px)


@dataclass(frozen=True)
class SynthConfig:
    train: int = 400  # number of training images (at least 1: a split with no images cannot be cached or trained on)
    val: int = 100  # number of validation images
    size: int = 160  # long side of every image, px (>= 64)
    seed: int = 0  # everything is a pure function of this
    aspect_jitter: bool = False  # if True, each image is size x size, size x 3/4 size or 3/4 size x size
    min_objects: int = 1  # annotated objects per image, inclusive range
    max_objects: int = 6
    lookalike_prob: float = 0.5  # chance that an image also gets 1-2 un-annotated look-alike objects
    min_object: float = 8.0  # smallest object diameter, px (sizes are log-uniform between the two bounds)
    max_object: float = 0.6  # largest object diameter, as a fraction of the long side

    def __post_init__(self):
        for name, low in (("train", 1), ("val", 0), ("size", 64), ("seed", 0), ("min_objects", 0),
                          ("max_objects", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"synth.{name}: expected an integer >= {low}, got {value!r}")
        if self.size > MAX_SIZE:  # one image is size^2 * 3 bytes, and more in drawing: 100000 px ran out of memory
            raise ConfigError(f"synth.size: expected a long side of at most {MAX_SIZE} px, got {self.size}")
        if self.max_objects < self.min_objects:
            raise ConfigError(
                f"synth.max_objects: expected at least min_objects ({self.min_objects}), "
                f"got {self.max_objects}"
            )
        if not isinstance(self.aspect_jitter, bool):
            raise ConfigError(f"synth.aspect_jitter: expected true or false, got {self.aspect_jitter!r}")
        if isinstance(self.min_object, bool) or not isinstance(self.min_object, (int, float)) or self.min_object < 2:
            raise ConfigError(f"synth.min_object: expected a number of pixels >= 2, got {self.min_object!r}")
        mo = self.max_object
        if isinstance(mo, bool) or not isinstance(mo, (int, float)) or not 0.0 < mo <= 1.0 \
                or mo * self.size < self.min_object:
            raise ConfigError(f"synth.max_object: expected a fraction in (0, 1] of the long side with "
                              f"max_object * size >= min_object ({self.min_object}), got {mo!r}")
        p = self.lookalike_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"synth.lookalike_prob: expected a number in [0, 1], got {p!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _regular(n: int, radius: float = 1.0) -> np.ndarray:
    """``n`` vertices on a circle, the first pointing up (image y grows downwards)."""
    a = math.pi / 2 + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), -np.sin(a)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    a = math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), -r * np.sin(a)], axis=1)


def _cross(half_width: float = 0.32) -> np.ndarray:
    a = half_width
    quarter = [(a, 1.0), (a, a), (1.0, a)]
    pts = []
    for _ in range(4):  # the same three corners, turned a quarter clockwise each time
        pts += quarter
        quarter = [(y, -x) for x, y in quarter]
    return np.array(pts)


# Unit outlines (radius 1, centred at 0). The first polygon is filled; any further ones are holes.
_OUTLINES: dict[str, list[np.ndarray]] = {
    "circle": [_regular(48)],
    "square": [_regular(4)],
    "triangle": [_regular(3)],
    "star": [_star()],
    "cross": [_cross()],
    "ring": [_regular(48), _regular(48, 0.58)],
    "rhombus": [np.array([(1.0, 0.0), (0.0, 0.55), (-1.0, 0.0), (0.0, -0.55)])],
}
_ROTATES = {"square", "triangle", "star", "cross", "rhombus"}
_CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


def _image_size(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    """``(width, height)``; with jitter the short side is 3/4 of ``size``, rounded half up."""
    if not cfg.aspect_jitter:
        return cfg.size, cfg.size
    short = math.floor(cfg.size * 0.75 + 0.5)
    return [(cfg.size, cfg.size), (cfg.size, short), (short, cfg.size)][int(rng.integers(3))]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour noise, a gradient, sometimes stripes, then clutter lines and arcs (supersampled)."""
    k = int(rng.integers(2, 7))
    noise = Image.fromarray(rng.integers(0, 256, (k, k, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    img = np.asarray(noise, dtype=np.float32)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(theta) + ys * math.sin(theta)) / max(w, h)
    img = img + ramp[..., None] * rng.uniform(-90, 90, 3).astype(np.float32)
    if rng.random() < 0.4:
        theta, period = rng.uniform(0, 2 * math.pi), rng.uniform(4, 24)
        wave = np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * (2 * math.pi / period))
        img = img + wave[..., None] * rng.uniform(-45, 45, 3).astype(np.float32)
    s = SUPERSAMPLE
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((w * s, h * s), Image.BILINEAR)
    draw = ImageDraw.Draw(out)
    scale = np.array([w, h, w, h]) * s
    for _ in range(int(rng.integers(2, 11))):
        xy = (rng.uniform(-0.1, 1.1, 4) * scale).tolist()
        draw.line(xy, fill=_colour(rng), width=s * int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 3))):  # curved clutter, so round edges alone do not mean "circle"
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * scale[:2]
        d = rng.uniform(0.1, 0.5) * scale[2]
        start = rng.uniform(0, 360)
        draw.arc([x0, y0, x0 + d, y0 + d], start, start + rng.uniform(40, 200), fill=_colour(rng),
                 width=s * int(rng.integers(1, 3)))
    return out


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 patch: flat, gradient or striped between two near colours, plus noise."""
    colour = colour.astype(np.float32)
    other = colour + rng.normal(0, 50, 3).astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        patch = np.broadcast_to(colour, (h, w, 3))
    else:
        theta = rng.uniform(0, 2 * math.pi)
        xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
        proj = xs * math.cos(theta) + ys * math.sin(theta)
        if kind == 1:
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        else:
            t = (np.sin(proj * (2 * math.pi / (SUPERSAMPLE * rng.uniform(3, 10)))) > 0).astype(np.float32)
        patch = colour + t[..., None] * (other - colour)
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(0, 14))
    return np.clip(patch + noise, 0, 255).astype(np.uint8)


def _place(rng, cfg, kind, w, h, canvas, owner, visible, total):
    """Draw one shape onto ``canvas`` (supersampled HxWx3) if a placement is found; return its box.

    ``owner`` maps each supersampled pixel to the 1-based index of the shape that shows there (0 for
    background); ``visible``/``total`` hold each drawn shape's visible and original pixel counts (index
    0 unused). ``visible`` is updated in place; returns ``(box_lo, box_hi, n_pixels)`` or None.
    """
    s = SUPERSAMPLE
    radius = math.exp(rng.uniform(math.log(cfg.min_object / 2), math.log(cfg.max_object / 2 * max(w, h))))
    for _ in range(PLACEMENT_TRIES):
        centre = rng.uniform(0, 1, 2) * (w, h)
        angle = rng.uniform(0, 2 * math.pi) if kind in _ROTATES else 0.0
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        polys = [centre + radius * (p @ rot.T) for p in _OUTLINES[kind]]
        lo, hi = polys[0].min(axis=0), polys[0].max(axis=0)
        clo, chi = np.maximum(lo, 0.0), np.minimum(hi, (w, h))
        if np.any(chi - clo < 2.0) or np.prod(chi - clo) < MIN_INSIDE * np.prod(hi - lo):
            continue
        x0, y0 = (int(v) for v in np.floor(clo * s))
        x1, y1 = (int(v) for v in np.ceil(chi * s))
        mask_img = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(mask_img)
        for i, poly in enumerate(polys):
            # Pillow fills from the truncated vertex to the far pixel inclusive, so passing pixel-corner
            # coordinates (not centres) gives a symmetric half-pixel dilation instead of a shift.
            draw.polygon((poly * s - (x0, y0)).ravel().tolist(), fill=0 if i else 255)
        mask = np.asarray(mask_img) > 0
        if np.count_nonzero(mask) < SUPERSAMPLE * SUPERSAMPLE:  # hardly any of it inside the image
            continue
        region = owner[y0:y1, x0:x1]
        hidden = np.bincount(region[mask], minlength=len(visible))
        if np.any(visible[1:] - hidden[1:] < MIN_VISIBLE * total[1:]):
            continue
        crop = canvas[y0:y1, x0:x1]
        under = crop[mask].mean(axis=0)
        for _ in range(6):  # prefer a colour that stands out from what lies beneath
            colour = rng.uniform(0, 255, 3)
            if np.linalg.norm(colour - under) > 80:
                break
        crop[mask] = _texture(rng, y1 - y0, x1 - x0, colour)[mask]
        visible -= hidden
        region[mask] = len(visible)  # the caller appends this shape's counts at that index
        return clo, chi, int(mask.sum())
    return None


def render(
    cfg: SynthConfig, split_code: int, index: int
) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One image and its annotations ``[(category_id, [x, y, w, h]), ...]``, a pure function of its key."""
    rng = np.random.default_rng([cfg.seed, split_code, index])
    w, h = _image_size(rng, cfg)
    canvas = np.array(_background(rng, w, h))
    owner = np.zeros(canvas.shape[:2], np.int32)
    names = [c["name"] for c in CATEGORIES]
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    kinds = [names[i] for i in rng.integers(0, len(names), n_objects)]
    if rng.random() < cfg.lookalike_prob:
        for _ in range(int(rng.integers(1, 3))):
            kinds.insert(int(rng.integers(0, len(kinds) + 1)), LOOKALIKES[int(rng.integers(len(LOOKALIKES)))])
    visible, total = np.zeros(1, np.int64), np.zeros(1, np.int64)
    boxes = []
    for kind in kinds:
        placed = _place(rng, cfg, kind, w, h, canvas, owner, visible, total)
        if placed is None:
            continue
        lo, hi, n = placed
        visible, total = np.append(visible, n), np.append(total, n)
        if kind in _CATEGORY_ID:
            x0, y0 = (float(v) for v in np.floor(lo * BOX_GRID) / BOX_GRID)
            x1, y1 = (float(v) for v in np.ceil(hi * BOX_GRID) / BOX_GRID)
            boxes.append((_CATEGORY_ID[kind], [x0, y0, x1 - x0, y1 - y0]))
    small = np.asarray(Image.fromarray(canvas).reduce(SUPERSAMPLE), dtype=np.float32)
    small += rng.standard_normal(small.shape, dtype=np.float32) * np.float32(rng.uniform(0, 6))
    return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8)), boxes


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"synth output: expected a directory, got a file at {str(out)!r}")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"synth output: expected a missing or empty directory, got non-empty {str(out)!r}")


def _write_json(path: Path, payload: dict) -> None:
    write_json(path, payload, separators=(",", ":"))


def generate(out_dir: str | Path, cfg: SynthConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Write the dataset under ``out_dir`` (missing or empty) and return a summary.

    Calls ``progress(n)`` with the number of images just written as it goes. Returns
    ``{"train": n_train_images, "val": n_val_images, "annotations": {"train": n, "val": m},
    "categories": [names]}``.
    """
    if not isinstance(cfg, SynthConfig):
        raise ConfigError(f"synth config: expected a SynthConfig, got {type(cfg).__name__}")
    final = Path(out_dir)
    check_output(final)
    remove_stale_partials(final)
    # written in a hidden folder beside it, renamed into place once whole: a stopped run (Ctrl-C, a full disk)
    # leaves no part-written dataset at out_dir to refuse a second run or to be read as complete
    out = sibling(final, ".", f".{os.getpid()}.partial")
    try:
        with _errors_naming(final, out):
            for sub in ("train", "val", "annotations"):
                (out / sub).mkdir(parents=True, exist_ok=True)
            summary = _generate_into(out, cfg, progress)
            if final.is_dir():
                final.rmdir()  # empty (checked above); rename() would also replace it, not on every system
            os.replace(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # only still there when the run stopped
    return summary


def check_output(out_dir: str | Path) -> None:
    """What refuses ``out_dir`` before any image is made: not a missing or empty folder, or a place no file can be
    made (/proc, no permission)."""
    final = Path(out_dir)
    _check_out_dir(final)
    check_can_create(final, target=f"synth output {str(final)!r}")


def remove_stale_partials(final: Path) -> list[Path]:
    """Remove (and return) the hidden folders ``.<name>.<pid>.partial`` beside ``final`` that runs of ``generate``
    for it left and whose process is gone (SIGKILL, a power cut: no ``finally`` ran). A folder of a live process,
    another run writing the same set now, is left to it."""
    removed = []
    for folder in sorted(final.parent.glob(".*.partial")):
        pid = folder.name[:-len(".partial")].rpartition(".")[2]
        if not pid.isdigit() or folder != sibling(final, ".", f".{pid}.partial") or not folder.is_dir():
            continue  # another output's, or not one generate makes
        if int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def _errors_naming(final: Path, out: Path) -> Iterator[None]:
    """An ``OSError`` (a full disk, a folder that takes no file) as one line naming ``final``, the folder the user
    gave, not ``out``, the hidden one the images are written to first (nor a file in it)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir() and any(final.iterdir()):
            raise ConfigError(f"synth output {str(final)!r}: expected a missing or empty folder to put the set in, "
                              "but another run filled it meanwhile; nothing was written",
                              hint="give each run its own folder") from exc
        if exc.filename is not None and (Path(exc.filename) == out or out in Path(exc.filename).parents):
            exc.filename = str(final) if exc.errno == errno.ENAMETOOLONG else None  # the name whose part is too long
        raise storage_error(exc, f"synth output {str(final)!r}", hint="free space and run it again") from exc


def _generate_into(out: Path, cfg: SynthConfig, progress: Callable[[int], None] | None) -> dict:
    """``generate``'s work, into ``out`` (made, with its three folders)."""

    def write_one(split: str, code: int, index: int, image_id: int):
        image, boxes = render(cfg, code, index)
        name = f"{image_id:012d}.jpg"
        image.save(out / split / name, format="JPEG", quality=JPEG_QUALITY)
        return {"id": image_id, "file_name": name, "width": image.width, "height": image.height}, boxes

    files, counts = [], {}
    first_id = 1
    # Pillow and numpy release the GIL for most of the work, so threads give a real speed-up.
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    try:
        for split, code in _SPLITS:
            n = getattr(cfg, split)
            ids = range(first_id, first_id + n)
            images, annotations = [], []
            for entry, boxes in pool.map(write_one, [split] * n, [code] * n, range(n), ids):
                images.append(entry)
                for category_id, bbox in boxes:
                    annotations.append({"id": len(annotations) + 1, "image_id": entry["id"],
                                        "category_id": category_id, "bbox": bbox,
                                        "area": bbox[2] * bbox[3], "iscrowd": 0})
                if progress is not None:
                    progress(1)
            info = {"description": f"frs synthetic shapes ({split})", "version": "1",
                    "generator": "frs_cli.data.synth", "config": cfg.to_dict()}
            files.append((out / "annotations" / f"instances_{split}.json",
                          {"info": info, "images": images, "annotations": annotations,
                           "categories": CATEGORIES}))
            counts[split] = len(annotations)
            first_id += n
    finally:  # on Ctrl-C or a failed write, drop the queued images instead of rendering them all
        pool.shutdown(wait=True, cancel_futures=True)
    for path, payload in files:  # last, so a present annotation file means the images are all there
        _write_json(path, payload)
    return {"train": cfg.train, "val": cfg.val, "annotations": counts,
            "categories": [c["name"] for c in CATEGORIES]}


def pad_categories(root: Path, classes: int) -> None:
    """List ``classes`` categories in every split's annotations at ``root``: the shapes', then unused ones
    (``unused6``, ...) up to ``classes``, so that models built on the set have COCO's classification width (80)
    although only the shapes appear. ConfigError for fewer than the shapes."""
    if classes < len(CATEGORIES):
        raise ConfigError(f"synthetic categories: expected at least {len(CATEGORIES)} (the shapes), got {classes}")
    extra = [{"id": k, "name": f"unused{k}", "supercategory": "none"} for k in range(len(CATEGORIES) + 1, classes + 1)]
    for ann_file in sorted((root / "annotations").glob("instances_*.json")):
        doc = json.loads(ann_file.read_text(encoding="utf-8"))
        doc["categories"] = [*CATEGORIES, *extra]
        write_json(ann_file, doc)


def replicate(root: Path, times: int) -> None:
    """Grow the train split at ``root`` ``times``-fold with copies of its images and annotations under new
    ids: benchmarks of throughput need many views, not new ones (generating them costs ~0.2 s each)."""
    ann_file = root / "annotations" / "instances_train.json"
    doc = json.loads(ann_file.read_text(encoding="utf-8"))
    images, anns = list(doc["images"]), list(doc["annotations"])
    step = max(im["id"] for im in images) + 1
    ann_step = max([a["id"] for a in anns] + [0]) + 1
    for k in range(1, times):
        for im in images:
            new = {**im, "id": im["id"] + k * step, "file_name": f"{im['id'] + k * step:012d}.jpg"}
            shutil.copyfile(root / "train" / im["file_name"], root / "train" / new["file_name"])
            doc["images"].append(new)
        doc["annotations"] += [{**a, "id": a["id"] + k * ann_step, "image_id": a["image_id"] + k * step} for a in anns]
    write_json(ann_file, doc)
