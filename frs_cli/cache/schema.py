"""The teacher cache's layout, in one place. ``docs/cache-format.md`` describes the same for people.

A cache is a Zarr v3 group::

    /                              attrs: format, teacher, levels, geometry, views, fingerprints, storage, ...
    /index/image_id      (N,)      int64   COCO image id of each cached view
    /index/view          (N,)      uint8   0 = orig, 1 = hflip; 2 + i: views[i], a view at another short side
    /index/bucket        (N,)      int32   which size bucket holds the view
    /index/row           (N,)      int32   its row inside that bucket
    /index/geometry      (N, 7)    int32   orig_h, orig_w, resized_h, resized_w, padded_h, padded_w, hflip
    /index/file_bytes    (I,)      int64   each image file's size in bytes as the cache was completed, in the
                                           split's image order (ascending id); -1 for none (absent before 2026-12-07)
    /buckets/<HxW>/<level>/features  (n, C', H_l, W_l) features as cache.encoding stores them, one chunk per view
    /buckets/<HxW>/<level>/scale     (n, C)            float32 per-channel scales (int8/int6/int5/int4 only)
    /buckets/<HxW>/<level>/mask      (n, H_l, W_l)     float16 FRS mask, one chunk per view
    /buckets/<HxW>/done              (n,)              uint8, 1 once every array of the view is written
    /buckets/<HxW>/crc               (n, 2 * levels)   uint32 CRC-32 of each array's bytes, as written
    /teacher_head/<name>             the teacher's classification-head parameters and buffers

Views are grouped by padded size (one bucket per distinct ``padded_h x padded_w``), so no view carries
padding beyond its stride multiple, and a view is one chunk per array: reading it costs O(levels) reads
whatever the dataset size. Chunks are grouped into shards of one plan batch each (``storage.views_per_shard``),
so a writer writes one file per array and batch. A view counts as written only when its ``done`` entry is 1; ``done`` is written
after the arrays, so a killed writer leaves nothing that looks complete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.data.geometry import level_grid_size

FORMAT_NAME = "frs-teacher-cache"
FORMAT_VERSION = 3  # the newest version this frs reads

# the stored code of a view at the geometry's short side; a view at another one (``hflip@640``) is 2 + its place
# in the cache's ``views`` attribute (format version 3, which came with them)
VIEW_CODES = {"orig": 0, "hflip": 1}
_VIEW_NAMES = {code: name for name, code in VIEW_CODES.items()}
SCALED_VIEWS_VERSION = 3


def view_code(view: str, views) -> int:
    """The code ``/index/view`` stores for ``view`` in a cache of ``views`` (its ``views`` attribute); -1 for a
    view at another short side that ``views`` does not list."""
    if view in VIEW_CODES:
        return VIEW_CODES[view]
    return 2 + list(views).index(view) if view in views else -1


def view_name(code: int, views) -> str:
    """The view a stored ``code`` stands for in a cache of ``views`` (``view_code``'s inverse)."""
    code = int(code)
    if code in _VIEW_NAMES:
        return _VIEW_NAMES[code]
    scaled = 2 <= code < 2 + len(views) and views[code - 2] not in VIEW_CODES
    return views[code - 2] if scaled else f"view code {code}"


def views_format_version(views) -> int:
    """The format version ``views`` need: 3 with a view at another short side (older readers know codes 0 and 1
    only), else 1."""
    return SCALED_VIEWS_VERSION if any(v not in VIEW_CODES for v in views) else 1


INDEX_ARRAYS = ("image_id", "view", "bucket", "row", "geometry")
FILE_BYTES = "index/file_bytes"  # written as the cache is completed; not required (older caches hold none)


def required_arrays(attrs: dict, head_names) -> list[str]:
    """Every array a cache with root attributes ``attrs`` must hold, by path: the index, per bucket its done
    flags, checksums and per level features, mask (and scale for the scaled dtypes), and the teacher head
    (``head_names``: the head's ``state_dict`` keys)."""
    names = [f"index/{n}" for n in INDEX_ARRAYS]
    scaled = FeatureEncoding(attrs["storage"]["dtype"]).scaled
    kinds = ("features", "scale", "mask") if scaled else ("features", "mask")
    for b in attrs["buckets"]:
        names += [f"buckets/{b['name']}/{lv['name']}/{k}" for lv in attrs["levels"] for k in kinds]
        names += [f"buckets/{b['name']}/done", f"buckets/{b['name']}/crc"]
    return names + [f"teacher_head/{n}" for n in head_names]


def bucket_name(padded_h: int, padded_w: int) -> str:
    return f"{padded_h}x{padded_w}"


@dataclass(frozen=True)
class Bucket:
    name: str
    padded: tuple[int, int]
    count: int
    level_sizes: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "padded": list(self.padded), "count": self.count,
                "level_sizes": [list(s) for s in self.level_sizes]}

    @classmethod
    def from_dict(cls, d: dict) -> Bucket:
        return cls(d["name"], tuple(d["padded"]), int(d["count"]), tuple(tuple(s) for s in d["level_sizes"]))


@dataclass
class Plan:
    """Where every view goes: the index arrays and the buckets, computed from annotation sizes alone."""

    image_id: np.ndarray  # (N,) int64
    position: np.ndarray  # (N,) int64 position of the image in the dataset (ascending id)
    view: np.ndarray  # (N,) uint8
    bucket: np.ndarray  # (N,) int32
    row: np.ndarray  # (N,) int32
    geometry: np.ndarray  # (N, 7) int32
    buckets: list[Bucket]

    def __len__(self) -> int:
        return len(self.image_id)


def view_bytes(plan: Plan, channels, encoding: FeatureEncoding) -> np.ndarray:
    """(N,) int64: the bytes each planned view's arrays take in the store without a codec (features, scales, fp16
    masks, checksums and done flag; ``channels``: each level's, in level order)."""
    per_bucket = []
    for b in plan.buckets:
        n = 4 * 2 * len(channels) + 1  # crc and done
        for c, (h, w) in zip(channels, b.level_sizes):
            n += encoding.stored_channels(c) * h * w * encoding.numpy_dtype.itemsize + 2 * h * w
            n += 4 * c if encoding.scaled else 0
        per_bucket.append(n)
    return np.asarray(per_bucket, dtype=np.int64)[plan.bucket] if len(plan) else np.zeros(0, dtype=np.int64)


def make_plan(dataset, views, strides) -> Plan:
    """Group ``views`` of every image of a ``CocoViews`` dataset by padded size; rows follow image order."""
    rows = []
    for pos in range(len(dataset)):
        for v in views:
            g = dataset.geometry_of(pos, v)
            rows.append((dataset.index.records[pos].image_id, pos, view_code(v, views), g))
    sizes = sorted({g.padded_size for *_, g in rows})
    halvings = [round(np.log2(s)) for s in strides]
    buckets = [Bucket(bucket_name(*s), s, 0, tuple(level_grid_size(s, k) for k in halvings)) for s in sizes]
    which = {s: i for i, s in enumerate(sizes)}
    counts = [0] * len(sizes)
    bucket, row = [], []
    for *_, g in rows:
        b = which[g.padded_size]
        bucket.append(b)
        row.append(counts[b])
        counts[b] += 1
    buckets = [Bucket(b.name, b.padded, counts[i], b.level_sizes) for i, b in enumerate(buckets)]
    return Plan(
        image_id=np.array([r[0] for r in rows], dtype=np.int64),
        position=np.array([r[1] for r in rows], dtype=np.int64),
        view=np.array([r[2] for r in rows], dtype=np.uint8),
        bucket=np.array(bucket, dtype=np.int32),
        row=np.array(row, dtype=np.int32),
        geometry=np.array([r[3].to_row() for r in rows], dtype=np.int32).reshape(-1, 7),
        buckets=buckets,
    )
