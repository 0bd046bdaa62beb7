"""Names of files beside an output: a temporary file or a lock named after it, kept within what a file system
accepts in one part of a path; and the file, if any, standing where an output's folder must be."""

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


def file_in_the_way(path: Path) -> Path | None:
    """The nearest of ``path``'s folders that exists, when it is a file rather than a folder (``model.pt`` for
    ``model.pt/x.pt``): nothing can be made below it. None when that folder is one."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None
