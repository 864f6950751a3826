"""Read clap-lightning checkpoints safely, with one-line errors (no Lightning import)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from clap_lightning.errors import CheckpointError, first_line

MAX_DETAIL = 300  # characters of a state-dict mismatch shown (a missing-keys list can name every tensor)
# Kinds of run a checkpoint can hold, told apart by their stored config's top-level keys.
PRETRAINING, MULTITASK, CAPTIONING = "pretraining", "multi-task", "captioning"
# What `Trainer.fit(ckpt_path=...)` reads besides the weights to resume a run.
TRAINING_STATE_KEYS = ("epoch", "global_step", "loops", "optimizer_states", "lr_schedulers")


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


def checkpoint_kind(stored: dict) -> str:
    """The kind of run a stored config describes: pretraining, multi-task or captioning."""
    return MULTITASK if "tasks" in stored else CAPTIONING if "captioner" in stored else PRETRAINING


def read_lightning_checkpoint(path: str | Path, map_location="cpu", kind: Optional[str] = None) -> tuple[dict, dict]:
    """Return (checkpoint dict, resolved config stored in it) of a clap-lightning checkpoint.

    Loads with `safe_load`: a file holding arbitrary pickled objects is refused rather than executed.

    Args:
        kind: refuse a checkpoint of another kind of run (`PRETRAINING`, `MULTITASK`, `CAPTIONING`).

    Raises:
        CheckpointError: missing, unreadable, not written by clap-lightning, or of another kind.
    """
    checkpoint = safe_load(path, map_location)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    stored = hparams.get("config") if isinstance(hparams, dict) else None
    if not isinstance(stored, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        hint = (" (an msclap file? convert it with `clap-lightning convert msclap`)"
                if isinstance(checkpoint, dict) and "model" in checkpoint else "")
        raise CheckpointError(f"{path} is not a clap-lightning checkpoint (no stored config){hint}")
    if kind is not None and checkpoint_kind(stored) != kind:
        raise CheckpointError(f"{path} is not a {kind} checkpoint: it holds a {checkpoint_kind(stored)} run")
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


def check_resumable(path: str | Path, module: torch.nn.Module, kind: str) -> None:
    """Refuse, in one line, a file `Trainer.fit(ckpt_path=path)` could not resume `module` from.

    The check `validate`/`test`/`zeroshot` make (readable safely, written by clap-lightning, of
    this kind of run), plus the training state Lightning restores and weights that fit the
    configured model. `module` receives those weights (Lightning loads them again). A
    DeepSpeed checkpoint (a directory) must be complete; its shards are DeepSpeed's to check.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "latest").is_file():
            raise CheckpointError(f"{path} is not a complete DeepSpeed checkpoint (no 'latest' tag file)")
        return
    checkpoint, _ = read_lightning_checkpoint(path, kind=kind)
    missing = [key for key in TRAINING_STATE_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} cannot resume training: it lacks {', '.join(missing)} "
                              "(a weights-only file? start a fresh run from it instead)")
    load_state_or_refuse(module, checkpoint["state_dict"], path, "the configured model")
