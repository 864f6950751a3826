"""`clap-lightning caption`: audio files -> captions through a CLAP checkpoint and a captioning checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from clap_lightning.config import ExperimentConfig, ModelConfig, to_container
from clap_lightning.errors import CheckpointError, ConfigError, DataError
from clap_lightning.commands import caption
from clap_lightning.lit.captioning import CaptioningModule
from clap_lightning.lit.captioning_config import CaptioningConfig
from clap_lightning.lit.pretraining import ClapPretraining
from clap_lightning.models.captioner import CaptionerConfig
from clap_lightning.models.mapper import MapperConfig

TINY = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    caption.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def checkpoints(tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cap-cli")
    model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(TINY)))
    model.text_encoder["tokenizer"] = tokenizer_dir
    torch.manual_seed(0)
    clap_module = ClapPretraining(ExperimentConfig(model=model))
    clap_path = out / "clap.ckpt"
    torch.save({"hyper_parameters": {"config": to_container(clap_module.config)},
                "state_dict": clap_module.state_dict()}, clap_path)
    mapper = MapperConfig(name="mlp", d_audio=model.d_proj, n_embd=32, prefix_length=3)
    config = CaptioningConfig(clap_checkpoint=str(clap_path), captioner=CaptionerConfig(
        mapper=mapper, tokenizer=tokenizer_dir, n_layer=1, n_head=2, n_positions=64, max_caption_tokens=12))
    cap_module = CaptioningModule(config)
    cap_path = out / "cap.ckpt"
    torch.save({"hyper_parameters": {"config": to_container(config)},
                "state_dict": cap_module.state_dict()}, cap_path)
    wavs = []
    for i, (rate, seconds) in enumerate(((16000, 1.0), (22050, 3.0))):  # short is tiled, long is cropped
        wav = out / f"clip{i}.wav"
        sf.write(wav, np.random.default_rng(i).uniform(-0.5, 0.5, int(rate * seconds)).astype("float32"), rate)
        wavs.append(str(wav))
    return clap_path, cap_path, wavs, model


def test_caption_command_prints_one_line_per_file(checkpoints, capsys):
    _, cap_path, wavs, _ = checkpoints
    args = parse([*wavs, "--checkpoint", str(cap_path), "--beam-size", "2", "--max-length", "5"])
    assert caption.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == wavs
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_audio_files_are_resampled_and_fitted(checkpoints):
    _, _, wavs, model = checkpoints
    audio = caption.load_audio_files(wavs, model.sample_rate, model.clip_samples)
    assert audio.shape == (2, model.clip_samples) and torch.isfinite(audio).all()


def test_clear_errors(checkpoints, tmp_path):
    clap_path, cap_path, wavs, _ = checkpoints
    with pytest.raises(DataError, match="cannot read audio file"):
        caption.run(parse([str(tmp_path / "none.wav"), "--checkpoint", str(cap_path)]))
    with pytest.raises(CheckpointError, match="not a captioning checkpoint"):
        caption.run(parse([wavs[0], "--checkpoint", str(clap_path)]))
    with pytest.raises(ConfigError, match="beam_size and max_length must be >= 1"):
        caption.run(parse([wavs[0], "--checkpoint", str(cap_path), "--beam-size", "0"]))
