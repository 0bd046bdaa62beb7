"""Writing files so that a reader (or a killed run) never sees half of one: temp file beside it, then rename."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds, remove it if not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # only still there when the block failed


def write_json(path: str | Path, payload, **dumps_kwargs) -> None:
    """``json.dumps(payload, **dumps_kwargs)`` written atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, **dumps_kwargs), encoding="utf-8")
