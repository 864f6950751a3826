"""Read clap-lightning checkpoints safely, with one-line errors (no Lightning import)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from clap_lightning.errors import CheckpointError, first_line

MAX_DETAIL = 300  # characters of a state-dict mismatch shown (a missing-keys list can name every tensor)


def safe_load(path: str | Path, map_location: Any = "cpu", error: type[Exception] = CheckpointError,
              what: str = "checkpoint", hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, never arbitrary pickles.

    Args:
        error, what: the exception raised and the name of the file in its message.
        hint: appended in parentheses when the file cannot be loaded.

    Raises:
        `error` (CheckpointError by default): missing file; truncated, foreign or unsafe contents.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, not a torch file, pickled objects beyond tensors/containers
        raise error(f"cannot load {path} with torch.load(weights_only=True): {_load_error_reason(err)}"
                    + (f" ({hint})" if hint else "")) from None


def _load_error_reason(err: Exception) -> str:
    """The informative line of a torch.load error (for weights_only, the offending global)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else type(err).__name__)
    return reason.removeprefix("WeightsUnpickler error: ")


def read_lightning_checkpoint(path: str | Path, map_location="cpu") -> tuple[dict, dict]:
    """Return (checkpoint dict, resolved config stored in it) of a clap-lightning checkpoint.

    Loads with `safe_load`: a file holding arbitrary pickled objects is refused rather than executed.

    Raises:
        CheckpointError: missing, unreadable, or not written by clap-lightning.
    """
    checkpoint = safe_load(path, map_location)
    stored = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(stored, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        hint = (" (an msclap file? convert it with `clap-lightning convert msclap`)"
                if isinstance(checkpoint, dict) and "model" in checkpoint else "")
        raise CheckpointError(f"{path} is not a clap-lightning checkpoint (no stored config){hint}")
    return checkpoint, stored


def load_state_or_refuse(module: torch.nn.Module, state: dict, path: str | Path,
                         expected: str = "its stored architecture") -> torch.nn.Module:
    """`module.load_state_dict(state)` (strict), or a one-line CheckpointError naming the first difference."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:  # missing/unexpected keys, shapes; non-tensor values
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if not line.startswith("Error(s) in loading")), first_line(err))
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL] + " ..."
        raise CheckpointError(f"{path} does not match {expected}: {detail}") from None
    return module


def load_stored_state(module: torch.nn.Module, checkpoint: dict, path: str | Path) -> torch.nn.Module:
    """Load `checkpoint["state_dict"]` into `module` (built from its stored config) and return it.

    Raises:
        CheckpointError: the weights do not fit the architecture the stored config describes.
    """
    return load_state_or_refuse(module, checkpoint["state_dict"], path)
