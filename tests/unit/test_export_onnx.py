"""ONNX export: both towers run under onnxruntime and match PyTorch, for the tiny and the msclap 2023 shapes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, config_from, to_container
from clap_lightning.export.onnx import export_onnx
from clap_lightning.models.clap import CLAP

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")  # installed by `make test`
MODELS = Path(__file__).resolve().parents[2] / "configs" / "model"
CAPTIONS = ["a dog barks", "rain over a tin roof at night with distant thunder", "hum", "a bell rings twice"]


def build_model(name: str) -> CLAP:
    torch.manual_seed(0)
    config = config_from(
        ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(MODELS / f"{name}.yaml"))}
    ).model
    config.text_encoder["tokenizer"] = "builtin:tiny-bpe"  # no hub: GPT2's shape with the shipped vocabulary
    return CLAP(config).eval()


def run_bundle(bundle: Path, waves: torch.Tensor, tokens: dict) -> tuple[np.ndarray, np.ndarray]:
    audio = ort.InferenceSession(str(bundle / "audio.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(bundle / "text.onnx"), providers=["CPUExecutionProvider"])
    audio_emb = audio.run(["audio_emb"], {"waveform": waves.numpy()})[0]
    text_emb = text.run(["text_emb"], {k: tokens[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    return audio_emb, text_emb


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[CLAP, Path]:
    model = build_model("tiny")
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny")


@pytest.mark.parametrize("name", ["tiny", pytest.param("msclap_2023", marks=pytest.mark.slow)])
def test_both_towers_match_pytorch_with_other_batch_and_length(name, tiny, tmp_path):
    model, bundle = tiny if name == "tiny" else (build_model(name), None)
    bundle = bundle or export_onnx(model, tmp_path / "bundle")
    generator = torch.Generator().manual_seed(1)
    # Traced with batch 2; run with 3 clips and 4 captions of another padded length.
    waves = 0.3 * torch.randn(3, model.config.clip_samples, generator=generator)
    tokens = model.build_tokenizer()(CAPTIONS)
    audio_emb, text_emb = run_bundle(bundle, waves, tokens)
    np.testing.assert_allclose(audio_emb, model.embed_audio(waves).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(text_emb, model.embed_text(CAPTIONS).numpy(), atol=1e-4, rtol=0)
    one_audio, one_text = run_bundle(bundle, waves[:1], model.build_tokenizer()(CAPTIONS[2:3]))
    np.testing.assert_allclose(one_audio[0], audio_emb[0], atol=1e-5, rtol=0)  # batch-independent
    np.testing.assert_allclose(one_text[0], text_emb[2], atol=1e-5, rtol=0)  # padding-independent


def test_bundle_describes_its_inputs_and_fp16_weights_stay_close(tiny, tmp_path):
    model, full = tiny
    half = export_onnx(model, tmp_path / "fp16", fp16=True)
    manifest = json.loads((half / "clap_onnx.json").read_text())
    assert manifest["sample_rate"] == 16000 and manifest["clip_samples"] == model.config.clip_samples
    assert manifest["fp16_weights"] is True and manifest["tokenizer"]["append_eos"] is True
    assert (half / "tokenizer" / "tokenizer.json").is_file()
    assert (half / "audio.onnx").stat().st_size < 0.7 * (full / "audio.onnx").stat().st_size
    waves = 0.3 * torch.randn(2, model.config.clip_samples, generator=torch.Generator().manual_seed(2))
    tokens = model.build_tokenizer()(CAPTIONS)
    for got, want in zip(run_bundle(half, waves, tokens), run_bundle(full, waves, tokens)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)


def test_cli_exports_a_checkpoint_and_refuses_a_foreign_folder(tiny, tmp_path, capsys):
    model, _ = tiny
    config = config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(MODELS / "tiny.yaml"))})
    config.model.text_encoder["tokenizer"] = "builtin:tiny-bpe"
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_container(config)}}, ckpt)
    assert main(["export", "onnx", str(ckpt), "--out", str(tmp_path / "bundle")]) == 0
    assert (tmp_path / "bundle" / "audio.onnx").is_file() and (tmp_path / "bundle" / "text.onnx").is_file()
    assert main(["export", "onnx", str(ckpt), "--out", str(tmp_path / "bundle")]) == 0  # a bundle is replaced
    (tmp_path / "notes").mkdir()
    assert main(["export", "onnx", str(ckpt), "--out", str(tmp_path / "notes")]) == 2
    assert main(["export", "onnx", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "not an ONNX bundle" in errors[0] and "not found" in errors[1]
    assert not list(tmp_path.glob(".bundle.*")), "no staging folder left behind"
