"""One writer per output: a lock file beside an output path that names its holder.

``output_lock(path)`` takes the lock for ``path`` (a teacher cache or a run directory) and releases it when the
block ends, on success, on an error and on Ctrl-C. The lock is a small JSON file ``.<name>.lock`` beside
``path`` (beside, not inside: ``teacher-cache`` recreates a cache directory whole, and a run directory must
stay empty until the run starts). It records the holder's host, pid, the pid's start time, the UTC time the
lock was taken and the command line; a second writer is refused in one line that names them.

Creation is atomic on local and network file systems alike: the record is written to a private file, then
hard-linked to the lock name (``link`` fails if the name exists, also over NFS, where ``O_EXCL`` was not
always honoured); a file system without hard links falls back to ``O_CREAT | O_EXCL``.

A lock is stale, and is broken by the next writer, when

- its holder ran on this host and that process is gone (no such pid, or the pid now belongs to a process that
  started at another time), or
- its holder ran on another host sharing the file system and its heartbeat stopped: the holder touches the
  lock file every ``HEARTBEAT_S`` seconds, and a lock from another host whose mtime is older than
  ``STALE_AFTER_S`` is taken as left behind (its host crashed). Within that time a lock from another host is
  only removed by hand (the error says which file).

URL stores: ``file://`` URLs are locked as the local path they name; ``memory://`` stores live in one process,
so the lock is an in-process registry (a second writer in the same process is refused); other URLs (``s3://``
...) have no atomic create-if-absent that every store honours, so they are not locked (a warning says so).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from frs_cli.errors import ConfigError, LockError, StorageError
from frs_cli.names import file_in_the_way, sibling

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # how often a holder touches its lock file
STALE_AFTER_S = 600.0  # a lock from another host untouched this long is taken as left behind

_memory_locks: dict[str, dict] = {}  # memory:// stores: held locks of this process
_memory_guard = threading.Lock()


def lock_path(path: str | Path) -> Path:
    """The lock file of the output ``path``: ``.<name>.lock`` in the same directory (``path`` made absolute and its
    symlinks resolved first, so ``--out .`` is locked beside the directory, not inside it, and a link to a folder
    another job writes gets that job's lock)."""
    return sibling(Path(os.path.realpath(path)), ".", ".lock")


def _proc_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_record(command: str | None = None) -> dict:
    """What a lock says about the process that takes it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command if command is not None else " ".join(["frs", *sys.argv[1:]])}


def describe(holder: dict) -> str:
    """``pid 123 on host h since 2026-12-02T05:30:00Z (frs teacher-cache ...)``."""
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command')})")


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (another user's included)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def _alive_here(holder: dict) -> bool:
    """Whether the holder, a process of this host, still runs (the same pid started at the same time)."""
    pid = holder.get("pid")
    if not process_alive(pid):
        return False
    start = holder.get("proc_start")
    now = _proc_start(pid)
    return start is None or now is None or start == now


def stale_reason(holder: dict, mtime: float, now: float | None = None) -> str | None:
    """Why the lock of ``holder`` (its file last touched at ``mtime``) is stale, or None if it is live."""
    if holder.get("host") == socket.gethostname():
        return None if _alive_here(holder) else f"its process (pid {holder.get('pid')}) is gone"
    age = (time.time() if now is None else now) - mtime
    if age > STALE_AFTER_S:
        return f"its host {holder.get('host')} stopped its heartbeat {age:.0f} s ago"
    return None


def _read(path: Path) -> tuple[dict, float] | None:
    """The record and mtime of the lock file, None if there is none. An unreadable record (a holder killed
    between creating and filling a fallback ``O_EXCL`` file) reads as a holder of unknown host."""
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        holder = None
    if not isinstance(holder, dict):
        holder = {"host": "?", "pid": None, "started": "?", "command": "?"}
    return holder, st.st_mtime


def local_path(text: str) -> Path | None:
    """The local path a lock file sits beside for the output ``text``: a path or a ``file://`` URL; None for
    other URLs (no lock file: ``memory://`` is locked in the process, remote stores not at all)."""
    if "://" in text and not text.startswith("file://"):
        return None
    return Path(text.removeprefix("file://"))


def live_holder(path: str | Path) -> dict | None:
    """The process holding the lock of the output ``path`` if that lock is live (a job still writing it), else
    None: no lock, a stale one, or a URL that has no lock file (see ``_local``)."""
    local = local_path(str(path))
    if local is None:
        return None
    found = _read(lock_path(local))
    if found is None or stale_reason(*found) is not None:
        return None
    return found[0]


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` if no file is there; False if one is. Atomic (see the module doc)."""
    tmp = sibling(path, "", f".{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    try:  # no hard links here
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _break(path: Path, holder: dict) -> None:
    """Remove the stale lock of ``holder``, unless another writer broke it and took the lock meanwhile."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}.{threading.get_ident()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read(aside)
    if moved is not None and moved[0] != holder:  # a live lock taken since: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        aside.unlink()


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True, name="frs-lock-heartbeat")
        self.path = path
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _refusal(target: str, where: str, holder: dict) -> LockError:
    return LockError(f"{target}: expected no other writer, but {describe(holder)} holds its lock {where}",
                     hint="wait for it to finish or stop it; if that process is gone for good, delete the lock file")


@contextlib.contextmanager
def output_lock(path: str | Path, *, command: str | None = None, enabled: bool = True,
                what: str = "output") -> Iterator[Path | None]:
    """Hold the one-writer lock of the output ``path`` (local path or URL) for the block.

    ``enabled=False`` (a torchrun rank other than 0) takes nothing. Yields the lock file (None when nothing is
    locked). Raises LockError, naming the holder, when a live writer holds it; breaks a stale lock (logged).
    """
    text = str(path)
    if not enabled:
        yield None
        return
    if text.startswith("memory://"):
        with _memory_lock(text, command, what):
            yield None
        return
    local = local_path(text)
    if local is None:
        log.warning("%s %s: not locked (a %s store has no atomic create); run one writer at a time", what, text,
                    text.split("://")[0])
        yield None
        return
    lock = lock_path(local)
    holder = holder_record(command)
    record = json.dumps(holder)
    made = _missing_folders(lock.parent)  # removed again at the end where the job left them empty
    for _ in range(10):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            created = _create(lock, record)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder above the output must be
                blocker = file_in_the_way(lock) or lock.parent
                raise ConfigError(f"{what} {text!r}: expected a folder at {str(blocker)!r} to hold it, got a "
                                  "file") from None
            denied = exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
            if denied and local.exists() and os.access(local, os.W_OK):
                # the output is writable but the folder holding it is not (an admin-made folder in a read-only
                # one, an immutable parent): unlocked, a second writer would write into it beside this one
                raise StorageError(f"{what} {text!r}: cannot make its lock file {str(lock)!r} ({exc.strerror}), "
                                   "which keeps a second writer out of it",
                                   hint=f"make {str(lock.parent)!r} writable, or give the {what} a path inside a "
                                        "folder you can write") from exc
            if not denied and lock.parent.is_dir():  # the folder is there but takes no file (/proc): as files.py says
                if exc.errno == errno.ENOENT:
                    raise StorageError(f"{what} {text!r}: no file can be made there",
                                       hint="write to a folder on a disk") from exc
                raise StorageError(f"{what} {text!r}: cannot make its lock file in {str(lock.parent)!r} "
                                   f"({exc.strerror})", hint="write to a folder on a writable disk") from exc
            if not denied:  # the folder that would hold it cannot be made
                raise StorageError(f"{what} {text!r}: cannot make its folder {str(lock.parent)!r} ({exc.strerror})",
                                   hint="write to a folder on a writable disk") from exc
            # where no lock file can be made and the output cannot be written either, no writer can write: the
            # job's first write says so
            log.debug("%s %s: not locked (%s)", what, text, exc.strerror)
            yield None
            return
        if created:
            break
        found = _read(lock)
        if found is None:
            continue  # released meanwhile
        other, mtime = found
        reason = stale_reason(other, mtime)
        if reason is None:
            raise _refusal(f"{what} {text}", str(lock), other)
        log.warning("%s %s: breaking the stale lock of %s: %s", what, text, describe(other), reason)
        _break(lock, other)
    else:
        raise LockError(f"{what} {text}: could not take its lock {lock} after 10 tries (other writers keep "
                        f"taking it)", hint="run one writer at a time")
    beat = _Heartbeat(lock)
    beat.start()
    try:
        yield lock
    finally:
        beat.stopped.set()
        found = _read(lock)
        if found is not None and found[0] == holder:
            with contextlib.suppress(OSError):
                lock.unlink()
        for folder in made:  # deepest first: a job refused before writing leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def _memory_lock(url: str, command: str | None, what: str) -> Iterator[None]:
    with _memory_guard:
        if url in _memory_locks:
            raise _refusal(f"{what} {url}", "(in this process)", _memory_locks[url])
        _memory_locks[url] = holder_record(command)
    try:
        yield
    finally:
        with _memory_guard:
            _memory_locks.pop(url, None)


@contextlib.contextmanager
def job_lock(path: str | Path, ctx, what: str = "output", command: str | None = None) -> Iterator[None]:
    """``output_lock`` for a job that may run under torchrun: only rank 0 (``ctx.is_main``) takes the lock, so
    the ranks of one job never refuse each other; when it is refused, every rank raises the same LockError.

    ``ctx``: a ``DistContext`` (``is_main``, ``distributed``).
    """
    error = None
    with contextlib.ExitStack() as stack:
        if ctx.is_main:
            try:
                stack.enter_context(output_lock(path, command=command, what=what))
            except LockError as exc:
                error = (exc.message, exc.hint)
        if ctx.distributed:
            import torch.distributed as torch_dist

            box = [error]
            torch_dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise LockError(*error)
        yield
