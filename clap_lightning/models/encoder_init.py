"""Initialise a model, or its audio encoder, from other weights (`model.init_from`, `model.audio_encoder_init`).

`init_model` fills a whole CLAP (both towers, projections, temperatures) from a clap-lightning
checkpoint (trained, or written by `clap-lightning convert`) or an exported folder (ours or a
Hugging Face `ClapModel`): a fine-tuning start, with a fresh optimizer and schedule, not a resume.

A multi-task checkpoint (`clap-lightning multitask fit`) and a contrastive one both keep
the encoder under `model.audio_encoder.` in their Lightning `state_dict`, so either can
start a new contrastive run. The load is strict: every tensor must be present with the
same shape, else a CheckpointError names the first differing keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from clap_lightning.checkpoint import load_state_or_refuse, read_lightning_checkpoint
from clap_lightning.encoders.registry import AUDIO_ENCODERS
from clap_lightning.errors import CheckpointError
from clap_lightning.models.clap import CLAP, read_checkpoint

ENCODER_PREFIX = "model.audio_encoder."
MAX_NAMED_KEYS = 3  # keys named in a mismatch message, per kind of difference


# Encoder options that shape the input features but not the tensors: a difference passes a
# strict load unnoticed, yet the encoder would read features it was never trained on.
FRONT_END_KEYS = ("sample_rate", "mel_sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax")


def _read_checkpoint(path: Path) -> dict:
    return read_lightning_checkpoint(path)[0]  # safe_load: tensors and containers only


def load_audio_encoder_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The audio encoder's tensors from a clap-lightning checkpoint, keys without the prefix."""
    return _encoder_state(Path(path), _read_checkpoint(Path(path)))


def _encoder_state(path: Path, checkpoint: dict) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict")
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in (state or {}).items() if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise CheckpointError(f"{path} holds no audio encoder (no '{ENCODER_PREFIX}*' tensors in its state_dict)")
    return encoder


def _named(keys: list[str]) -> str:
    more = f" (+{len(keys) - MAX_NAMED_KEYS} more)" if len(keys) > MAX_NAMED_KEYS else ""
    return ", ".join(keys[:MAX_NAMED_KEYS]) + more


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """'' when the two state dicts have the same keys and shapes, else what differs (a few keys each)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {list(found[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in found and found[k].shape != v.shape]
    parts = [f"{label}: {_named(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                            ("shape (checkpoint vs model)", shapes)) if keys]
    return "; ".join(parts)


def front_end_differences(encoder: nn.Module, checkpoint: dict) -> list[str]:
    """Front-end options (FRONT_END_KEYS) where the checkpoint's stored encoder config differs from `encoder.cfg`."""
    section = ((checkpoint.get("hyper_parameters") or {}).get("config") or {}).get("model", {}).get("audio_encoder")
    if not section or not hasattr(encoder, "cfg"):
        return []  # nothing stored to compare with (e.g. a hand-made state dict)
    options = dict(section)
    stored = AUDIO_ENCODERS.parse_config(options.pop("name"), options)
    return [f"{key} {getattr(stored, key)} vs {getattr(encoder.cfg, key)}" for key in FRONT_END_KEYS
            if hasattr(stored, key) and hasattr(encoder.cfg, key) and getattr(stored, key) != getattr(encoder.cfg, key)]


def init_audio_encoder(encoder: nn.Module, path: str | Path) -> None:
    """Copy a checkpoint's audio encoder into `encoder` (strict: same keys, same shapes, same front end).

    Raises:
        CheckpointError: missing file, no encoder inside, or another architecture or front end (naming keys).
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    state = _encoder_state(path, checkpoint)
    front_end = front_end_differences(encoder, checkpoint)
    if front_end:
        raise CheckpointError(f"the audio encoder in {path} was trained on another front end "
                              f"(checkpoint vs model.audio_encoder): {_named(front_end)}")
    mismatch = describe_mismatch(encoder.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"the audio encoder in {path} does not match model.audio_encoder: {mismatch}")
    encoder.load_state_dict(state, strict=True)


def init_model(model: nn.Module, source: str | Path) -> None:
    """Fill `model` (a CLAP) strictly from a whole model: a `.ckpt` or an exported folder."""
    source = Path(source)
    if source.is_dir():
        state = CLAP.from_pretrained(source).state_dict()
    else:
        state = read_checkpoint(source)[0]
    load_state_or_refuse(model, state, source, "the run's model (model.init_from)")
