"""Registries of audio and text encoders; `build_*` select an encoder by its config name."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from clap_lightning.registry import Registry

AUDIO_ENCODERS: Registry[nn.Module] = Registry("audio encoder")
TEXT_ENCODERS: Registry[nn.Module] = Registry("text encoder")


def register_audio_encoder(name: str, config_cls: type):
    """Register an audio encoder class (or builder) taking its config dataclass."""
    return AUDIO_ENCODERS.register(name, config_cls)


def register_text_encoder(name: str, config_cls: type):
    """Register a text encoder class (or builder) taking its config dataclass."""
    return TEXT_ENCODERS.register(name, config_cls)


def import_builtin_encoders() -> None:
    # Importing the modules runs their @register_* decorators.
    from clap_lightning.encoders import cnn14, hf_text, htsat, text  # noqa: F401


def build_audio_encoder(name: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the audio encoder `name`; it maps a waveform [B, T] to features [B, out_dim]."""
    import_builtin_encoders()
    return AUDIO_ENCODERS.build(name, options, where="model.audio_encoder")


def build_text_encoder(name: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the text encoder `name`; it maps token ids and mask [B, L] to features [B, out_dim]."""
    import_builtin_encoders()
    return TEXT_ENCODERS.build(name, options, where="model.text_encoder")


def build_caption_tokenizer(name: str, options: Mapping[str, Any] | None = None):
    """Build the `CaptionTokenizer` that belongs to text encoder `name` (for loader workers)."""
    import_builtin_encoders()
    builder, _ = TEXT_ENCODERS.get(name)
    config = TEXT_ENCODERS.parse_config(name, options, where="model.text_encoder")
    return builder.build_tokenizer(config)
