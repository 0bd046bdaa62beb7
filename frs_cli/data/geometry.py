"""The one image geometry every stage shares: resize, optional horizontal flip, pad to a stride multiple.

A teacher's cached features are only useful if the student sees exactly the same pixels, so the geometry
of each view is computed by one function from the original image size and a small config, and recorded
(``ViewGeometry``) next to the cached arrays. Any later stage can recompute it and compare.

Conventions: sizes are ``(height, width)`` in pixels; boxes are ``boxes_xyxy`` in pixel units with the
origin at the top-left corner of the top-left pixel (COCO's convention), so a horizontal flip maps
``x`` to ``width - x``.

A view is named by its flip, ``orig`` or ``hflip``, at the geometry's short side (``min_size``), or with another
short side after an ``@``: ``hflip@640`` is the flipped image resized so its short side is 640 px (the long side
still at most ``max_size``). Multi-scale training (mmdetection's ``RandomChoiceResize``, the paper's FCOS) is a
choice among such views, and a cache holds the ones it lists.

This module is plain arithmetic on sizes (a recipe is checked without torch); ``frs_cli.data.transforms``
applies a view's geometry to images, boxes and batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from frs_cli.errors import ConfigError

VIEWS = ("orig", "hflip")


@dataclass(frozen=True)
class GeometryConfig:
    min_size: int = 800  # target length of the short side after resizing, px
    max_size: int = 1333  # the long side is never resized beyond this, px
    size_divisible: int = 32  # each image is padded (bottom/right) to a multiple of this, px

    def __post_init__(self):
        for name in ("min_size", "max_size", "size_divisible"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"recipe key 'geometry.{name}': expected a positive integer, got {value!r}")
        if self.max_size < self.min_size:
            raise ConfigError(
                f"recipe key 'geometry.max_size': expected at least min_size ({self.min_size}), got {self.max_size}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ViewGeometry:
    """Where one view of one image sits: original size, resized (valid) size, padded size, flip."""

    orig_h: int
    orig_w: int
    resized_h: int
    resized_w: int
    padded_h: int
    padded_w: int
    hflip: bool

    FIELDS = ("orig_h", "orig_w", "resized_h", "resized_w", "padded_h", "padded_w", "hflip")

    @property
    def scale_y(self) -> float:
        return self.resized_h / self.orig_h

    @property
    def scale_x(self) -> float:
        return self.resized_w / self.orig_w

    @property
    def valid_size(self) -> tuple[int, int]:
        return (self.resized_h, self.resized_w)

    @property
    def padded_size(self) -> tuple[int, int]:
        return (self.padded_h, self.padded_w)

    @property
    def view(self) -> str:
        """The flip's name, ``orig`` or ``hflip`` (a view's full name also carries its short side, ``view_name``)."""
        return "hflip" if self.hflip else "orig"

    def to_row(self) -> list[int]:
        """Seven integers, the order of ``FIELDS`` (how the cache stores it)."""
        return [int(getattr(self, name)) for name in self.FIELDS]

    @classmethod
    def from_row(cls, row) -> ViewGeometry:
        values = [int(v) for v in row]
        return cls(*values[:6], hflip=bool(values[6]))

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


def resized_size(orig_h: int, orig_w: int, cfg: GeometryConfig) -> tuple[int, int]:
    """Scale so the short side is ``min_size`` unless the long side would pass ``max_size``."""
    if orig_h < 1 or orig_w < 1:
        raise ConfigError(f"image size: expected positive height and width, got {orig_h}x{orig_w}")
    scale = min(cfg.min_size / min(orig_h, orig_w), cfg.max_size / max(orig_h, orig_w))
    new_h = max(1, min(round(orig_h * scale), cfg.max_size))
    new_w = max(1, min(round(orig_w * scale), cfg.max_size))
    return new_h, new_w


def compute_geometry(orig_h: int, orig_w: int, cfg: GeometryConfig, hflip: bool = False) -> ViewGeometry:
    """The geometry of one view; a pure function of the original size, the config and the flip."""
    new_h, new_w = resized_size(orig_h, orig_w, cfg)
    d = cfg.size_divisible
    return ViewGeometry(
        orig_h=int(orig_h),
        orig_w=int(orig_w),
        resized_h=new_h,
        resized_w=new_w,
        padded_h=int(math.ceil(new_h / d) * d),
        padded_w=int(math.ceil(new_w / d) * d),
        hflip=bool(hflip),
    )


def parse_view(view: str, key: str = "view") -> tuple[str, int | None]:
    """``"hflip@640"`` -> ``("hflip", 640)``; a name without ``@`` -> ``(name, None)`` (the geometry's short side).
    ConfigError for anything else, naming ``key`` (where the name came from)."""
    flip, at, size = view.partition("@") if isinstance(view, str) else (view, "", "")
    if flip in VIEWS and not at:
        return flip, None
    if flip in VIEWS and size.isascii() and size.isdigit() and int(size) > 0 and size == str(int(size)):
        return flip, int(size)
    raise ConfigError(f"{key}: expected {' or '.join(VIEWS)}, optionally with a short side in px after '@' "
                      f"(e.g. hflip@640), got {view!r}")


def view_name(flip: str, min_size: int, cfg: GeometryConfig) -> str:
    """The name of view ``flip`` at short side ``min_size``: plain at the geometry's own short side (so every name
    has one spelling), ``flip@min_size`` otherwise."""
    return flip if min_size == cfg.min_size else f"{flip}@{min_size}"


def view_short_side(view: str, cfg: GeometryConfig) -> int:
    """The short side ``view`` is resized to under ``cfg``."""
    return parse_view(view)[1] or cfg.min_size


def canonical_view(view: str, cfg: GeometryConfig) -> str:
    """``view``'s one spelling under ``cfg`` (``orig@800`` is ``orig`` when ``cfg.min_size`` is 800)."""
    return view_name(parse_view(view)[0], view_short_side(view, cfg), cfg)


def view_geometry(orig_h: int, orig_w: int, cfg: GeometryConfig, view: str) -> ViewGeometry:
    """The geometry of view ``view`` (``parse_view``'s names) of an ``orig_h x orig_w`` image under ``cfg``."""
    flip, short = parse_view(view)
    if short is not None and short != cfg.min_size:
        if short > cfg.max_size:
            raise ConfigError(f"view {view!r}: expected a short side of at most geometry.max_size "
                              f"({cfg.max_size}), got {short}")
        cfg = replace(cfg, min_size=short)
    return compute_geometry(orig_h, orig_w, cfg, hflip=(flip == "hflip"))


def batch_padded_size(geoms, size_divisible: int = 1) -> tuple[int, int]:
    """The smallest ``(H, W)`` holding every view's padded size (already stride multiples)."""
    h = max(g.padded_h for g in geoms)
    w = max(g.padded_w for g in geoms)
    return (int(math.ceil(h / size_divisible) * size_divisible), int(math.ceil(w / size_divisible) * size_divisible))


def level_valid_size(valid_size: tuple[int, int], stride: int, level_size: tuple[int, int]) -> tuple[int, int]:
    """Positions of a feature level (stride ``stride``, grid ``level_size``) that lie over real pixels."""
    return (
        min(level_size[0], math.ceil(valid_size[0] / stride)),
        min(level_size[1], math.ceil(valid_size[1] / stride)),
    )


def level_grid_size(padded_size: tuple[int, int], num_halvings: int) -> tuple[int, int]:
    """Grid size of a level reached from the padded input by ``num_halvings`` stride-2 steps.

    Each stride-2 step of the backbone (3x3/7x7 conv with padding, or 1x1 pooling with ceil) maps n to
    ceil(n / 2), so a stride-``2**k`` level of a ``(H, W)`` input is ``ceil``-halved k times.
    """
    h, w = padded_size
    for _ in range(num_halvings):
        h, w = (h + 1) // 2, (w + 1) // 2
    return (h, w)
