"""Typed errors. Library code raises these; the command line catches them once and prints one line."""


class FrsError(Exception):
    """Base class: a problem the user can fix, described in one line (what was expected, what arrived)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


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
    """The user stopped a run (Ctrl-C); what was done is saved and ``--resume`` continues."""


class StorageError(FrsError):
    """Writing to a file or store failed (disk full, no permission, ...); what was written before stays valid."""
