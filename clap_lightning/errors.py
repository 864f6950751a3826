"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class ClapError(Exception):
    """Base class of errors that describe bad input rather than a bug."""


class ConfigError(ClapError, ValueError):
    """A configuration is invalid (unknown key, wrong type, numbers that do not divide)."""


class DataError(ClapError):
    """Shards are missing, empty or unreadable."""


class CheckpointError(ClapError):
    """A checkpoint is missing or belongs to another architecture."""


class OutputError(ClapError):
    """An output folder (run directory, checkpoints, logs, reports) cannot be created or written."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (OmegaConf's `msg` without its key lines), or its type."""
    lines = str(getattr(err, "msg", None) or err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__
