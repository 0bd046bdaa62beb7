"""Where a cache lives: local paths and fsspec URLs, and opening Zarr groups there.

A cache path is a local directory (``runs/cache.zarr``) or any URL zarr's fsspec store layer understands
(``file:///data/cache.zarr``, ``memory://cache.zarr``, ``s3://bucket/cache.zarr`` with s3fs installed).
Everything that touches the filesystem by path goes through here, so URLs work wherever paths do.
"""

from __future__ import annotations

import os

import zarr

from frs_cli.cache.schema import FORMAT_NAME, FORMAT_VERSION
from frs_cli.errors import CacheFormatError, ConfigError
from frs_cli.signals import ignore_closed_pipes

HDF5_SUFFIXES = (".h5", ".hdf5")


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL for fsspec (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def is_hdf5(path: str) -> bool:
    """Whether ``path`` names an HDF5 file (by its suffix), the form ``frs cache export`` writes."""
    return str(path).lower().endswith(HDF5_SUFFIXES)


def url_options(path: str, storage_options: dict | None = None) -> dict | None:
    """fsspec options for ``path``: a ``file://`` URL gets ``auto_mkdir`` (zarr writes into new folders)."""
    if not is_url(path):
        return storage_options
    opts = dict(storage_options or {})
    if str(path).startswith("file://"):
        opts.setdefault("auto_mkdir", True)
    return opts


def _fsspec(path: str, storage_options: dict | None):
    try:
        import fsspec
    except ImportError as exc:
        raise ConfigError(f"cache {path!r}: a URL needs fsspec, which is not installed",
                          hint="pip install 'frs[remote]'") from exc
    try:
        return fsspec.core.url_to_fs(path, **(storage_options or {}))
    except ImportError as exc:  # the scheme's own package (s3fs, gcsfs, ...) is missing; fsspec's text names it
        scheme = path.split("://", 1)[0]
        raise ConfigError(f"cache {path!r}: {scheme}:// needs a package that is not installed ({exc})",
                          hint="install it beside frs[remote]") from exc
    except ValueError as exc:  # a scheme fsspec has no filesystem for (a typo, "foo://")
        scheme = path.split("://", 1)[0]
        if scheme in fsspec.available_protocols():
            raise
        raise ConfigError(f"cache {path!r}: expected a local path or a URL of a scheme fsspec knows (file://, "
                          f"s3://, gs://, https://, ...), got {scheme}://") from exc


def exists(path: str, storage_options: dict | None = None) -> bool:
    """Whether anything (a file or a folder) is at ``path``."""
    if not is_url(path):
        from pathlib import Path

        return Path(path).exists()
    fs, inner = _fsspec(path, url_options(path, storage_options))
    return bool(fs.exists(inner))


def open_group(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """``zarr.open_group`` at a local path or URL (``mode`` as zarr's: r, r+, a, w). A local path that is a link to
    a folder not made yet is opened as its target, which a writing mode makes."""
    if is_url(path):
        _fsspec(path, None)  # a clear error when fsspec is missing
        ignore_closed_pipes()  # a connection the server closed is an error fsspec retries or reports, not our end
    elif mode != "r" and os.path.islink(path) and not os.path.exists(path):
        path = os.path.realpath(path)
    return zarr.open_group(path, mode=mode, storage_options=url_options(path, storage_options))


def check_format(path: str, attrs: dict) -> None:
    """CacheFormatError unless ``attrs`` are an frs cache's of a format version this frs reads."""
    if attrs.get("format") != FORMAT_NAME:
        raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found a group without "
                               f"'format: {FORMAT_NAME}'")
    version = attrs.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CacheFormatError(f"cache {path!r}: format version {version} is newer than this frs reads "
                               f"({FORMAT_VERSION})", hint="upgrade frs")


def what_is_there(path: str, exc: Exception) -> str:
    """What stands at ``path`` where a Zarr group was expected and ``exc`` was raised opening it, in words."""
    if not is_url(path):
        from pathlib import Path

        local = Path(path)
        if local.is_file():
            import zipfile

            if zipfile.is_zipfile(local):  # a zipped store: frs reads a Zarr folder or an HDF5 export
                return "a zip file (frs reads a cache as a Zarr folder or its .h5 export: unzip it, and give the folder)"
            return "a file"
        if local.is_dir():
            meta = local / "zarr.json"
            if not meta.exists():
                return "a folder that holds no Zarr group"
            import json

            try:
                node = json.loads(meta.read_text(encoding="utf-8")).get("node_type")
            except (OSError, ValueError, AttributeError):
                return f"a folder whose zarr.json is not readable Zarr metadata (damaged: {meta})"
            return "a Zarr array" if node == "array" else f"a Zarr node ({type(exc).__name__}: {exc})"
    return f"no Zarr group ({type(exc).__name__})"


def open_existing(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group | None:
    """The Zarr cache group at ``path``, None if nothing is there (nor an empty local folder, which a new cache
    may fill); CacheFormatError if it is not a cache."""
    if not exists(path, storage_options):
        return None
    if not is_url(path):
        from pathlib import Path

        if Path(path).is_dir() and not any(Path(path).iterdir()):
            return None
    try:
        group = open_group(path, mode=mode, storage_options=storage_options)
    except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, ValueError, KeyError,
            FileNotFoundError, NotADirectoryError) as exc:
        raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found something else: "
                               f"{what_is_there(path, exc)}") from exc
    check_format(path, dict(group.attrs))
    return group


CODECS = ("none", "zstd", "blosc")  # every chunk compressor a cache may name (the recipe's cache.codec)


def array_codec(arr) -> str:
    """The compressor ``arr`` (a Zarr v3 array or an h5py dataset) stores its chunks with, by name: ``"none"``,
    the ``CODECS`` name of one a cache writes, else the compressor's own name (an HDF5 filter's, such as "gzip")."""
    compressors = getattr(arr, "compressors", None)
    if compressors is None:  # h5py
        return getattr(arr, "compression", None) or "none"
    names = {"ZstdCodec": "zstd", "BloscCodec": "blosc"}
    return "+".join(names.get(type(c).__name__, type(c).__name__) for c in compressors) or "none"


def codec(name: str):
    """Zarr v3 compressor list for a codec name (one of ``CODECS``)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "none":
        return None
    if name == "zstd":
        return [ZstdCodec(level=3)]
    if name == "blosc":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]
    raise CacheFormatError(f"cache codec: expected none, zstd or blosc, got {name!r}")
