"""Export CLAP's two towers as ONNX graphs that run without PyTorch (onnxruntime, TensorRT, ...).

The bundle written by `export_onnx`:

    audio.onnx      waveform [batch, clip_samples] float32 at the model rate -> audio_emb [batch, D]
                    (the log-mel front end is inside the graph: `torch.stft` exports as ONNX STFT)
    text.onnx       input_ids, attention_mask [batch, length] int64 -> text_emb [batch, D]
    tokenizer/      the caption tokenizer (Hugging Face `tokenizer.json` layout)
    clap_onnx.json  what a caller needs to feed the graphs: rate, clip length, tokenizer rules,
                    the logit scale

Both outputs are L2-normalised, as `CLAP.embed_audio` / `embed_text` return them, so
`audio_emb @ text_emb.T` is the cosine similarity. Batch is dynamic in both graphs and the
caption length in the text graph; the clip length is fixed because HTSAT's token grid is.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.errors import ClapError
from clap_lightning.models.clap import CLAP, eval_mode
from clap_lightning.objectives.contrastive import compute_logit_scale

log = logging.getLogger(__name__)

OPSET = 18  # the first opset whose STFT and LayerNormalization the exporter emits for our graphs
MANIFEST = "clap_onnx.json"


class ExportError(ClapError):
    """The export target cannot be written."""


class AudioTower(nn.Module):
    """Waveform [B, T] at the model rate -> L2-normalised audio embedding [B, D]."""

    def __init__(self, model: CLAP) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_audio(waveform), dim=-1)


class TextTower(nn.Module):
    """Token ids and attention mask [B, L] -> L2-normalised text embedding [B, D]."""

    def __init__(self, model: CLAP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(input_ids, attention_mask), dim=-1)


def export_onnx(model: CLAP, out_dir: str | Path, fp16: bool = False) -> Path:
    """Write the ONNX bundle for `model` to `out_dir`, whole or not at all.

    Args:
        model: the model to export (moved to CPU and put in eval mode for the trace).
        out_dir: the bundle directory; it must not exist yet or be an earlier bundle (replaced).
        fp16: store weights in float16 (inputs, outputs and the front end stay float32).

    Returns:
        The bundle directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise ExportError(f"{out_dir} exists and is not an ONNX bundle; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    tokenizer = model.build_tokenizer()
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        with eval_mode(model), torch.no_grad():
            export_audio_tower(model, staging / "audio.onnx")
            export_text_tower(model, tokenizer, staging / "text.onnx")
        if fp16:
            for name in ("audio.onnx", "text.onnx"):
                convert_weights_to_fp16(staging / name)
        tokenizer.tokenizer.save_pretrained(str(staging / "tokenizer"))
        (staging / MANIFEST).write_text(json.dumps(describe_bundle(model, tokenizer, fp16), indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    return out_dir


def export_audio_tower(model: CLAP, path: Path) -> None:
    """Trace the audio tower with a dynamic batch and the model's fixed clip length."""
    example = torch.zeros(2, model.config.clip_samples)
    batch = torch.export.Dim("batch")
    run_exporter(AudioTower(model), (example,), path, {"waveform": {0: batch}}, ["waveform"], ["audio_emb"])


def export_text_tower(model: CLAP, tokenizer, path: Path) -> None:
    """Trace the text tower with a dynamic batch and caption length (up to the tokenizer's maximum)."""
    example = tokenizer(["a dog barks in the distance", "rain"])
    batch = torch.export.Dim("batch")
    length = torch.export.Dim("length", max=tokenizer.max_length)
    dims = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    run_exporter(TextTower(model), (example["input_ids"], example["attention_mask"]), path, dims,
                 ["input_ids", "attention_mask"], ["text_emb"])


def run_exporter(module: nn.Module, args: tuple, path: Path, dynamic_shapes: dict, input_names: list[str],
                 output_names: list[str]) -> None:
    """torch.export -> ONNX (the dynamo exporter), weights inside the one file."""
    with warnings.catch_warnings():
        # Inputs that share a dynamic axis (ids and mask) keep the first name given; expected, not a problem.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
        program = torch.onnx.export(module.eval(), args, dynamic_shapes=dynamic_shapes, input_names=input_names,
                                    output_names=output_names, opset_version=OPSET, dynamo=True, verbose=False)
    program.save(str(path), external_data=False)


def convert_weights_to_fp16(path: Path) -> None:
    """Store a graph's weights in float16, keeping float32 inputs/outputs and the STFT in float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = onnx.load(str(path))
    # The front end stays fp32, as in training: STFT, the mel matmul and dB conversion lose ~0.1 dB in fp16.
    graph = convert_float_to_float16(graph, keep_io_types=True, op_block_list=["STFT", "Log", "Pow", "ReduceMean"])
    onnx.save(graph, str(path))


def describe_bundle(model: CLAP, tokenizer, fp16: bool) -> dict:
    """What a caller of the graphs needs to know, without this package."""
    return {
        "format": "clap-lightning/onnx",
        "opset": OPSET,
        "fp16_weights": fp16,
        "sample_rate": model.config.sample_rate,
        "clip_samples": model.config.clip_samples,
        "d_proj": model.config.d_proj,
        "logit_scale": float(compute_logit_scale(model.logit_scale.detach())),
        "audio": {"file": "audio.onnx", "inputs": {"waveform": "float32 [batch, clip_samples], mono"},
                  "outputs": {"audio_emb": "float32 [batch, d_proj], L2-normalised"}},
        "text": {"file": "text.onnx",
                 "inputs": {"input_ids": "int64 [batch, length]", "attention_mask": "int64 [batch, length]"},
                 "outputs": {"text_emb": "float32 [batch, d_proj], L2-normalised"}},
        "tokenizer": {"dir": "tokenizer", "max_length": tokenizer.max_length, "append_eos": tokenizer.append_eos,
                      "space_before_eos": tokenizer.space_before_eos, "pad_id": tokenizer.pad_id,
                      "padding": "right; the text graph pools the last token the mask marks"},
    }
