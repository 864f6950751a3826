"""Output folders are checked before any work starts, so a run never dies at its first save."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from clap_lightning.errors import OutputError, first_line


def check_writable(*directories: str | Path) -> None:
    """Create each directory (with its parents) and write and remove a probe file in it.

    A real write rather than `os.access`: it also catches read-only mounts, full quotas on
    some filesystems and ACLs, and a user (root) whom permission bits do not stop.

    Raises:
        OutputError: naming the first folder that cannot be created or written, and why.
    """
    for directory in directories:
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            reason = err.strerror or first_line(err)
            raise OutputError(
                f"output folder {directory} is not writable: {reason}"
                + (f" ({err.filename})" if err.filename and Path(err.filename) != directory else "")
            ) from None
