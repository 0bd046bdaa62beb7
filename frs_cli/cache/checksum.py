"""The CRC-32 the cache stores for each array of a view (zlib's polynomial, as ``zlib.crc32`` computes it).

ISA-L's implementation (the ``isal`` package) computes the same value an order of magnitude faster (about
50 GB/s against zlib's 2-4 GB/s on one core here), which makes checking every view as it is read nearly free;
without it, zlib's is used.
"""

from __future__ import annotations

import numpy as np

try:  # the same CRC-32 as zlib.crc32, vectorised
    from isal.isal_zlib import crc32 as _crc32

    IMPLEMENTATION = "isal"
except ImportError:  # pragma: no cover - depends on what is installed
    from zlib import crc32 as _crc32

    IMPLEMENTATION = "zlib"


def crc32(data, value: int = 0) -> int:
    """CRC-32 of a bytes-like object, continued from ``value``: equal to ``zlib.crc32(data, value)``."""
    return _crc32(data, value)


def view_crc(values: np.ndarray, scale: np.ndarray | None = None) -> int:
    """CRC-32 of one view's stored array (features or mask), continued over its scales when it has them: the
    value the writer stores in ``buckets/<bucket>/crc``."""
    values = np.ascontiguousarray(values)
    crc = crc32(memoryview(values).cast("B") if values.size else b"")
    return crc if scale is None else crc32(memoryview(np.ascontiguousarray(scale)).cast("B"), crc)


def mismatched(attrs: dict, arrays: dict[str, np.ndarray]) -> list[str]:
    """The names of ``arrays`` (index or teacher-head arrays of a cache, by path, as read) whose bytes differ from
    the CRC-32 the writer recorded in ``attrs["checksums"]``; an array it recorded none for (a cache from before
    them) is not compared."""
    recorded = attrs.get("checksums", {})
    return [n for n, values in arrays.items() if n in recorded and view_crc(values) != recorded[n]]


def damaged_arrays(backend, attrs: dict, skip=frozenset(), read: dict[str, np.ndarray] | None = None) -> list[str]:
    """``mismatched`` over every recorded array the cache's store holds, ``skip`` aside. ``backend``: the store
    (``has(name)``, ``array(name)``); ``read``: arrays the caller has read already, by path (not read again)."""
    read = read or {}
    names = [n for n in attrs.get("checksums", {}) if n not in skip and (n in read or backend.has(n))]
    return mismatched(attrs, {n: read[n] if n in read else backend.array(n)[...] for n in names})
