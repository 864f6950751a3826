"""Import Microsoft CLAP checkpoints (PyPI `msclap` 1.3.4: 2022, 2023 and clapcap) strictly.

A released file is a dict holding the model's state dict under "model". Its keys, renamed:

    audio_encoder.base.htsat.*    -> audio_encoder.*       (2023, HTSAT)
    audio_encoder.base.*          -> audio_encoder.*       (2022, CNN14)
    audio_encoder.projection.*    -> audio_projection.*
    caption_encoder.base.*        -> text_encoder.base.*   (GPT2 / BERT / RoBERTa / CLIP text)
    caption_encoder.clip_text_projection.* -> text_encoder.clip_text_projection.*
    caption_encoder.projection.*  -> text_projection.*
    logit_scale (0-dim)           -> logit_scale, shape (1,) (DeepSpeed cannot broadcast 0-dim)

Dropped as derived (recomputed from the config, never learned): torchlibrosa's STFT and mel
matrices (`spectrogram_extractor.*`, `logmel_extractor.*`), transformers' causal-mask and
position-id buffers (`attn.bias`, `attn.masked_bias`, `embeddings.position_ids`,
`embeddings.token_type_ids`) that older transformers versions saved. Every other key must
land on a parameter or buffer of the same shape, and every one of ours must be filled, or a
`CheckpointError` lists what is unexpected and what is missing.

clapcap (`clap.*` = the 2023 audio encoder + projection, `gpt.*` = GPT2LMHeadModel,
`clap_project.*` = the mapper) has no text encoder, so it is not a `CLAP`: it converts to a
plain dict, see `convert_clapcap`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Mapping, Optional

import torch
from omegaconf import OmegaConf

from clap_lightning.checkpoint import safe_load
from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.errors import CheckpointError, ConfigError
from clap_lightning.models.clap import CLAP

VARIANTS = ("2023", "2022", "clapcap")
MODEL_CONFIG_NAMES = {"2023": "msclap_2023", "2022": "msclap_2022", "clapcap": "msclap_2023"}
CLAPCAP_FORMAT = "clap-lightning/msclap-clapcap"
# Where model YAMLs named without a path are looked up: a source checkout's configs/model, then
# where an installed wheel puts them (setup.cfg `data_files`).
CONFIG_DIRS = (
    Path(__file__).resolve().parents[2] / "configs" / "model",
    Path(sys.prefix) / "share" / "clap_lightning" / "configs" / "model",
)

# Source prefix -> our prefix, tried in order (the first match wins).
_AUDIO_BASE = {"2023": "audio_encoder.base.htsat.", "2022": "audio_encoder.base."}
_COMMON_RULES = (
    ("audio_encoder.projection.", "audio_projection."),
    ("caption_encoder.base.", "text_encoder.base."),
    ("caption_encoder.clip_text_projection.", "text_encoder.clip_text_projection."),
    ("caption_encoder.projection.", "text_projection."),
)
_DERIVED = re.compile(
    r"^audio_encoder\.(spectrogram_extractor|logmel_extractor)\."
    r"|^text_encoder\.base\.(h\.\d+\.attn\.(bias|masked_bias)|embeddings\.(position_ids|token_type_ids))$"
)
_SHOWN = 4  # key names listed per group in an error line


def read_msclap_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an msclap checkpoint's state dict with `safe_load` (tensors and plain containers only).

    Raises:
        CheckpointError: missing file, a file that needs full unpickling, or no state dict.
    """
    checkpoint = safe_load(path, hint="refusing to unpickle arbitrary objects; re-save its 'model' state dict "
                                      "with torch.save in an environment you trust")
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not an msclap checkpoint: expected a dict of tensors under 'model'")
    return state


def detect_variant(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Name the msclap release a state dict belongs to, or None for another architecture."""
    if any(k.startswith("clap_project.") for k in state):
        return "clapcap"
    if any(k.startswith("audio_encoder.base.htsat.") for k in state):
        return "2023"
    if any(k.startswith("audio_encoder.base.conv_block1.") for k in state):
        return "2022"
    return None


def check_variant(state: Mapping[str, torch.Tensor], variant: Optional[str], origin: str) -> str:
    """Return the variant to convert as, refusing unknown variants and other architectures in one line."""
    if variant not in (None, "auto", *VARIANTS):
        raise CheckpointError(f"unknown msclap variant '{variant}'; known: auto, {', '.join(VARIANTS)}")
    found = detect_variant(state)
    if found is None:
        raise CheckpointError(
            f"{origin} is not an msclap checkpoint: expected keys audio_encoder.base.htsat.* (2023), "
            f"audio_encoder.base.conv_block1.* (2022) or clap_project.* (clapcap); found {_names(state)}")
    if variant not in (None, "auto") and variant != found:
        raise CheckpointError(f"{origin}: asked for msclap variant {variant} but the checkpoint is msclap {found}")
    return found


def map_clap_keys(state: Mapping[str, torch.Tensor], variant: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename msclap CLAP keys to ours; derived buffers dropped.

    Returns:
        (our state dict, source keys no rule maps).
    """
    rules = ((_AUDIO_BASE[variant], "audio_encoder."),) + _COMMON_RULES
    mapped, unmapped = {}, []
    for key, value in state.items():
        if key == "logit_scale":
            mapped[key] = value.reshape(1)
            continue
        target = next((dst + key[len(src):] for src, dst in rules if key.startswith(src)), None)
        if target is None:
            unmapped.append(key)
        elif not _DERIVED.search(target):
            mapped[target] = value
    return mapped, unmapped


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], unmapped: list[str], origin: str) -> None:
    """Load `state` into `model`, or raise one line naming unexpected, missing and mis-shaped keys."""
    ours = model.state_dict()
    unexpected = unmapped + [k for k in state if k not in ours]
    missing = [k for k in ours if k not in state]
    shapes = [f"{k} {list(v.shape)} vs {list(ours[k].shape)}" for k, v in state.items()
              if k in ours and v.shape != ours[k].shape]
    problems = [f"{label} {_names(keys)}" for label, keys in
                (("unexpected", unexpected), ("missing", missing), ("shape mismatch", shapes)) if keys]
    if problems:
        raise CheckpointError(f"{origin} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=_on_meta(model))


def _on_meta(model: torch.nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _names(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown} (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else shown


def load_model_config(name_or_path: str):
    """An `ExperimentConfig` whose model section is a model YAML (a name in configs/model or a path)."""
    path = Path(name_or_path)
    if not path.suffix:
        found = [d / f"{name_or_path}.yaml" for d in CONFIG_DIRS if (d / f"{name_or_path}.yaml").is_file()]
        if not found:
            raise ConfigError(f"model config {name_or_path!r} not found in {' or '.join(map(str, CONFIG_DIRS))} "
                              "(pass a model YAML path)")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"model config not found: {path} (pass a model YAML path)")
    config = config_from(ExperimentConfig, {"name": path.stem, "model": OmegaConf.to_container(OmegaConf.load(path))},
                         str(path))
    return config


def build_clap_from_msclap(state: Mapping[str, torch.Tensor], variant: str, config, origin: str = "checkpoint"):
    """Build our `CLAP` for `config` and fill it from an msclap 2022/2023 state dict, strictly."""
    mapped, unmapped = map_clap_keys(state, variant)
    model = CLAP(config.model)
    load_strict(model, mapped, unmapped, origin)
    return model.eval()


def convert_clap(path: str | Path, variant: Optional[str] = None, model_config: Optional[str] = None,
                 tokenizer: Optional[str] = None, state: Optional[Mapping[str, torch.Tensor]] = None) -> dict:
    """Convert an msclap 2022/2023 file into a clap-lightning checkpoint dict.

    The result has Lightning's layout (`state_dict` with `model.`-prefixed keys and
    `hyper_parameters.config`, the resolved experiment config), so `load_pretraining` and
    `CLAP.from_checkpoint` read it.

    Args:
        path: the msclap checkpoint file.
        variant: "2023", "2022" or None to detect.
        model_config: model YAML (name in configs/model or path); default msclap_<variant>.
        tokenizer: a local tokenizer directory to store in the config instead of the hub id.
        state: the file's state dict when already read (`read_msclap_state`).
    """
    state = read_msclap_state(path) if state is None else state
    variant = check_variant(state, variant, str(path))
    if variant == "clapcap":
        raise CheckpointError(f"{path} is a clapcap (captioning) checkpoint; it converts with variant clapcap")
    config = load_model_config(model_config or MODEL_CONFIG_NAMES[variant])
    if tokenizer:
        config.model.text_encoder["tokenizer"] = tokenizer
    model = build_clap_from_msclap(state, variant, config, str(path))
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"config": to_container(config)},
        "converted_from": {"format": "msclap", "variant": variant, "source": str(path)},
    }


def convert_clapcap(path: str | Path, model_config: Optional[str] = None,
                    state: Optional[Mapping[str, torch.Tensor]] = None) -> dict:
    """Split a clapcap file into its three parts (a plain dict, not a Lightning checkpoint).

    Returns:
        {"format", "config" (the CLAP 2023 experiment config the audio part fits),
         "clap": our CLAP keys for the audio side only (`audio_encoder.*`, `audio_projection.*`,
         loaded strictly into a CLAP built from that config),
         "mapper": `clap_project.*` with the prefix stripped (the transformer mapper's state, keys as
         clap_lightning.models.mapper's clapcap layout), "mapper_config" (sizes read from the shapes),
         "gpt": GPT2LMHeadModel's state dict (`transformer.*`, `lm_head.weight`)}.
    """
    state = read_msclap_state(path) if state is None else state
    check_variant(state, "clapcap", str(path))
    parts = {"clap": {}, "gpt": {}, "clap_project": {}}
    unmapped = []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        (parts[head].__setitem__(rest, value) if head in parts else unmapped.append(key))
    if unmapped:
        raise CheckpointError(f"{path}: unexpected clapcap keys {_names(unmapped)}")
    config = load_model_config(model_config or MODEL_CONFIG_NAMES["clapcap"])
    audio = _load_audio_side(config, {f"audio_encoder.{k}": v for k, v in parts["clap"].items()}, str(path))
    gpt = {k: v for k, v in parts["gpt"].items() if not re.search(r"\.attn\.(bias|masked_bias)$", k)}
    return {"format": CLAPCAP_FORMAT, "config": to_container(config), "clap": audio,
            "mapper": parts["clap_project"], "mapper_config": infer_mapper_config(parts["clap_project"]), "gpt": gpt}


def _load_audio_side(config, state: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Map clapcap's audio encoder + projection and check them strictly against our CLAP's audio side."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = CLAP(config.model)
    audio = torch.nn.Module()
    audio.audio_encoder, audio.audio_projection = model.audio_encoder, model.audio_projection
    mapped, unmapped = map_clap_keys(state, "2023")
    load_strict(audio, mapped, unmapped, origin)
    return mapped


def infer_mapper_config(mapper: Mapping[str, torch.Tensor]) -> dict:
    """Sizes of clapcap's transformer mapper from its weights (heads and MLP ratio are clapcap's)."""
    if "prefix_const" not in mapper:
        raise CheckpointError("clapcap mapper has no prefix_const: only the transformer mapper is supported")
    prefix_length, n_embd = mapper["prefix_const"].shape
    linear = mapper["linear.weight"]  # [clip_length * n_embd, d_audio]
    layers = {int(k.split(".")[2]) for k in mapper if k.startswith("transformer.layers.")}
    hidden = mapper["transformer.layers.0.mlp.fc1.weight"].shape[0]
    return {"name": "transformer", "d_audio": int(linear.shape[1]), "n_embd": int(n_embd),
            "prefix_length": int(prefix_length), "clip_length": int(linear.shape[0] // n_embd),
            "num_layers": len(layers), "num_heads": 8, "mlp_ratio": hidden / n_embd}


def convert_msclap_file(path: str | Path, out: str | Path, variant: str = "auto", model_config: Optional[str] = None,
                       tokenizer: Optional[str] = None) -> str:
    """Convert an msclap checkpoint and write it to `out` atomically; returns the variant converted."""
    state = read_msclap_state(path)
    variant = check_variant(state, variant, str(path))
    if variant == "clapcap":
        result = convert_clapcap(path, model_config, state=state)
    else:
        result = convert_clap(path, variant, model_config, tokenizer, state=state)
    write_converted(result, out)
    return variant


def write_converted(result: dict, out: str | Path) -> None:
    """Save a converted checkpoint dict to `out` atomically: nothing half-written is left at OUT."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(result, tmp)
    tmp.replace(out)
