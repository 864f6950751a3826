"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class ClapError(Exception):
    """Base class of errors that describe bad input rather than a bug."""


class ConfigError(ClapError, ValueError):
    """A configuration is invalid (unknown key, wrong type, numbers that do not divide)."""


class DataError(ClapError):
    """Shards are missing, empty or unreadable."""


class CheckpointError(ClapError):
    """A checkpoint is missing or belongs to another architecture."""
