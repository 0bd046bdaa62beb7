"""``frs cache export``: a complete cache copied into one HDF5 file with the same layout.

Groups, arrays (shape, dtype, one chunk per view) and the root attributes are the Zarr cache's; attributes are
stored as JSON text, since HDF5 attributes cannot nest (``cache.backend`` decodes them). The file is written
under a temporary name beside the target and renamed at the end, so ``OUT.h5`` is either absent or whole.
Training reads either store through the same ``TeacherCache``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from frs_cli.cache.reader import TeacherCache
from frs_cli.cache.store import is_hdf5, is_url
from frs_cli.cache.verify import verify_cache
from frs_cli.errors import CacheFormatError, ConfigError, StorageError
from frs_cli.files import atomic_path, check_can_create, check_output_file, free_bytes, sizes_apart
from frs_cli.progress import NullProgress, Progress

ROWS_PER_COPY = 64  # views copied per read/write call: bounded memory whatever the cache size


@dataclass
class ExportSummary:
    source: str
    path: str
    arrays: int
    views: int
    bytes: int  # size of the written file


def export_hdf5(source: str, out: str | Path, *, storage_options: dict | None = None,
                progress: Progress | None = None) -> ExportSummary:
    """Copy the complete cache at ``source`` (Zarr path or URL) to the HDF5 file ``out`` (a local path).

    The source is verified first (``verify_cache``). Raises CacheFormatError when ``source`` is not a complete,
    intact cache (nothing is written then), ConfigError for a bad ``out``,
    StorageError when writing fails (nothing is left under ``out`` then).
    """
    import h5py

    out = str(out)
    if is_url(out) or not is_hdf5(out):
        raise ConfigError(f"cache export: expected a local .h5 or .hdf5 file name for OUT, got {out!r}")
    check_output_file(out, "cache export OUT", probe=False)  # probed below, once the cache is known to exist
    progress = progress or NullProgress()
    cache = TeacherCache(source, require_complete=True, storage_options=storage_options)
    if cache.backend.kind != "zarr":
        raise CacheFormatError(f"cache export: expected a Zarr cache to export, {source!r} is already HDF5")
    arrays = list(cache.backend.walk())
    need, free = sum(int(a.nbytes) for _, a in arrays), free_bytes(out)  # the file holds every array uncompressed
    if free is not None and need > free:  # refused before the verification's full read
        shown = sizes_apart(need, free)
        raise StorageError(f"cache export: {out!r} needs about {shown[0]}, the disk there has {shown[1]} free",
                           hint="free space or export elsewhere")
    check_can_create(out, hint="export elsewhere", target=f"cache export OUT {out!r}")  # before the full read
    report = verify_cache(source, storage_options=storage_options, progress=progress)  # never copy damage
    if not report.ok:
        raise CacheFormatError(f"cache export: expected an intact cache, {report.summary()}; nothing exported")
    total_rows = sum(a.shape[0] for name, a in arrays if name.startswith("buckets/") and a.ndim)
    progress.start("export", total_rows, unit="row")
    with atomic_path(out, hint="free space and run the export again") as tmp, h5py.File(tmp, "w") as f:
        for key, value in cache.attrs.items():
            f.attrs[key] = json.dumps(value)
        for name, arr in arrays:
            chunks = tuple(arr.chunks) if arr.ndim and 0 not in arr.shape else None
            ds = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
            if not name.startswith("buckets/") or arr.ndim == 0:
                ds[...] = arr[...]
                continue
            for start in range(0, arr.shape[0], ROWS_PER_COPY):
                stop = min(start + ROWS_PER_COPY, arr.shape[0])
                ds[start:stop] = arr[start:stop]
                progress.update(stop - start)
    progress.stop()
    return ExportSummary(str(source), out, len(arrays), len(cache), Path(out).stat().st_size)
