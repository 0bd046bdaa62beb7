"""Positional reads (``os.pread``) of one row of an uncompressed Zarr v3 array in a local directory.

zarr-python runs every store call of a process through one event-loop thread, and reading one inner chunk of a
shard costs it two calls (the shard's index, then the chunk's byte range) plus the codec pipeline. A cache
view is 10-15 such arrays, so on a loaded CPU most of a view's read time was that machinery, not bytes.
For the arrays a cache actually holds (``bytes`` codec only, no compressor; rows sharded one per inner chunk,
or plain chunks of whole rows) the bytes of row ``r`` sit at a fixed place in one file, so one ``pread`` reads
them. The layout read here is the Zarr v3 specification's (``zarr.json``, the ``sharding_indexed`` codec with
its index of ``(offset, nbytes)`` uint64 pairs), so plain zarr keeps reading the same store; any array this
module does not handle (a compressor, a big-endian or URL store, another index layout) is read through zarr
instead (``DirectArray.open`` returns None).

A shard's index is read once per process and kept: one ``int64`` offset per row (about 8 bytes per view and
array). Reads are checked only for their length here; the reader compares each view with its stored CRC-32.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frs_cli.errors import CacheFormatError

_EMPTY = np.uint64(2**64 - 1)  # the sharding index's mark of a chunk that was never written (fill value)
_UNKNOWN, _FILL = -1, -2  # offsets not read yet; rows whose chunk holds the fill value


@dataclass
class ReadCounts:
    """What a process's direct reads did: preads of data, shard-index reads, files opened, bytes read."""

    data_reads: int = 0
    index_reads: int = 0
    opens: int = 0
    bytes_read: int = 0


COUNTS = ReadCounts()  # per process (each DataLoader worker has its own copy)


def _numpy_dtype(meta: dict) -> np.dtype | None:
    name = meta.get("data_type")
    if not isinstance(name, str) or name in ("bool",) or name.startswith(("complex", "r", "string", "bytes")):
        return None
    try:
        return np.dtype(name).newbyteorder("<")
    except TypeError:
        return None


def _little_bytes(codecs) -> bool:
    """Whether ``codecs`` is exactly the ``bytes`` codec, little-endian (or without an endianness: 1-byte types)."""
    if not isinstance(codecs, list) or len(codecs) != 1 or codecs[0].get("name") != "bytes":
        return False
    return (codecs[0].get("configuration") or {}).get("endian", "little") == "little"


def _key(meta: dict, index: int, ndim: int) -> str | None:
    """The stored key (relative to the array) of the chunk or shard at ``(index, 0, ..., 0)``."""
    enc = meta.get("chunk_key_encoding") or {}
    sep = (enc.get("configuration") or {}).get("separator")
    coords = [str(index)] + ["0"] * (ndim - 1)
    if enc.get("name") == "default":
        return "c" + (sep or "/") + (sep or "/").join(coords)
    if enc.get("name") == "v2":
        return (sep or ".").join(coords)
    return None


def _pread_into(fd: int, buffer: bytearray, offset: int) -> int:
    data = os.pread(fd, len(buffer), offset)
    buffer[: len(data)] = data
    return len(data)


class DirectArray:
    """One row at a time of a local, uncompressed Zarr v3 array whose outer chunks hold whole rows.

    ``a[row]`` is the row as a numpy array (``shape[1:]``, the array's dtype); anything else (``a[...]``,
    slices) goes to the zarr array. Build with ``DirectArray.open``.
    """

    def __init__(self, directory: Path, meta: dict, dtype: np.dtype, rows_per_file: int, sharded: bool,
                 index_at_end: bool, name: str | None = None):
        self.directory = directory
        self.path = name or str(directory)  # as zarr's Array.path: the name inside the group
        self.shape = tuple(int(s) for s in meta["shape"])
        self.dtype = dtype
        self.row_shape = self.shape[1:]
        self.row_nbytes = int(np.prod(self.row_shape, dtype=np.int64)) * dtype.itemsize
        self.rows_per_file = rows_per_file
        self.sharded = sharded
        self.index_at_end = index_at_end
        self.fill_value = meta.get("fill_value", 0)
        self._meta = meta
        self._offsets: np.ndarray | None = None  # (rows,) int64 byte offset of each row in its file, read lazily
        self._zarr = None

    @classmethod
    def open(cls, directory: str | Path, name: str | None = None) -> DirectArray | None:
        """The array whose ``zarr.json`` is in ``directory`` (``name``: its path inside the cache, for messages),
        or None when its layout is not one read here."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
            return None
        dtype, shape = _numpy_dtype(meta), meta.get("shape") or []
        grid = meta.get("chunk_grid") or {}
        outer = (grid.get("configuration") or {}).get("chunk_shape")
        if dtype is None or not shape or grid.get("name") != "regular" or not outer or list(outer[1:]) != shape[1:]:
            return None
        codecs = meta.get("codecs") or []
        if _key(meta, 0, len(shape)) is None:
            return None
        if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
            conf = codecs[0].get("configuration") or {}
            inner = conf.get("chunk_shape") or []
            index_codecs = [c.get("name") for c in conf.get("index_codecs") or []]
            endian = ((conf.get("index_codecs") or [{}])[0].get("configuration") or {}).get("endian", "little")
            if list(inner) != [1, *shape[1:]] or not _little_bytes(conf.get("codecs")) \
                    or index_codecs != ["bytes", "crc32c"] or endian != "little":
                return None
            return cls(directory, meta, dtype, int(outer[0]), True, conf.get("index_location", "end") == "end", name)
        if _little_bytes(codecs):
            return cls(directory, meta, dtype, int(outer[0]), False, True, name)
        return None

    # -- zarr for everything but one row ------------------------------------------------------------------
    @property
    def zarr(self):
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_array(str(self.directory), mode="r")
        return self._zarr

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.read_row(int(key))
        return self.zarr[key]

    def __getstate__(self) -> dict:  # offsets stay behind: a new process reads the indexes it needs again
        return {**self.__dict__, "_offsets": None, "_zarr": None}

    # -- the direct path ------------------------------------------------------------------------------------
    def _file(self, row: int) -> Path:
        return self.directory / _key(self._meta, row // self.rows_per_file, len(self.shape))

    def _fill(self) -> np.ndarray:
        return np.full(self.row_shape, self.fill_value or 0, dtype=self.dtype)

    def read_row(self, row: int) -> np.ndarray:
        """Row ``row`` (``shape[1:]``), read with one ``pread`` (plus, once per shard and process, its index)."""
        if not 0 <= row < self.shape[0]:
            raise CacheFormatError(f"cache array {self.path!r}: expected a row in 0..{self.shape[0] - 1}, got {row}")
        if self._offsets is None:
            self._offsets = np.full(self.shape[0], _UNKNOWN, dtype=np.int64)
        path = self._file(row)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return self._fill()  # zarr's meaning of a chunk that is not stored
        COUNTS.opens += 1
        try:
            if self._offsets[row] == _UNKNOWN:
                self._read_index(fd, row)
            offset = int(self._offsets[row])
            if offset == _FILL:
                return self._fill()
            data = bytearray(self.row_nbytes)  # writable, so that torch.from_numpy takes it as is
            got = os.preadv(fd, [data], offset) if hasattr(os, "preadv") else _pread_into(fd, data, offset)
        finally:
            os.close(fd)
        COUNTS.data_reads += 1
        COUNTS.bytes_read += got
        if got != self.row_nbytes:
            raise CacheFormatError(f"cache file {str(path)!r}: expected {self.row_nbytes} bytes of row {row} at "
                                   f"byte {offset}, the file ends after {got}", hint="frs cache verify lists the damage")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.row_shape)

    def _read_index(self, fd: int, row: int) -> None:
        """Fill the offsets of every row held by the file open as ``fd`` (the one holding ``row``)."""
        first = row // self.rows_per_file * self.rows_per_file
        rows = np.arange(first, min(first + self.rows_per_file, self.shape[0]))
        if not self.sharded:  # a plain chunk: its rows one after another
            self._offsets[rows] = (rows - first) * self.row_nbytes
            return
        n = self.rows_per_file
        index_nbytes = 16 * n + 4  # (offset, nbytes) uint64 per inner chunk, then its CRC-32C
        size = os.fstat(fd).st_size
        raw = os.pread(fd, index_nbytes, size - index_nbytes if self.index_at_end else 0)
        COUNTS.index_reads += 1
        COUNTS.bytes_read += len(raw)
        if len(raw) != index_nbytes:
            raise CacheFormatError(f"cache file {str(self._file(row))!r}: expected a shard index of {index_nbytes} "
                                   f"bytes, the file holds {size}")
        pairs = np.frombuffer(raw[:-4], dtype="<u8").reshape(n, 2)[: len(rows)]
        empty = (pairs[:, 0] == _EMPTY) & (pairs[:, 1] == _EMPTY)
        offsets, lengths = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)  # empty ones wrap to -1
        bad = ~empty & ((lengths != self.row_nbytes) | (offsets < 0) | (offsets > size - self.row_nbytes))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            offset, length = int(pairs[i, 0]), int(pairs[i, 1])
            where = (f"puts row {first + i} at byte {offset} ({length} bytes)" if offset < size and length <= size
                     else f"does not locate row {first + i}")  # a truncated file's "index" is other bytes: no numbers
            raise CacheFormatError(f"cache file {str(self._file(row))!r}: is truncated or corrupt: its shard index "
                                   f"{where} in a file of {size} bytes, expected {self.row_nbytes} bytes inside it",
                                   hint="frs cache verify lists the damage")
        self._offsets[rows] = np.where(empty, _FILL, offsets)
