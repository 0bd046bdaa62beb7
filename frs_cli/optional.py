"""Optional packages (onnx, onnxruntime, tensorboard, faster-coco-eval), imported when a command needs one: one
clear line when a package is missing, and another when it is installed but does not import."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import signal
from collections.abc import Iterator
from types import ModuleType

from frs_cli.errors import ConfigError, FrsError


def require(module: str, who: str, hint: str, error: type[FrsError] = ConfigError) -> ModuleType:
    """``module`` imported for ``who`` (the option or key that needs it; the error line starts with it).

    ``error`` with ``hint`` when the package is not installed, or when it is installed but its import fails (a
    build that does not match this Python or numpy: its own message is given, not "install it"). A Ctrl-C that
    lands inside the import, which compiled modules can turn into an ImportError, stays a KeyboardInterrupt."""
    with _sigint_seen() as seen:
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            failure = exc
    if seen:
        raise KeyboardInterrupt
    top = module.split(".")[0]
    if _find_spec(top) is None:
        raise error(f"{who}: expected the Python package {top!r} to be installed, got ImportError", hint=hint)
    raise error(f"{who}: the Python package {top!r} is installed but does not import ({failure})",
                hint=f"install it again: {hint}" if hint.startswith("pip install") else hint)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def _sigint_seen() -> Iterator[list[int]]:
    """Inside the block, a SIGINT is noted in the yielded list, then handled as before (by default: a
    KeyboardInterrupt raised). Outside the main thread, where no handler can be set, nothing is noted."""
    seen: list[int] = []
    before = signal.getsignal(signal.SIGINT)

    def note(signum, frame):
        if before == signal.SIG_IGN:
            return None
        seen.append(signum)
        if callable(before):
            return before(signum, frame)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main thread
        yield seen
        return
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, before)
