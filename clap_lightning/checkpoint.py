"""Read clap-lightning checkpoints safely, with one-line errors (no Lightning import)."""

from __future__ import annotations

from pathlib import Path

import torch

from clap_lightning.errors import CheckpointError


def read_lightning_checkpoint(path: str | Path, map_location="cpu") -> tuple[dict, dict]:
    """Return (checkpoint dict, resolved config stored in it) of a clap-lightning checkpoint.

    Loads with `torch.load(weights_only=True)`: a file holding arbitrary pickled objects is
    refused rather than executed.

    Raises:
        CheckpointError: missing, unreadable, or not written by clap-lightning.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, not a torch file, pickled objects beyond tensors/containers
        raise CheckpointError(f"cannot load {path} with torch.load(weights_only=True): "
                              f"{str(err).splitlines()[0]}") from None
    stored = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(stored, dict) or "state_dict" not in checkpoint:
        hint = (" (an msclap file? convert it with `clap-lightning convert msclap`)"
                if isinstance(checkpoint, dict) and "model" in checkpoint else "")
        raise CheckpointError(f"{path} is not a clap-lightning checkpoint (no stored config){hint}")
    return checkpoint, stored


def load_stored_state(module: torch.nn.Module, checkpoint: dict, path: str | Path) -> torch.nn.Module:
    """Load `checkpoint["state_dict"]` into `module` (built from its stored config) and return it.

    Raises:
        CheckpointError: the weights do not fit the architecture the stored config describes.
    """
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match its stored architecture: {str(err).splitlines()[0]}") from None
    return module
