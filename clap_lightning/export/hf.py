"""Export to Hugging Face's `ClapModel` layout, and clap-lightning's own safetensors layout for the rest.

`export_hf` writes a folder `transformers.ClapModel.from_pretrained` loads (config.json,
model.safetensors, preprocessor_config.json for `ClapFeatureExtractor`, the tokenizer, a model
card) when `ClapModel` can express the model: HTSAT + RoBERTa with its pooler + the MLP
projection + two logit scales (as LAION-CLAP and `convert hf` give). Anything else (msclap's
GPT2 text tower, CNN14, ...) is refused naming the first difference; `save_pretrained` writes
it in our own layout (model.safetensors with our keys + config.yaml), which
`CLAP.from_pretrained` reads, as it reads `ClapModel` folders.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from clap_lightning.config import write_yaml
from clap_lightning.convert.hf import to_hf_state
from clap_lightning.errors import CheckpointError
from clap_lightning.models.clap import CLAP

OWN_CONFIG = "config.yaml"


def hf_difference(model: CLAP) -> Optional[str]:
    """Why `ClapModel` cannot express `model`, or None when it can."""
    cfg = model.config
    audio, text = cfg.audio_encoder, cfg.text_encoder
    checks = (
        (audio.get("name") == "htsat", f"its audio encoder is {audio.get('name')!r}; ClapModel's is HTSAT"),
        (text.get("name") == "roberta" and text.get("pooling") == "pooler",
         f"its text encoder is {text.get('name')!r} (pooling {text.get('pooling', 'n/a')!r}); ClapModel's is RoBERTa "
         "pooled through its pooler"),
        (cfg.projection == "mlp", f"its projection is {cfg.projection!r}; ClapModel's is the two-layer ReLU MLP (mlp)"),
        (cfg.text_logit_scale, "it has one logit scale; ClapModel has logit_scale_a and logit_scale_t"),
        (model.audio_encoder.cfg.sample_rate == model.audio_encoder.cfg.mel_sample_rate,
         "its mel filters are computed for another rate than its input (ClapFeatureExtractor cannot)"),
        (not model.audio_encoder.cfg.mask_padding, "it masks padding (ClapModel has no lengths input)"),
    )
    return next((reason for ok, reason in checks if not ok), None)


def hf_config_for(model: CLAP) -> dict:
    """`config.json` of the `ClapModel` that holds `model`'s weights."""
    cfg, audio = model.config, model.audio_encoder.cfg
    base = model.text_encoder.base.config
    return {
        "model_type": "clap", "architectures": ["ClapModel"], "projection_dim": cfg.d_proj,
        "projection_hidden_act": "relu", "logit_scale_init_value": float(torch.tensor(cfg.logit_scale_init).exp()),
        "audio_config": {
            "model_type": "clap_audio_model", "window_size": audio.window_size, "num_mel_bins": audio.n_mels,
            "spec_size": audio.spec_size, "patch_size": audio.patch_size,
            "patch_stride": [audio.patch_stride, audio.patch_stride], "num_classes": audio.num_classes,
            "hidden_size": audio.out_dim, "projection_dim": cfg.d_proj, "depths": list(audio.depths),
            "num_attention_heads": list(audio.num_heads), "enable_fusion": audio.enable_fusion,
            "fusion_type": "aff_2d" if audio.enable_fusion else None, "aff_block_r": audio.aff_block_r,
            "patch_embeds_hidden_size": audio.embed_dim, "mlp_ratio": audio.mlp_ratio,
            "drop_path_rate": audio.drop_path_rate, "hidden_dropout_prob": audio.drop_rate,
            "attention_probs_dropout_prob": audio.attn_drop_rate, "num_hidden_layers": len(audio.depths),
        },
        "text_config": {
            "model_type": "clap_text_model", "vocab_size": base.vocab_size, "hidden_size": base.hidden_size,
            "num_hidden_layers": base.num_hidden_layers, "num_attention_heads": base.num_attention_heads,
            "intermediate_size": base.intermediate_size, "max_position_embeddings": base.max_position_embeddings,
            "hidden_dropout_prob": base.hidden_dropout_prob,
            "attention_probs_dropout_prob": base.attention_probs_dropout_prob, "type_vocab_size": base.type_vocab_size,
            "pad_token_id": base.pad_token_id, "projection_dim": cfg.d_proj, "layer_norm_eps": base.layer_norm_eps,
        },
    }


def export_hf(model: CLAP, out_dir: str | Path, model_card: str = "") -> Path:
    """Write `model` as a `ClapModel` folder (config, safetensors, preprocessor and tokenizer), whole or not at all.

    Raises:
        CheckpointError: `ClapModel` cannot express the model (the first difference is named).
    """
    from safetensors.torch import save_file

    reason = hf_difference(model)
    if reason:
        raise CheckpointError(f"cannot export as a Hugging Face ClapModel: {reason}; "
                              "`clap-lightning export safetensors` writes it in clap-lightning's own layout")
    audio = model.audio_encoder.cfg

    def write(staging: Path) -> None:
        (staging / "config.json").write_text(json.dumps(hf_config_for(model), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in to_hf_state(model).items()}, str(staging / "model.safetensors"),
                  metadata={"format": "pt"})
        (staging / "preprocessor_config.json").write_text(json.dumps({
            "feature_extractor_type": "ClapFeatureExtractor", "processor_class": "ClapProcessor",
            "feature_size": audio.n_mels, "sampling_rate": audio.sample_rate, "hop_length": audio.hop_length,
            "fft_window_size": audio.n_fft, "frequency_min": audio.fmin, "frequency_max": audio.fmax,
            "max_length_s": model.config.clip_seconds, "padding": "repeatpad", "truncation": "rand_trunc",
            "padding_value": 0.0, "return_attention_mask": False,
        }, indent=2) + "\n")
        model.build_tokenizer().tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(model_card or "# CLAP model\n\nExported by clap-lightning.\n")

    return write_whole(out_dir, write)


def save_pretrained(model: CLAP, out_dir: str | Path) -> Path:
    """Write any model in clap-lightning's own layout: model.safetensors (our keys) + config.yaml."""
    from safetensors.torch import save_file

    def write(staging: Path) -> None:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "clap-lightning"})
        write_yaml({"model": dataclasses.asdict(model.config)}, staging / OWN_CONFIG)

    return write_whole(out_dir, write)


def write_whole(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(staging)` in a staging folder beside `out_dir`, then replace `out_dir` with it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not any((out_dir / name).is_file() for name in ("model.safetensors", OWN_CONFIG)):
        raise CheckpointError(f"{out_dir} exists and is not an exported model; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        write(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    return out_dir
