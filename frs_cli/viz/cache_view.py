"""A cached view drawn with its FRS masks: the image as the teacher saw it, the GT boxes, one panel per level."""

from __future__ import annotations

from frs_cli.data.coco import CocoViews
from frs_cli.errors import ConfigError
from frs_cli.viz.masks import level_panels


def resolve_levels(level: str, names: list[str]) -> list[int]:
    """``"all"``, a level name (``"P3"``) or its number (``"3"``) -> indices into ``names``."""
    if level == "all":
        return list(range(len(names)))
    key = level if level.upper().startswith("P") else f"P{level}"
    for i, n in enumerate(names):
        if n.upper() == key.upper():
            return [i]
    raise ConfigError(f"--level: expected 'all' or one of {', '.join(names)}, got {level!r}")


def render_cached_view(cache, dataset: CocoViews, image_id: int | None = None, view: str = "orig",
                       level: str = "all", min_height: int = 256):
    """PIL image: the chosen levels' masks over the view, side by side, enlarged to at least ``min_height``."""
    names = [lv.name for lv in cache.levels]
    chosen = resolve_levels(level, names)
    if image_id is None:
        image_id = int(cache.image_id[0])
    k = cache.find(image_id, view)
    position = dataset.index.position.get(int(image_id))
    if position is None:
        raise ConfigError(f"--image-id: image {image_id} is in the cache but not in the dataset at {dataset.image_dir}")
    sample = dataset[(position, view)]
    masks = cache.read(k)["masks"]
    scale = max(1, -(-min_height // sample.image.shape[-2]))
    return level_panels(sample.image, [masks[i].float().clamp(0, 1) for i in chosen],
                        [cache.levels[i].stride for i in chosen], [names[i] for i in chosen],
                        boxes_xyxy=sample.boxes, scale=scale)
