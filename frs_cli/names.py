"""Names of files beside an output: a temporary file or a lock named after it, kept within what a file system
accepts in one part of a path."""

from __future__ import annotations

import hashlib
from pathlib import Path

NAME_MAX = 255  # bytes in one part of a path on the common file systems (ext4, XFS, Btrfs, APFS, NTFS)


def sibling(path: Path, prefix: str, suffix: str) -> Path:
    """``path``'s sibling ``prefix + name + suffix`` (a temporary file, a lock), its name shortened to the start of
    ``path``'s and a digest of the whole where it would pass ``NAME_MAX``: a name near the limit, which the file
    system accepts, still gets its temporary file and lock; the same ``path`` always gets the same sibling."""
    name = f"{prefix}{path.name}{suffix}"
    if len(name.encode()) <= NAME_MAX:
        return path.with_name(name)
    digest = "~" + hashlib.sha256(path.name.encode()).hexdigest()[:12]
    room = NAME_MAX - len(f"{prefix}{digest}{suffix}".encode())
    head = path.name.encode()[:max(room, 0)].decode(errors="ignore")
    return path.with_name(f"{prefix}{head}{digest}{suffix}")
