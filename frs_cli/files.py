"""Writing files so that a reader (or a killed run) never sees half of one: temp file beside it, then rename;
and turning the operating system's write failures (a full disk above all) into one clear error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from frs_cli.errors import ConfigError, StorageError
from frs_cli.names import NAME_MAX, file_in_the_way, sibling

_FULL = {errno.ENOSPC: "the disk is full (no space left on device)", errno.EDQUOT: "the disk quota is exceeded"}
# where no amount of free space helps: the callers' hints (free space, run again) do not apply
_DENIED = {errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there",
           errno.EROFS: "the disk there is read-only"}
_DENIED_HINT = {errno.EROFS: "write to a folder on a writable disk"}


def storage_error(exc: OSError, target: str, hint: str | None = None) -> StorageError:
    """A one-line ``StorageError`` for ``exc`` raised while writing ``target`` (the file, if known, is named);
    ``hint`` unless writing there is denied, which gets its own."""
    at = f" at {exc.filename}" if getattr(exc, "filename", None) else ""
    if exc.errno in _DENIED:
        return StorageError(f"{target}: {_DENIED[exc.errno]}{at}",
                            hint=_DENIED_HINT.get(exc.errno, "write to a folder you may write to"))
    if exc.errno == errno.ENOENT:  # a file that cannot be made in a folder that exists: not a disk (/proc)
        return StorageError(f"{target}: no file can be made there{at}", hint="write to a folder on a disk")
    if exc.errno == errno.ENAMETOOLONG:  # no amount of free space helps either
        return name_too_long(exc, target)
    what = _FULL.get(exc.errno) or f"writing failed ({exc.strerror or exc})"
    return StorageError(f"{target}: {what}{at}", hint=hint)


def name_too_long(exc: OSError, target: str | None = None) -> StorageError:
    """The one line for a path the file system refuses as too long (``ENAMETOOLONG``), naming its longest part."""
    name = str(exc.filename or target or "")
    longest = max(Path(name).parts, key=lambda part: len(part.encode()), default="")
    return StorageError(f"{target or name}: a name in the path is longer than the file system accepts "
                        f"({len(longest.encode())} bytes, where most accept at most {NAME_MAX})",
                        hint="choose a shorter name")


def free_bytes(path: str | Path) -> int | None:
    """Bytes free on the file system that ``path`` (which may not exist yet) would be written to: that of its
    nearest existing ancestor; None when it cannot be told (also a file system of no size, as ``/proc``: no
    disk, so "0 B free" would be the wrong reason to give)."""
    try:
        import shutil

        usage = shutil.disk_usage(_nearest_existing(Path(path).absolute()))
    except OSError:
        return None
    return usage.free if usage.total else None


def _nearest_existing(p: Path) -> Path:
    """``p`` or the nearest of its ancestors that exists."""
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_can_create(path: str | Path, hint: str | None = None, *, target: str | None = None,
                     folder: str | Path | None = None) -> None:
    """``storage_error`` naming ``target`` (else ``path``) when no file can be made in ``folder`` (else the nearest
    existing folder above ``path``): no permission, a read-only disk, ``/proc``. For a job to refuse before its long
    part. Nothing is left behind."""
    folder = _nearest_existing(Path(path).absolute().parent) if folder is None else folder
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".frs-probe-")
    except OSError as exc:
        exc.filename = None  # the probe's random name is nobody's business
        raise storage_error(exc, target or str(path), hint) from exc
    os.close(fd)
    os.unlink(probe)


def size_text(n: float) -> str:
    """``n`` bytes for people: ``"2.7 TB"``, ``"86.4 MB"`` (powers of 1000, one decimal)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def plural(n: int, noun: str) -> str:
    """``1 view``, ``2 views``, ``2 processes``, ``2 batches``, ``2 epochs``: a count and its noun."""
    es = noun.endswith(("s", "x", "sh")) or noun.endswith("ch") and not noun.endswith("epoch")  # its ch is a k
    return f"{n} {noun}{'' if n == 1 else 'es' if es else 's'}"


def sizes_apart(need: int, free: int) -> tuple[str, str]:
    """``size_text`` of a size needed and the space free, as bytes when they would read alike ("100.0 GB" twice)."""
    shown = (size_text(need), size_text(free))
    return shown if shown[0] != shown[1] else (f"{need:,} bytes", f"{free:,} bytes")


def missing_file(path: str | Path) -> str:
    """Why there is no file to read at ``path``, to end an error line ("..., but it does not exist"):
    ``"is a directory"``, ``"is a symbolic link to 'T', which does not exist"`` (a link copied without what it
    points at, which ``ls`` still lists) or ``"does not exist"``."""
    path = Path(path)
    if path.is_dir():
        return "is a directory"
    if path.is_symlink():
        return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    return "does not exist"


def check_output_file(path: str | Path, what: str, suffix: str | None = None, *, probe: bool = True) -> None:
    """ConfigError (one line naming ``path``) when ``path``, the file ``what`` is to write, is an existing
    directory, lies below a file (``model.pt/x.pt``), or does not end in ``suffix`` (the format written); its
    folder is made, StorageError when it cannot be or (``probe``) when no file can be made in it (``/proc``, no
    permission, a read-only disk). A command calls it before its work, so nothing is computed for a file that cannot
    be written or would be misnamed."""
    if str(path) == "-":  # not a file named "-" that the user then looks for on stdout
        raise ConfigError(f"{what}: expected a file path, got '-'", hint="to write to standard output, give /dev/stdout")
    if Path(path).is_dir():
        raise ConfigError(f"{what}: expected a file path, got the directory {str(path)!r}")
    blocker = file_in_the_way(Path(path))
    if blocker is not None:
        raise ConfigError(f"{what}: expected a folder at {str(blocker)!r} to hold {str(path)!r}, got a file")
    if suffix is not None and Path(path).suffix.lower() != suffix:
        raise ConfigError(f"{what}: expected a {suffix} file (the format written), got {str(path)!r}")
    folder = Path(os.path.realpath(path)).parent
    try:  # made now, so that a folder the system makes none in (/proc) is refused before the work, not after
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _DENIED:
            raise storage_error(exc, f"{what} {str(path)!r}") from exc
        raise StorageError(f"{what} {str(path)!r}: cannot make the folder {str(folder)!r} ({exc.strerror})",
                           hint="write to a folder on a writable disk") from exc
    if probe and written_through(path) is None:  # a new or regular file: replaced by a temporary file made beside it
        check_can_create(path, target=f"{what} {str(path)!r}", folder=folder)


@contextlib.contextmanager
def storage_errors(target: str, hint: str | None = None) -> Iterator[None]:
    """Inside the block, an ``OSError`` becomes ``storage_error(exc, target, hint)``."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, target, hint) from exc


@contextlib.contextmanager
def atomic_path(path: str | Path, hint: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place if the block succeeds, remove it if not.

    An ``OSError`` in the block or the rename (a full disk) becomes ``StorageError`` naming ``path``; whatever
    was under ``path`` before stays as it was. A directory at ``path`` is ``ConfigError`` before the block runs.
    """
    path = Path(path)
    check_output_file(path, "output", probe=False)  # the temporary file below is the probe
    target = written_through(path)
    if target is not None:  # a device or a pipe (/dev/stdout): written into, never replaced
        with tempfile.TemporaryDirectory() as folder, _errors_naming(path, Path(folder) / "out", hint):
            tmp = Path(folder) / "out"
            yield tmp
            with open(tmp, "rb") as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        return
    real = Path(os.path.realpath(path)) if path.is_symlink() else path  # a link stays one: its file is replaced
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a folder that cannot be made (no permission, /proc) is one line
        if exc.errno in _DENIED:
            raise storage_error(exc, str(path), hint) from exc
        raise StorageError(f"{path}: cannot make the folder {str(real.parent)!r} ({exc.strerror})",
                           hint="write to a folder on a writable disk") from exc
    tmp = sibling(real, ".", f".{os.getpid()}.tmp")
    try:
        with _errors_naming(path, tmp, hint):
            yield tmp
            os.replace(tmp, real)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # only still there when the block failed


@contextlib.contextmanager
def _errors_naming(path: Path, tmp: Path, hint: str | None) -> Iterator[None]:
    """``storage_errors(str(path), hint)``, the temporary file ``tmp`` left unnamed: the user gave ``path``, never
    ``tmp`` (``/x/.m.png.8039.tmp``), and the line names ``path`` already."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and str(exc.filename) == str(tmp):
            exc.filename = None
        raise storage_error(exc, str(path), hint) from exc


def written_through(path: str | Path) -> Path | None:
    """``path`` when it is (or links to) something other than a regular file, a device or a pipe such as
    ``/dev/stdout``, which an output is written into; None for a regular file or a new one, which is replaced
    whole (renaming a file over ``/dev/stdout`` would replace the device entry itself)."""
    try:
        mode = os.stat(path).st_mode  # follows links, /proc's links to pipes included
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else Path(path)


def write_json(path: str | Path, payload, **dumps_kwargs) -> None:
    """``json.dumps(payload, **dumps_kwargs)`` written atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, **dumps_kwargs), encoding="utf-8")
