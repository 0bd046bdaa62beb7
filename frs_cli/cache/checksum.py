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


def damaged_arrays(backend, attrs: dict, skip=frozenset(), prefix: str = "") -> list[str]:
    """The index and teacher-head arrays of a cache (those named under ``prefix``) whose bytes differ from the
    CRC-32 the writer recorded in ``attrs["checksums"]`` (a cache from before those: none); ``skip`` aside.
    ``backend``: the cache's store (``has(name)``, ``array(name)``)."""
    return [n for n, crc in attrs.get("checksums", {}).items()
            if n.startswith(prefix) and n not in skip and backend.has(n) and view_crc(backend.array(n)[...]) != crc]
