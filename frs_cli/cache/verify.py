"""Checking a cache against itself: every view recorded as done has all its arrays, each matching its checksum.

The writer stores, per view, a CRC-32 of each feature and mask array's bytes as written (``buckets/<HxW>/crc``,
level order, features then mask) before it sets the view's ``done`` flag. ``verify_cache`` reads every done
view back and compares. A view is rejected when one of its chunks is missing from the store, cannot be
decoded, or decodes to bytes of another checksum. ``teacher-cache --resume`` rewrites exactly the views
rejected here (it clears their ``done`` flags first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from frs_cli.cache.reader import TeacherCache
from frs_cli.cache.schema import SCALED_DTYPES, VIEW_NAMES
from frs_cli.cache.shard_writer import view_crc
from frs_cli.progress import NullProgress, Progress

MISSING, UNREADABLE, CHECKSUM = "missing", "unreadable", "checksum mismatch"


@dataclass(frozen=True)
class ViewFault:
    """One rejected view: where it is, and what is wrong with which of its arrays."""

    index: int  # position in the cache index (``index/*`` arrays)
    image_id: int
    view: str  # "orig" or "hflip"
    bucket: str  # e.g. "64x64"
    row: int  # row inside the bucket's arrays
    problems: tuple[tuple[str, str], ...]  # (array, MISSING | UNREADABLE | CHECKSUM), e.g. ("P3/features", "missing")

    def describe(self) -> str:
        return ", ".join(f"{name} {what}" for name, what in self.problems)


@dataclass
class VerifyReport:
    path: str
    state: str  # the cache's recorded state: "writing" or "complete"
    views_total: int
    views_done: int  # views recorded as written (all of them were checked)
    faults: list[ViewFault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every view is written and intact."""
        return not self.faults and self.views_done == self.views_total

    def summary(self) -> str:
        """One line: what was checked and what came out."""
        head = f"cache {self.path}: {self.views_done - len(self.faults)} of {self.views_done} written views intact"
        if self.faults:
            return f"{head}, {len(self.faults)} missing or corrupt (teacher-cache --resume rewrites them)"
        if self.views_done < self.views_total:
            return (f"{head}; {self.views_total - self.views_done} of {self.views_total} views not yet written "
                    f"(state {self.state}; teacher-cache --resume finishes it)")
        return f"OK: {head} (all {self.views_total} views, state {self.state})"


def _level_arrays(cache: TeacherCache) -> list[str]:
    """Per-view arrays in checksum order: P3/features, P3/mask, P4/features, ..."""
    return [f"{lv.name}/{kind}" for lv in cache.levels for kind in ("features", "mask")]


def verify_cache(path: str, *, storage_options: dict | None = None, progress: Progress | None = None) -> VerifyReport:
    """Read back every done view of the cache at ``path`` (Zarr, URL or HDF5) and check it.

    Returns a ``VerifyReport`` listing each rejected view once, with every fault found in it. Views not yet
    written are counted, not checked. Raises CacheFormatError when ``path`` is not a readable cache.
    """
    progress = progress or NullProgress()
    cache = TeacherCache(path, require_complete=False, storage_options=storage_options)
    backend = cache.backend
    names = _level_arrays(cache)
    where = {(int(b), int(r)): k for k, (b, r) in enumerate(zip(cache.bucket, cache.row))}
    report = VerifyReport(str(path), str(cache.attrs.get("state")), len(cache), 0)
    done = {b.name: backend.array(f"buckets/{b.name}/done")[...].astype(bool) for b in cache.buckets}
    report.views_done = int(sum(d.sum() for d in done.values()))
    progress.start("verify", report.views_done, unit="view")
    for b_index, bucket in enumerate(cache.buckets):
        prefix = f"buckets/{bucket.name}"
        arrays = {n: backend.array(f"{prefix}/{n}") for n in names}
        crc_name = f"{prefix}/crc"
        stored = {n: backend.stored_chunks(f"{prefix}/{n}") for n in [*names, "crc"]}
        crcs = backend.array(crc_name)[...]
        scales = ({lv.name: backend.array(f"{prefix}/{lv.name}/scale") for lv in cache.levels}
                  if cache.dtype in SCALED_DTYPES else None)
        for row in np.flatnonzero(done[bucket.name]).tolist():
            problems = []
            if stored["crc"] is not None and backend.chunk_key(crc_name, row) not in stored["crc"]:
                problems.append(("crc", MISSING))
            for j, n in enumerate(names):
                if stored[n] is not None and backend.chunk_key(f"{prefix}/{n}", row) not in stored[n]:
                    problems.append((n, MISSING))
                    continue
                level, kind = n.split("/")
                try:
                    values = arrays[n][row]
                    scale = scales[level][row] if scales is not None and kind == "features" else None
                except (ValueError, RuntimeError, OSError):  # wrong size (raw), codec failure (zstd, blosc), I/O
                    problems.append((n, UNREADABLE))
                    continue
                if view_crc(values, scale) != int(crcs[row, j]):
                    problems.append((n, CHECKSUM))
            if problems:
                k = where[(b_index, row)]
                report.faults.append(ViewFault(k, int(cache.image_id[k]), VIEW_NAMES[int(cache.view[k])], bucket.name,
                                               row, tuple(problems)))
            progress.update(1)
    progress.stop()
    report.faults.sort(key=lambda f: f.index)
    return report
