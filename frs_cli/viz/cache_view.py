"""A cached view drawn with its FRS masks: the image as the teacher saw it, the GT boxes, one panel per level,
and optionally the masks of a second cache (another teacher, or the same teacher elsewhere) in a row below."""

from __future__ import annotations

from pathlib import Path

from frs_cli.cache.identity import comparable_dataset
from frs_cli.data.coco import CocoViews
from frs_cli.errors import ConfigError
from frs_cli.viz.masks import mask_figure

MAX_PANEL_PX = 1024  # the widest a panel is enlarged to


def resolve_levels(level: str, names: list[str]) -> list[int]:
    """``"all"``, a level name (``"P3"``) or its number (``"3"``) -> indices into ``names``; any case, as the names."""
    if level.lower() == "all":
        return list(range(len(names)))
    key = level if level.upper().startswith("P") else f"P{level}"
    for i, n in enumerate(names):
        if n.upper() == key.upper():
            return [i]
    raise ConfigError(f"--level: expected 'all' or one of {', '.join(names)}, got {level!r}")


def cache_label(cache) -> str:
    """``'<folder name>: teacher <arch>'``: how a figure names the cache a row of masks came from."""
    arch = cache.teacher.get("arch", "?")
    return f"{Path(str(cache.path).rstrip('/')).name}: teacher {arch}"


def _masks_of(cache, image_id: int, view: str, chosen: list[int]):
    masks = cache.read(cache.find(image_id, view)).masks
    return [masks[i].float().clamp(0, 1) for i in chosen]


def render_cached_view(cache, dataset: CocoViews, image_id: int | None = None, view: str | None = None,
                       level: str = "all", min_height: int = 256, compare=None, vmax: float | None = None):
    """PIL image: the chosen levels' masks over the view, side by side, enlarged to at least ``min_height``.

    ``compare``: a second ``TeacherCache`` holding the same image and view with the same levels; its masks
    form a second row on the same colour scale. ``vmax``: the mask value drawn brightest (default: the
    largest shown). ``ConfigError`` when the image is not in the dataset or ``compare`` does not match.
    """
    names = [lv.name for lv in cache.levels]
    chosen = resolve_levels(level, names)
    if image_id is None:
        image_id = int(cache.image_id[0])
    k = cache.find(image_id, cache.views[0] if view is None else view)
    view = cache.view_name(k)  # its one spelling, as the dataset and ``compare`` know it
    position = dataset.index.position.get(int(image_id))
    if position is None:
        raise ConfigError(f"--image-id: image {image_id} is in the cache but not in the dataset at {dataset.image_dir}")
    sample = dataset[(position, view)]
    rows = [(cache_label(cache), _masks_of(cache, image_id, view, chosen))]
    if compare is not None:
        # each cache's fingerprint against the dataset drawn, in that cache's scheme (older caches hash the file)
        ours_data, theirs_data = (c.fingerprints.get("dataset") for c in (cache, compare))
        if theirs_data != comparable_dataset(theirs_data, dataset.index) \
                or ours_data != comparable_dataset(ours_data, dataset.index):  # its image 1 is another picture
            raise ConfigError(f"--compare: expected a cache of the same dataset as {cache.path!r} (dataset "
                              f"fingerprint {ours_data}), got {compare.path!r} of another ({theirs_data})",
                              hint="compare caches written over the same annotation file and split")
        other = [lv.name for lv in compare.levels]
        if other != names:
            raise ConfigError(f"--compare: expected a cache with levels {', '.join(names)}, got {', '.join(other)}")
        theirs, ours = compare.view_geometry(compare.find(image_id, view)), cache.view_geometry(k)
        if (theirs.resized_h, theirs.resized_w) != (ours.resized_h, ours.resized_w):
            raise ConfigError(f"--compare: expected view {view!r} of image {image_id} at {ours.resized_h}x"
                              f"{ours.resized_w} px as in the first cache, got {theirs.resized_h}x{theirs.resized_w}",
                              hint="both caches must use the same geometry")
        rows.append((cache_label(compare), _masks_of(compare, image_id, view, chosen)))
    h, w = sample.image.shape[-2:]  # enlarged to min_height, but no panel wider than MAX_PANEL_PX (a long strip)
    scale = max(1, min(-(-min_height // h), MAX_PANEL_PX // w))
    return mask_figure(sample.image, rows, [cache.levels[i].stride for i in chosen], [names[i] for i in chosen],
                       boxes_xyxy=sample.boxes, scale=scale, vmax=vmax,
                       title=f"FRS mask, image {image_id} ({view})")
