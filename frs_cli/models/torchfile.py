"""Reading torch files safely: tensors and plain containers only, one plain line for anything else.

The one reader of ``.pt``/``.pth`` files for frs checkpoints, training states and torchvision weight files.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
from pathlib import Path

import torch

from frs_cli.errors import ModelError
from frs_cli.files import plural

__all__ = ["check_torch_archive", "load_torch_file", "refuse_training_state"]


def _describe_start(head: bytes) -> str:
    """What a file that is not a zip archive looks like, from its first bytes."""
    if head.startswith(b"PK"):
        return "a damaged or truncated zip archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"bytes beginning {head[:16]!r}"
    if not text.strip():
        return "an empty file" if not head else "blank text"
    return f"text beginning {text.strip().splitlines()[0][:40]!r}"


def unreadable_hint(message: str) -> str | None:
    """The advice for a file ``check_torch_archive`` or ``load_torch_file`` refused with ``message``: copy again a
    zip archive cut short; check the path of text or other bytes; none for a whole file of other objects."""
    if "truncated" in message:
        return "a truncated copy reads like this: copy it again"
    if message.startswith("expected a torch checkpoint"):
        return "check the path: this file is no torch checkpoint"
    return None


def first_line(exc: Exception) -> str:
    """An exception's first line, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if text.startswith("Weights only load failed"):  # torch's advice on trusting the file: keep only the cause
        causes = [line.strip() for line in text.splitlines() if "got <" in line or "Unsupported" in line]
        text = causes[0] if causes else "it holds objects torch's safe loader does not build"
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"


def check_torch_archive(path: Path) -> None:
    """ModelError (the reason alone) unless ``path`` starts as a torch checkpoint does: a zip archive
    (``torch.save``) or a legacy pickle; a truncated copy, a text file or an empty one is named as such."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):
        return
    if not head.startswith(b"\x80"):  # zip: torch.save; 0x80: a pickle, torch's legacy format among them
        raise ModelError(f"expected a torch checkpoint (a zip archive written by torch.save), "
                         f"got {_describe_start(head)}")
    if not _starts_with_torch_magic(path):
        raise ModelError("expected a torch checkpoint (a zip archive written by torch.save), got a plain Python "
                         "pickle (pickle.dump, not torch.save)")


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object torch's legacy (pre-zip) format pickles


class _NothingUnpickler(pickle.Unpickler):
    """Builds only plain values: any class or persistent id stops it."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent id")


def _starts_with_torch_magic(path: Path) -> bool:
    """Whether a pickle file's first object is the number torch's legacy format begins with; a plain pickle's
    first object is its whole content, read without building any class."""
    try:
        with open(path, "rb") as f:
            return _NothingUnpickler(f).load() == _LEGACY_MAGIC
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError):  # a class, a cut-off stream, a malformed one: not the legacy format's start
        return False


def load_torch_file(path: Path):
    """``torch.load`` of a file frs wrote, reading tensors and plain containers only (``weights_only``).

    ModelError in one plain line holding the reason alone (callers name the file) for anything else: a text or
    other non-torch file, a damaged archive, a file holding other Python objects (named). Training states of
    earlier frs versions, which held numpy's random state as numpy objects, are read with those types allowed.
    """
    check_torch_archive(path)
    allowed = []
    try:
        return quiet_load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise ModelError(f"not a readable torch checkpoint ({first_line(exc)})") from exc
        if not all(name.startswith("numpy.") for name in unsafe):
            raise ModelError(f"expected tensors and plain containers only, got Python objects frs "
                             f"does not load ({', '.join(unsafe[:3])})") from exc
        allowed = [_resolve(name) for name in unsafe] + _numpy_dtype_classes()
    except Exception as exc:  # torch raises several types for a damaged archive
        raise ModelError(f"not a readable torch checkpoint ({first_line(exc)})") from exc
    try:
        with torch.serialization.safe_globals(allowed):
            return quiet_load(path, weights_only=True)
    except Exception as exc:
        raise ModelError(f"not a readable torch checkpoint ({first_line(exc)})") from exc


def quiet_load(path: str | Path, weights_only: bool):
    """``torch.load`` to the CPU without torch's own warnings (a pickle protocol it did not write, ...): a file it
    cannot read is one error line, and one it reads needs no two lines of torch's source before the output.

    Without ``weights_only`` (a trusted file), a class whose module is not installed is built as a stand-in
    (``_Absent``): an mmdetection 3 checkpoint holds mmengine's objects (its ``message_hub``) beside the tensors,
    and reading the tensors needs no mmengine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if weights_only:
            return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TOLERANT_PICKLE)


class _Absent:
    """An object of a class whose module is not installed: built from the pickle and kept, never used."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ModuleNotFoundError, AttributeError):  # a package not installed here, or a class it no longer has
            return type(name, (_Absent,), {"__module__": module})


class _TolerantPickle:
    """The ``pickle_module`` of ``torch.load`` for trusted files (see ``quiet_load``)."""

    __name__ = "frs_tolerant_pickle"
    Unpickler = _TolerantUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _TolerantUnpickler(file, **kwargs).load()


_TOLERANT_PICKLE = _TolerantPickle()


def _unsafe_globals(path: Path) -> list[str]:
    """The names of the Python objects a torch file's pickle would build ([] when it cannot be read)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):
        return []


def _numpy_dtype_classes() -> list:
    """numpy's dtype classes (``numpy.dtypes.UInt32DType``, ...): an array's pickle builds one, though the scan
    of a file's globals does not list it."""
    import numpy as np

    return [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"expected tensors and plain containers only, got {name}, which this numpy lacks") from exc


def refuse_training_state(content, label: str, path: Path) -> None:
    """ModelError when ``content`` is a training state (``last.pt``, what ``--resume`` reads), not a model file."""
    if isinstance(content, dict) and {"modules", "optimizer", "epoch"} <= set(content):
        final = path.with_name("model_final.pt")
        steps = content.get("epoch_step") or 0
        at = plural(content["epoch"], "epoch") + (f" and {plural(steps, 'iteration')}" if steps else "")
        current = not steps and final.is_file() and holds_the_states_model(final, content)
        raise ModelError(f"{label}: expected a model file (keys 'arch', 'model'), got a training state (what --resume "
                         f"continues from, saved after {at})",
                         hint=f"use {final}" if current else
                         "the run has not finished: its model_final.pt is written when train/distill --resume ends")


def holds_the_states_model(model_file: Path, state: dict) -> bool:
    """Whether the model file at ``model_file`` holds the weights of the student in the training ``state`` (a run
    that finished at that state wrote it then): by content, so a run folder copied without its files' times is
    judged as the original. ``Detector.core()`` is ``self.model``: a state's student keys are the model file's
    under ``model.``."""
    from frs_cli.models.base import fingerprint_state_dict

    try:
        model = load_torch_file(model_file)
    except ModelError:
        return False
    student = (state.get("modules") or {}).get("student") or {}
    core = {k.removeprefix("model."): v for k, v in student.items() if k.startswith("model.")}
    if not isinstance(model, dict) or not isinstance(model.get("model"), dict) or not core:
        return False
    return model.get("fingerprint", fingerprint_state_dict(model["model"])) == fingerprint_state_dict(core)
