"""Checking a cache against itself: every view recorded as done has all its arrays, each matching its checksum.

The writer stores, per view, a CRC-32 of each feature and mask array's bytes as written (``buckets/<HxW>/crc``,
level order, features then mask) before it sets the view's ``done`` flag, and one of each index and teacher-head
array in the root's ``checksums``. ``verify_cache`` reads every done view and those arrays back and compares. A
view is rejected when one of its chunks is missing from the store, cannot be decoded, or decodes to bytes of
another checksum. ``teacher-cache --resume`` rewrites exactly the views
rejected here (it clears their ``done`` flags first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from frs_cli.cache.backend import open_backend
from frs_cli.cache.checksum import damaged_arrays, view_crc
from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.cache.reader import (
    attribute_kind_faults,
    contradiction_faults,
    faults_text,
    name_faults,
    read_index,
    required_cache_arrays,
    rewrite_hint,
)
from frs_cli.cache.schema import view_name
from frs_cli.files import plural
from frs_cli.lock import describe, live_holder
from frs_cli.progress import NullProgress, Progress

MISSING, UNREADABLE, CHECKSUM = "missing", "unreadable", "checksum mismatch"


@dataclass(frozen=True)
class ViewFault:
    """One rejected view: where it is, and what is wrong with which of its arrays."""

    index: int  # position in the cache index (``index/*`` arrays)
    image_id: int
    view: str  # its name: "orig", "hflip", or one at another short side ("hflip@640")
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
    missing_arrays: list[str] = field(default_factory=list)  # arrays the format requires that are not there
    damaged_arrays: list[str] = field(default_factory=list)  # index or teacher-head arrays of another checksum
    attribute_faults: list[str] = field(default_factory=list)  # root attributes the arrays contradict
    # index or teacher-head arrays the writer recorded no checksum for (a cache from before it did): not checked
    unchecked: list[str] = field(default_factory=list)
    kind: str = "zarr"  # the store: "zarr" or "hdf5" (what repairs it differs)

    @property
    def ok(self) -> bool:
        """Every array the format requires is there, every view is written and intact, and the cache is marked
        complete, as readers require (an empty cache is not OK: it holds nothing to distill from)."""
        return (not self.faults and not self.missing_arrays and not self.damaged_arrays and not self.attribute_faults
                and self.views_total > 0
                and self.views_done == self.views_total and self.state == "complete")

    def repair(self) -> str:
        """What repairs this cache, as a command to run."""
        if self.kind == "hdf5":
            return ("not repairable in place: repair the Zarr cache it was exported from with frs teacher-cache "
                    f"--pipeline RECIPE --out ZARR --resume, then run frs cache export ZARR {self.path} again")
        holder = live_holder(self.path)
        if holder is not None:  # a teacher-cache job holds it now: its --resume may be this very repair
            return f"a job holds the cache now, {describe(holder)}: wait for it to finish, then verify again"
        return f"frs teacher-cache --pipeline RECIPE --out {self.path} --resume rewrites them"

    def summary(self) -> str:
        """One line: what was checked and what came out."""
        if self.state == "creating":  # its writer stopped before it recorded the attributes readers need
            return (f"cache {self.path}: its writer stopped while creating it: no view was checked; run teacher-cache "
                    "again to recreate it")
        if self.views_total == 0:
            return (f"cache {str(self.path)!r}: holds no views (its split has no images; state {self.state}): nothing to "
                    "distill from; cache a split with images")
        if self.missing_arrays:
            shown = ", ".join(self.missing_arrays[:3]) + (", ..." if len(self.missing_arrays) > 3 else "")
            n = len(self.missing_arrays)
            return (f"cache {self.path}: {plural(n, 'array')} the format requires {'is' if n == 1 else 'are'} "
                    f"missing ({shown}); {self.repair()}")
        if any(n.startswith("index/") for n in self.damaged_arrays):
            return (f"cache {self.path}: its index does not match its checksums ("
                    f"{', '.join(self.damaged_arrays)}): no view was checked; {self.repair()}")
        if self.attribute_faults:
            return (f"cache {self.path}: its attributes do not match its arrays ({faults_text(self.attribute_faults)}): "
                    "no view was checked; its attributes "
                    f"were edited or damaged, which --resume does not repair: {rewrite_hint(self.path, self.kind)}")
        head = f"cache {self.path}: {self.views_done - len(self.faults)} of {self.views_done} written views intact"
        if self.damaged_arrays:
            head += (f"; {len(self.damaged_arrays)} teacher-head arrays do not match their checksums "
                     f"({', '.join(self.damaged_arrays[:3])})")
        if self.faults or self.damaged_arrays:
            return f"{head}, {len(self.faults)} missing or corrupt ({self.repair()})"
        if self.views_done < self.views_total or self.state != "complete":
            holder = None if self.kind == "hdf5" else live_holder(self.path)
            finish = ("re-export it from a complete Zarr cache" if self.kind == "hdf5"
                      else f"still being written by {describe(holder)}" if holder is not None
                      else f"frs teacher-cache --pipeline RECIPE --out {self.path} --resume finishes it")
            if self.views_done == self.views_total:  # every view written, the cache not marked complete
                return f"{head}, all {self.views_total} views, but not marked complete (state {self.state}; {finish})"
            if self.state == "complete":  # marked complete by its writer: flags it set are gone, not yet to come
                return (f"{head}; the cache is marked complete, but {self.views_total - self.views_done} of "
                        f"{self.views_total} views are not marked written (a done-flag chunk is lost; "
                        f"{self.repair()})")
            return (f"{head}; {self.views_total - self.views_done} of {self.views_total} views not yet written "
                    f"(state {self.state}; {finish})")
        unchecked = ""
        if self.unchecked:
            unchecked = (f"; its {plural(len(self.unchecked), 'index and teacher-head array')} carry no checksums (a "
                         "cache written before frs recorded them), so they were not checked: writing the cache "
                         "again gives them checksums")
        return f"OK: {head} (all {self.views_total} views, state {self.state}){unchecked}"


def _level_arrays(attrs: dict) -> list[str]:
    """Per-view arrays in checksum order: P3/features, P3/mask, P4/features, ..."""
    return [f"{lv['name']}/{kind}" for lv in attrs["levels"] for kind in ("features", "mask")]


def verify_cache(path: str, *, storage_options: dict | None = None, progress: Progress | None = None) -> VerifyReport:
    """Check that the cache at ``path`` (Zarr, URL or HDF5) holds every array its format requires, then read
    back every done view and check it.

    Returns a ``VerifyReport`` listing the missing arrays and each rejected view once, with every fault found
    in it. Views not yet written are counted, not checked; without its index no view is checked. Raises
    CacheFormatError when ``path`` is not a readable cache.
    """
    backend = open_backend(str(path), storage_options)
    attrs = dict(backend.attrs)
    views = attrs.get("num_views")  # -1 where it is no count (attribute_kind_faults names it)
    report = VerifyReport(str(path), str(attrs.get("state")), views if type(views) is int else -1, 0, kind=backend.kind)
    if report.state == "creating":  # its writer stopped before it recorded the rest (``summary`` says so)
        return report
    report.attribute_faults = attribute_kind_faults(attrs)
    if report.attribute_faults:  # no other attribute can be read as what it should be
        return report
    required = required_cache_arrays(attrs)  # builds the teacher head for its parameter names: once
    missing = [n for n in required if not backend.has(n)]
    report.attribute_faults = name_faults(backend, attrs, missing)
    if report.attribute_faults:  # an edited name: its arrays are there under the old one, not missing
        return report
    report.missing_arrays = missing
    # the index, read once: for its checksums, the attributes that describe it, and where each view is
    index = {} if any(n.startswith("index/") for n in missing) else read_index(backend)
    report.damaged_arrays = damaged_arrays(backend, attrs, skip=set(missing),
                                           read={f"index/{n}": a for n, a in index.items()})
    recorded = attrs.get("checksums", {})
    report.unchecked = [n for n in required if n.startswith(("index/", "teacher_head/"))
                        and n not in recorded and n not in report.missing_arrays]
    if any(n.startswith("index/") for n in [*report.missing_arrays, *report.damaged_arrays]):
        return report
    report.attribute_faults = contradiction_faults(backend, attrs, index)  # of their kinds: checked above
    if not report.attribute_faults:
        _check_views(report, backend, attrs, index, set(missing), progress or NullProgress())
    return report


def _check_views(report: VerifyReport, backend, attrs: dict, index: dict[str, np.ndarray], missing: set[str],
                 progress: Progress) -> None:
    """Read back every view of the cache that its ``done`` flags mark written and add each one whose arrays are
    missing, unreadable or of another checksum to ``report.faults``. The attributes agree with the arrays and the
    index (``index``: its arrays by name) is intact; ``missing``: the required arrays the store lacks."""
    names = _level_arrays(attrs)
    levels = [lv["name"] for lv in attrs["levels"]]
    scaled = FeatureEncoding(attrs["storage"]["dtype"]).scaled
    where = {(int(b), int(r)): k for k, (b, r) in enumerate(zip(index["bucket"], index["row"]))}
    report.views_total = len(index["image_id"])
    done = {b["name"]: (backend.array(f"buckets/{b['name']}/done")[...].astype(bool)
                        if f"buckets/{b['name']}/done" not in missing else np.zeros(b["count"], dtype=bool))
            for b in attrs["buckets"]}
    report.views_done = int(sum(d.sum() for d in done.values()))
    progress.start("verify", report.views_done, unit="view")
    for b_index, bucket in enumerate(b["name"] for b in attrs["buckets"]):
        prefix = f"buckets/{bucket}"
        present = [n for n in [*names, "crc"] if f"{prefix}/{n}" not in missing]
        arrays = {n: backend.array(f"{prefix}/{n}") for n in present}
        crc_name = f"{prefix}/crc"
        stored = {n: backend.stored_chunks(f"{prefix}/{n}") for n in present}
        crcs = arrays["crc"][...] if "crc" in arrays else None
        scale_names = {lv: f"{prefix}/{lv}/scale" for lv in levels}
        scales = ({lv: None if n in missing else backend.array(n) for lv, n in scale_names.items()}
                  if scaled else None)
        scale_stored = ({lv: backend.stored_chunks(n) for lv, n in scale_names.items() if n not in missing}
                        if scaled else {})
        for row in np.flatnonzero(done[bucket]).tolist():
            problems = []
            crc_gone = crcs is None or (stored["crc"] is not None and backend.chunk_key(crc_name, row) not in stored["crc"])
            if crc_gone:  # its arrays cannot be checked: zarr reads the absent checksums as zeros
                problems.append(("crc", MISSING))
            for j, n in enumerate(names):
                gone = stored.get(n) is not None and backend.chunk_key(f"{prefix}/{n}", row) not in stored[n]
                if n not in arrays or gone:
                    problems.append((n, MISSING))
                    continue
                level, kind = n.split("/")
                if kind == "features" and scales is not None and (
                        scales[level] is None or (scale_stored[level] is not None and backend.chunk_key(
                            scale_names[level], row) not in scale_stored[level])):  # zarr would read zeros
                    problems.append((f"{level}/scale", MISSING))
                    continue
                try:
                    values = arrays[n][row]
                    scale = scales[level][row] if scales is not None and kind == "features" else None
                except (ValueError, RuntimeError, OSError):  # wrong size (raw), codec failure (zstd, blosc), I/O
                    problems.append((n, UNREADABLE))
                    continue
                if not crc_gone and view_crc(values, scale) != int(crcs[row, j]):
                    problems.append((n, CHECKSUM))
            if problems:
                k = where[(b_index, row)]
                report.faults.append(ViewFault(k, int(index["image_id"][k]), view_name(index["view"][k], attrs["views"]),
                                               bucket, row, tuple(problems)))
            progress.update(1)
    progress.stop()
    report.faults.sort(key=lambda f: f.index)
