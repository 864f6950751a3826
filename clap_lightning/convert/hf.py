"""Hugging Face `ClapModel` folders in and out (transformers' port of LAION-CLAP: HTSAT + RoBERTa).

A `ClapModel` folder holds `config.json` (`model_type: clap`, `audio_config`, `text_config`) and
`model.safetensors` (or `pytorch_model.bin`). Its keys (transformers 5.x `modeling_clap.py`) map
onto ours as follows; the map is one table read both ways, so import and export agree:

    audio_model.audio_encoder.batch_norm.*                 audio_encoder.bn0.*
    audio_model.audio_encoder.patch_embed.{proj,norm}.*    audio_encoder.patch_embed.{proj,norm}.*
    ...layers.I.blocks.J.layernorm_before / layernorm_after     ...norm1 / norm2
    ...attention.self.{query,key,value}.{weight,bias}      ...attn.qkv.{weight,bias} (q, k, v stacked)
    ...attention.self.relative_position_bias_table         ...attn.relative_position_bias_table
    ...attention.output.dense / intermediate.dense / output.dense   ...attn.proj / mlp.fc1 / mlp.fc2
    ...layers.I.downsample.*, audio_encoder.norm.*         the same
    text_model.*                                           text_encoder.base.* (a RobertaModel, pooler used)
    {audio,text}_projection.linear{1,2}.*                  the same (`projection: mlp`)
    logit_scale_a, logit_scale_t (0-dim)                   logit_scale, logit_scale_t (shape (1,))

Derived buffers (`relative_position_index`, Swin's `attn_mask`, RoBERTa's `position_ids` and
`token_type_ids`) are recomputed, never copied. HTSAT's token-semantic head (`tscam_conv`,
`head`) does not feed the embedding and `ClapModel` has none: on import it keeps its initial
values (reported), on export it is left out. Fused models (`enable_fusion`, LAION's `aff_2d`) convert too.

The front end is LAION's: 48 kHz, window 1024, hop 480, 64 mel bins over 50-14,000 Hz, 10-s
clips. transformers' `ClapFeatureExtractor` computes it in numpy; `CLAP.encode_audio_features`
takes such features as they are, `encode_audio` computes ours from the waveform.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from clap_lightning.checkpoint import safe_load
from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.errors import CheckpointError
from clap_lightning.convert.msclap import load_strict, write_converted
from clap_lightning.models.clap import CLAP

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
DERIVED = re.compile(r"(relative_position_index|attn_mask|embeddings\.position_ids|embeddings\.token_type_ids)$")
UNUSED_HEAD = re.compile(r"^audio_encoder\.(tscam_conv|head)\.")
# (ClapModel's name, ours) for the parts of a Swin block; q/k/v are handled apart.
_BLOCK_PARTS = (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
                ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"))
_AUDIO = "audio_model.audio_encoder."


def hf_to_ours_key(key: str) -> Optional[str]:
    """Our name for a `ClapModel` key (None: derived, or q/k/v which `map_hf_state` stacks)."""
    if DERIVED.search(key):
        return None
    if key in ("logit_scale_a", "logit_scale_t"):
        return {"logit_scale_a": "logit_scale", "logit_scale_t": "logit_scale_t"}[key]
    if key.startswith("text_model."):
        return "text_encoder.base." + key[len("text_model."):]
    if key.startswith(("audio_projection.", "text_projection.")):
        return key
    if not key.startswith(_AUDIO):
        return key  # unknown: reported as unexpected by the strict load
    rest = key[len(_AUDIO):]
    if rest.startswith("batch_norm."):
        return "audio_encoder.bn0." + rest[len("batch_norm."):]
    block = re.match(r"(layers\.\d+\.blocks\.\d+)\.(.+)$", rest)
    if block:
        if re.match(r"attention\.self\.(query|key|value)\.", block.group(2)):
            return None
        for theirs, ours in _BLOCK_PARTS:
            if block.group(2) == theirs or block.group(2).startswith(theirs + "."):
                return f"audio_encoder.{block.group(1)}.{ours}{block.group(2)[len(theirs):]}"
    return "audio_encoder." + rest


def ours_to_hf_key(key: str) -> Optional[str]:
    """The `ClapModel` name of one of our keys (None: derived, left out, or qkv which is split)."""
    if DERIVED.search(key) or UNUSED_HEAD.match(key) or re.search(r"\.attn\.qkv\.", key):
        return None
    if key in ("logit_scale", "logit_scale_t"):
        return {"logit_scale": "logit_scale_a", "logit_scale_t": "logit_scale_t"}[key]
    if key.startswith("text_encoder.base."):
        return "text_model." + key[len("text_encoder.base."):]
    if key.startswith(("audio_projection.", "text_projection.")):
        return key
    rest = key[len("audio_encoder."):]
    if rest.startswith("bn0."):
        return _AUDIO + "batch_norm." + rest[len("bn0."):]
    block = re.match(r"(layers\.\d+\.blocks\.\d+)\.(.+)$", rest)
    if block:
        for theirs, ours in _BLOCK_PARTS:
            if block.group(2) == ours or block.group(2).startswith(ours + "."):
                return f"{_AUDIO}{block.group(1)}.{theirs}{block.group(2)[len(ours):]}"
    return _AUDIO + rest


def map_hf_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from a `ClapModel` one (unknown keys pass through, for the strict check to name)."""
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = hf_to_ours_key(key)
        if ours is not None:
            mapped[ours] = value.reshape(1) if ours.startswith("logit_scale") else value
    qkv = re.compile(re.escape(_AUDIO) + r"(layers\.\d+\.blocks\.\d+)\.attention\.self\.query\.(weight|bias)$")
    for key in state:
        match = qkv.match(key)
        if match:
            parts = [state[key.replace(".query.", f".{name}.")] for name in ("query", "key", "value")]
            mapped[f"audio_encoder.{match.group(1)}.attn.qkv.{match.group(2)}"] = torch.cat(parts)
    return mapped


def to_hf_state(model: CLAP) -> dict[str, torch.Tensor]:
    """`ClapModel`'s state dict for one of our models (derived buffers and the unused head left out)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        qkv = re.match(r"audio_encoder\.(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$", key)
        if qkv:
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{_AUDIO}{qkv.group(1)}.attention.self.{name}.{qkv.group(2)}"] = part.clone()
            continue
        theirs = ours_to_hf_key(key)
        if theirs is not None:
            out[theirs] = value.reshape(()) if theirs.startswith("logit_scale") else value.clone()
    return out


def model_config_from_hf(config: Mapping, tokenizer: str, quantize_int16: bool = False) -> dict:
    """Our model section for a `ClapModel` `config.json` (HTSAT, unfused or fused, + RoBERTa).

    Short clips are padded as LAION and transformers' feature extractor pad them ("repeatpad");
    a fused model's inputs all take the HTK mel filters of their fusion features. LAION's own
    inference also rounds the waveform to 16 bits (`quantize_int16`); transformers' does not.
    """
    audio, text = config.get("audio_config", {}), config.get("text_config", {})
    if audio.get("enable_fusion") and audio.get("fusion_type") not in (None, "aff_2d"):
        raise CheckpointError(f"fusion_type {audio.get('fusion_type')!r} is not supported (only LAION's released "
                              "aff_2d)")
    patch_stride = audio.get("patch_stride", [4, 4])
    patch_stride = patch_stride[0] if isinstance(patch_stride, (list, tuple)) else patch_stride
    patch_size = audio.get("patch_size", 4)
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    depths = list(audio.get("depths", [2, 2, 6, 2]))
    embed_dim = audio.get("patch_embeds_hidden_size", 96)
    if audio.get("hidden_size", embed_dim * 2 ** (len(depths) - 1)) != embed_dim * 2 ** (len(depths) - 1):
        raise CheckpointError(f"audio_config.hidden_size {audio.get('hidden_size')} is not patch_embeds_hidden_size "
                              f"x 2^(stages - 1) = {embed_dim * 2 ** (len(depths) - 1)}")
    return {
        "sample_rate": 48000,
        "clip_seconds": 10.0,
        "d_proj": config.get("projection_dim", 512),
        "proj_dropout": 0.0,
        "projection": "mlp",
        "text_logit_scale": True,
        "pad_mode": "repeatpad",
        "audio_encoder": {
            "name": "htsat",
            "sample_rate": 48000,
            "mel_sample_rate": 48000,
            "n_fft": 1024,
            "hop_length": 480,
            "n_mels": audio.get("num_mel_bins", 64),
            "fmin": 50.0,
            "fmax": 14000.0,
            "spec_size": audio.get("spec_size", 256),
            "patch_size": patch_size,
            "patch_stride": patch_stride,
            "embed_dim": embed_dim,
            "depths": depths,
            "num_heads": list(audio.get("num_attention_heads", [4, 8, 16, 32])),
            "window_size": audio.get("window_size", 8),
            "mlp_ratio": audio.get("mlp_ratio", 4.0),
            "drop_path_rate": audio.get("drop_path_rate", 0.0),
            "num_classes": audio.get("num_classes", 527),
            "use_spec_augment": False,
            "enable_fusion": bool(audio.get("enable_fusion")),
            "aff_block_r": audio.get("aff_block_r", 4),
            "mel_scale": "htk" if audio.get("enable_fusion") else "slaney",
            "quantize_int16": quantize_int16,
        },
        "text_encoder": {
            "name": "roberta",
            "tokenizer": tokenizer,
            "pooling": "pooler",
            "max_length": 77,
            "vocab_size": text.get("vocab_size", 50265),
            "hidden_size": text.get("hidden_size", 768),
            "num_layers": text.get("num_hidden_layers", 12),
            "num_heads": text.get("num_attention_heads", 12),
            "intermediate_size": text.get("intermediate_size", 3072),
            "max_positions": text.get("max_position_embeddings", 514),
            "dropout": text.get("hidden_dropout_prob", 0.1),
        },
    }


def load_mapped(model: CLAP, mapped: Mapping[str, torch.Tensor], origin: str,
                keep: Callable[[str], object] = lambda key: False) -> None:
    """Load converted weights strictly; derived buffers (and keys `keep` names) keep the model's own values."""
    own = {k: v for k, v in model.state_dict().items() if DERIVED.search(k) or keep(k)}
    load_strict(model, {**own, **mapped}, [], origin)


def read_hf_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a `ClapModel` folder, reading weights without unpickling code."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "clap":
        raise CheckpointError(f"{folder}/config.json is model_type {config.get('model_type')!r}, not 'clap'")
    weights = next((folder / name for name in HF_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} holds no {' or '.join(HF_WEIGHTS)}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return config, load_file(str(weights))
    return config, safe_load(weights, what="Hugging Face weights file")


def build_from_hf(folder: str | Path, tokenizer: Optional[str] = None) -> tuple[CLAP, dict, list[str]]:
    """(our model filled from a `ClapModel` folder, its experiment config, keys of ours kept at init)."""
    folder = Path(folder)
    hf_config, state = read_hf_folder(folder)
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    tokenizer = tokenizer or (str(folder.resolve()) if has_tokenizer else "roberta-base")
    config = config_from(ExperimentConfig, {"name": folder.name, "model": model_config_from_hf(hf_config, tokenizer)},
                         str(folder))
    model = CLAP(config.model)
    load_mapped(model, map_hf_state(state), str(folder), keep=UNUSED_HEAD.match)
    ours = model.state_dict()
    kept = sorted({k.split(".")[1] for k in ours if UNUSED_HEAD.match(k)})
    return model.eval(), config, kept


def convert_hf_folder(folder: str | Path, out: str | Path, tokenizer: Optional[str] = None) -> list[str]:
    """Write a clap-lightning checkpoint for a `ClapModel` folder atomically; returns modules kept at init."""
    model, config, kept = build_from_hf(folder, tokenizer)
    write_converted(as_checkpoint(model, config, {"format": "hf", "source": str(folder)}), out)
    return kept


def as_checkpoint(model: CLAP, config, converted_from: dict) -> dict:
    """A converted model in Lightning's checkpoint layout, which `CLAP.from_checkpoint` and `fit` read."""
    return {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": to_container(config)}, "converted_from": converted_from}


# LAION-CLAP's own checkpoints (`630k-audioset-best.pt`, ...): `{"epoch", "name", "state_dict", "optimizer"}`
# with keys under `module.` (DDP). Its HTSAT keeps the original names, which are ours (msclap's HTSAT is the
# same code); RoBERTa is `text_branch`; projections are `nn.Sequential(Linear, ReLU, Linear)`.
LAION_RENAMES = (
    ("audio_branch.", "audio_encoder."),
    ("text_branch.", "text_encoder.base."),
    ("audio_projection.0.", "audio_projection.linear1."),
    ("audio_projection.2.", "audio_projection.linear2."),
    ("text_projection.0.", "text_projection.linear1."),
    ("text_projection.2.", "text_projection.linear2."),
)
# torchlibrosa's STFT/mel matrices (recomputed by our front end) and the MLP-loss heads `*_transform`,
# which LAION uses only in its loss with `--clap-mlploss`, never for embeddings.
LAION_UNUSED = re.compile(
    r"^(audio_branch\.(spectrogram_extractor|logmel_extractor)\.|audio_transform\.|text_transform\.)"
)


def read_laion_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a LAION-CLAP checkpoint, `module.` prefixes removed, read with weights_only."""
    checkpoint = safe_load(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(k, str) and "audio_branch." in k for k in state):
        raise CheckpointError(f"{path} is not a LAION-CLAP checkpoint (no audio_branch.* weights)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def laion_config_from_state(state: Mapping[str, torch.Tensor], tokenizer: str) -> dict:
    """Our model section for a LAION-CLAP state dict, its sizes read from the weight shapes."""
    fusion = state.get("audio_branch.patch_embed.fusion_model.local_att.0.weight")  # [C / r, C, 1, 1]
    if not any(k.startswith("text_branch.encoder.layer.") for k in state):
        raise CheckpointError("only LAION-CLAP checkpoints with a RoBERTa text branch are supported")
    stages = sorted({int(m.group(1)) for k in state for m in [re.match(r"audio_branch\.layers\.(\d+)\.", k)] if m})
    depths = [len({m.group(1) for k in state for m in [re.match(rf"audio_branch\.layers\.{i}\.blocks\.(\d+)\.", k)]
                   if m}) for i in stages]
    heads = [int(state[f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]) for i in stages]
    window = int(
        round((state["audio_branch.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0] ** 0.5 + 1) / 2)
    )
    proj = state["audio_branch.patch_embed.proj.weight"]  # [embed_dim, 1, patch, patch]
    # The image side is in no weight, but a shifted block's saved attn_mask [windows, w*w, w*w] gives the
    # first stage's grid; LAION's released models all use 256.
    mask = next((v for k, v in state.items() if re.match(r"audio_branch\.layers\.0\.blocks\.\d+\.attn_mask$", k)), None)
    spec_size = 256 if mask is None else int(round(mask.shape[0] ** 0.5)) * window * int(proj.shape[2])
    text_layers = len({k.split(".")[3] for k in state if k.startswith("text_branch.encoder.layer.")})
    hf_like = {
        "projection_dim": int(state["audio_projection.2.weight"].shape[0]),
        "audio_config": {
            "num_mel_bins": int(state["audio_branch.bn0.weight"].shape[0]),
            "spec_size": spec_size,
            "patch_size": int(proj.shape[2]),
            "patch_stride": int(proj.shape[2]),
            "patch_embeds_hidden_size": int(proj.shape[0]),
            "depths": depths,
            "num_attention_heads": heads,
            "window_size": window,
            "num_classes": int(state["audio_branch.head.weight"].shape[0]),
            "enable_fusion": fusion is not None,
            "aff_block_r": 4 if fusion is None else int(fusion.shape[1] // fusion.shape[0]),
        },
        "text_config": {
            "vocab_size": int(state["text_branch.embeddings.word_embeddings.weight"].shape[0]),
            "hidden_size": int(state["text_branch.embeddings.word_embeddings.weight"].shape[1]),
            "num_hidden_layers": text_layers,
            "num_attention_heads": max(1, int(state["text_branch.embeddings.word_embeddings.weight"].shape[1]) // 64),
            "intermediate_size": int(state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            "max_position_embeddings": int(state["text_branch.embeddings.position_embeddings.weight"].shape[0]),
        },
    }
    return model_config_from_hf(hf_like, tokenizer, quantize_int16=True)


def build_from_laion(path: str | Path, tokenizer: str = "roberta-base",
                     num_text_heads: Optional[int] = None) -> tuple[CLAP, dict, list[str]]:
    """(our model filled from a LAION-CLAP checkpoint, its experiment config, LAION keys left out as unused)."""
    state = read_laion_state(path)
    section = laion_config_from_state(state, tokenizer)
    if num_text_heads:
        section["text_encoder"]["num_heads"] = num_text_heads
    config = config_from(ExperimentConfig, {"name": Path(path).stem, "model": section}, str(path))
    model = CLAP(config.model)
    mapped, unused = {}, []
    for key, value in state.items():
        if LAION_UNUSED.match(key) or DERIVED.search(key):
            unused += [key] if LAION_UNUSED.match(key) and "extractor" not in key else []
            continue
        for theirs, ours in LAION_RENAMES:
            if key.startswith(theirs):
                key = ours + key[len(theirs):]
                break
        mapped[{"logit_scale_a": "logit_scale"}.get(key, key)] = (
            value.reshape(1) if key.startswith("logit_scale") else value
        )
    load_mapped(model, mapped, str(path))
    return model.eval(), config, sorted({k.split(".")[0] for k in unused})


def convert_laion_file(path: str | Path, out: str | Path, tokenizer: str = "roberta-base",
                       num_text_heads: Optional[int] = None) -> list[str]:
    """Write a clap-lightning checkpoint for a LAION-CLAP file atomically; returns the LAION parts left out."""
    model, config, unused = build_from_laion(path, tokenizer, num_text_heads)
    write_converted(as_checkpoint(model, config, {"format": "laion", "source": str(path)}), out)
    return unused
