"""Typed errors. Library code raises these; the command line catches them once and prints one line."""

import hashlib
import math
import os
import tempfile


class FrsError(Exception):
    """Base class: a problem the user can fix, described in one line (what was expected, what arrived)."""

    def __init__(self, message: str, hint: str | None = None):
        message = _unwrap_worker_message(message)
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def _unwrap_worker_message(message: str) -> str:
    """The original one-line message of an error re-raised by a DataLoader worker, else ``message`` as is.

    torch re-raises a worker's exception in the main process as ``type(exc)(text)``, with ``text`` =
    ``"Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ...\n<module>.<Type>: <message>"``;
    the last line after the type name is what the worker raised (its hint included).
    """
    if not (message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    _, sep, original = message.rstrip().splitlines()[-1].partition(": ")
    return original if sep else message


class ConfigError(FrsError):
    """A recipe or command-line option is invalid."""


class DataError(FrsError):
    """The dataset (images or annotations) is missing or malformed."""


class ModelError(FrsError):
    """A model name, checkpoint or weight is unknown or does not fit."""


class CacheFormatError(FrsError):
    """A teacher cache is missing, malformed, of another format version, or incomplete."""


class CacheMismatchError(CacheFormatError):
    """A teacher cache was written for another teacher, dataset or geometry than the recipe asks for."""


class TrainingError(FrsError):
    """Training cannot go on (for example a non-finite loss)."""


class Interrupted(FrsError):
    """The user stopped a run (Ctrl-C, or SIGTERM from kill, timeout, docker stop or a scheduler); what was done is
    saved and ``--resume`` continues."""


# the stop signal a command last received (signal.SIGINT or SIGTERM; 0: none): it exits 128 + that number
stop_signal = 0


class StorageError(FrsError):
    """Writing to a file or store failed (disk full, no permission, ...); what was written before stays valid."""


class LockError(FrsError):
    """Another writer holds the output (a cache or a run directory); its lock names it."""


def check_range(table: str, name: str, value, low: float, high: float = math.inf, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """ConfigError naming ``table.name`` unless ``value`` is a finite number in the range (ends included unless
    ``*_open``)."""
    check_value(f"recipe key '{table}.{name}'", value, low, high, low_open=low_open, high_open=high_open)


def check_value(label: str, value, low: float, high: float = math.inf, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """ConfigError ``"<label>: expected ... got ..."`` unless ``value`` is a finite number in the range (ends
    included unless ``*_open``); ``label`` names where the value came from (a recipe key, a command's option)."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not ok:
        def num(v) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        if high == math.inf:
            span = f"{'>' if low_open else '>='} {num(low)}"
        else:
            span = f"in {'(' if low_open else '['}{num(low)}, {num(high)}{')' if high_open else ']'}"
        what = "an integer" if isinstance(value, int) else "a finite number"
        raise ConfigError(f"{label}: expected {what} {span}, got {value!r}")


# a line no process prints: its marker (``job_marker``) says a process of the job has said why it stops
JOB_STOPPED = "\0a process of this job said why it stops"


def job_marker(line: str, occurrence: int) -> str:
    """The marker file of ``line``'s ``occurrence``-th report in this torchrun job: whichever process of the job on
    this host makes it first prints the line (``cli.common.first_to_report``). It lives in the folder torchrun keeps
    for this attempt of the job (beside each process's error file), else in the temp directory."""
    job = [os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR",
                                            "MASTER_PORT")]
    key = hashlib.sha256("\0".join([*job, str(os.getppid()), str(occurrence), line]).encode()).hexdigest()[:24]
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE", "")  # <attempt folder>/<local rank>/error.json
    folder = os.path.dirname(os.path.dirname(error_file)) if error_file else tempfile.gettempdir()
    return os.path.join(folder, f"frs-reported-{key}")


def mark_job_stopped() -> None:
    """Under torchrun, mark that this process stops with a reason of its own (an FrsError, a Ctrl-C) that it will
    print: the processes whose collectives then fail stay quiet. Made before it leaves the process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    try:
        os.close(os.open(job_marker(JOB_STOPPED, 1), os.O_CREAT | os.O_EXCL))
    except OSError:  # made already, or no place for it: the others print their line
        pass
