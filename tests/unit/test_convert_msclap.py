"""msclap checkpoint conversion: strictness, clear refusals, the CLI function, and loading the result."""

import argparse
import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.commands import convert
from clap_lightning.convert import detect_variant, read_msclap_state
from clap_lightning.convert.msclap import convert_clap
from clap_lightning.errors import CheckpointError
from clap_lightning.models.clap import CLAP

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURES / "msclap_parity.pt", weights_only=True)


@pytest.fixture
def msclap_file(reference, tmp_path):
    """A small msclap 2023 file as released: weights under "model" (plus what else a trainer keeps)."""
    state = dict(reference["state_dict"])
    state.update({k: torch.zeros(shape) for k, shape in reference["derived_shapes"].items()})

    def write(extra: dict | None = None, drop: tuple = ()) -> Path:
        model = {k: v for k, v in {**state, **(extra or {})}.items() if k not in drop}
        path = tmp_path / "CLAP_weights_small.pth"
        torch.save({"model": model, "epoch": 3}, path)
        return path

    return write


@pytest.fixture
def small_config(reference, tmp_path) -> str:
    path = tmp_path / "small.yaml"
    path.write_text(json.dumps(reference["model_config"]))  # JSON is YAML
    return str(path)


def _convert_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    convert.add_msclap_arguments(parser)
    parser.set_defaults(format="msclap")  # as `clap-lightning convert msclap` sets it
    return parser.parse_args(list(argv))


def test_cli_function_writes_a_checkpoint_both_loaders_read(msclap_file, small_config, reference, tmp_path):
    from clap_lightning.lit.run import load_pretraining

    out = tmp_path / "out" / "clap.ckpt"
    convert.run(_convert_args(str(msclap_file()), "--out", str(out), "--model-config", small_config))
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    audio = torch.randn(2, 44100 * 7, generator=torch.Generator().manual_seed(0)) * 0.1
    model = CLAP.from_checkpoint(out)
    module = load_pretraining(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(module.model.encode_audio(audio), model.encode_audio(audio))
        text = model.encode_text(reference["input_ids"][:4], reference["attention_mask"][:4])
    assert (text - reference["text_emb"][:4]).abs().max() <= 1e-4
    assert not model.training and model.logit_scale.shape == (1,)


def test_old_transformers_buffers_are_dropped_but_strange_keys_reported(msclap_file, small_config):
    causal = torch.tril(torch.ones(80, 80, dtype=torch.bool)).view(1, 1, 80, 80)
    old = {
        "caption_encoder.base.h.0.attn.bias": causal,
        "caption_encoder.base.h.0.attn.masked_bias": torch.tensor(-1e4),
    }
    convert_clap(msclap_file(old), "2023", small_config)  # converts: derived buffers, not weights
    with pytest.raises(CheckpointError, match=r"unexpected caption_encoder\.extra_head\.weight"):
        convert_clap(msclap_file({"caption_encoder.extra_head.weight": torch.zeros(3)}), "2023", small_config)
    with pytest.raises(CheckpointError, match=r"missing text_projection\.linear1\.weight$"):
        convert_clap(msclap_file(drop=("caption_encoder.projection.linear1.weight",)), "2023", small_config)


def test_shape_mismatch_is_one_line(msclap_file, small_config):
    with pytest.raises(CheckpointError) as err:
        convert_clap(msclap_file({"audio_encoder.projection.linear2.weight": torch.zeros(5, 5)}), "2023", small_config)
    assert "shape mismatch audio_projection.linear2.weight [5, 5] vs [64, 64]" in str(err.value)
    assert "\n" not in str(err.value)


def test_another_architecture_is_refused(tmp_path, msclap_file, small_config):
    path = tmp_path / "laion.pt"
    torch.save({"model": {"text_branch.embeddings.word_embeddings.weight": torch.zeros(3, 2),
                          "audio_branch.bn0.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="is not an msclap checkpoint: expected keys audio_encoder.base.htsat"):
        convert_clap(path)
    with pytest.raises(CheckpointError, match="asked for msclap variant 2022 but the checkpoint is msclap 2023"):
        convert_clap(msclap_file(), "2022", small_config)
    with pytest.raises(CheckpointError, match="clapcap"):
        convert.run(_convert_args(str(msclap_file()), "--out", str(tmp_path / "x"), "--variant", "clapcap"))
    with pytest.raises(CheckpointError, match="unknown msclap variant '2021'; known: auto, 2023, 2022, clapcap"):
        convert.run(_convert_args(str(msclap_file()), "--out", str(tmp_path / "x"), "--variant", "2021"))
    assert not (tmp_path / "x").exists()


def test_files_needing_full_unpickling_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"logit_scale": torch.zeros(())}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(
        CheckpointError,
        match=r"cannot load .*weights_only=True.*Unsupported global.*argparse.Namespace.*refusing to unpickle",
    ):
        read_msclap_state(path)
    (tmp_path / "junk.pth").write_bytes(pickle.dumps("hello")[:5])
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_msclap_state(tmp_path / "junk.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="expected a dict of tensors under 'model'"):
        read_msclap_state(tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_msclap_state(tmp_path / "missing.pth")


def test_variant_detection_on_release_layouts():
    layouts = json.loads((FIXTURES / "msclap_keys.json").read_text())
    assert {name: detect_variant(dict.fromkeys(keys)) for name, keys in layouts.items()} == {
        "2023": "2023", "2022": "2022", "clapcap": "clapcap"}


def test_from_checkpoint_explains_an_unconverted_msclap_file(msclap_file):
    with pytest.raises(CheckpointError, match="convert it with `clap-lightning convert msclap`"):
        CLAP.from_checkpoint(msclap_file())


def _experiment(tmp_path, model: str) -> Path:
    (tmp_path / "experiment").mkdir(parents=True)
    (tmp_path / "model").symlink_to(CONFIGS / "model")
    path = tmp_path / "experiment" / "x.yaml"
    path.write_text(f"defaults: {{model: {model}}}\nname: x\n")
    return path


def test_msclap_2023_config_is_the_release(tmp_path):
    model = load_config(ExperimentConfig, _experiment(tmp_path, "msclap_2023")).model
    audio, text = model.audio_encoder, model.text_encoder
    assert (model.sample_rate, model.clip_seconds, model.d_proj, model.proj_dropout) == (44100, 7.0, 1024, 0.5)
    assert model.logit_scale_init == pytest.approx(math.log(1 / 0.07))
    assert (audio["name"], audio["sample_rate"], audio["mel_sample_rate"], audio["fmin"], audio["fmax"]) == \
        ("htsat", 44100, 32000, 50.0, 14000.0)
    assert (audio["n_fft"], audio["hop_length"], audio["n_mels"], audio["embed_dim"]) == (1024, 320, 64, 96)
    assert (text["name"], text["tokenizer"], text["max_length"], text["n_embd"], text["n_layer"]) == \
        ("gpt2", "gpt2", 77, 768, 12)
    assert text["space_before_eos"] is True


def test_scratch_and_2022_configs(tmp_path):
    scratch = load_config(ExperimentConfig, _experiment(tmp_path / "a", "htsat_gpt2")).model
    assert (scratch.audio_encoder["mel_sample_rate"], scratch.audio_encoder["fmax"]) == (44100, 8000.0)
    release = load_config(ExperimentConfig, _experiment(tmp_path / "b", "msclap_2023")).model
    assert (scratch.audio_encoder["mask_padding"], release.audio_encoder["mask_padding"]) == (True, False)
    same = {k: v for k, v in scratch.audio_encoder.items() if k not in ("mel_sample_rate", "fmax", "mask_padding")}
    assert same == {k: release.audio_encoder.get(k) for k in same}  # same architecture otherwise
    old = load_config(ExperimentConfig, _experiment(tmp_path / "c", "msclap_2022")).model
    assert (old.audio_encoder["name"], old.text_encoder["name"], old.text_encoder["max_length"], old.clip_seconds) == \
        ("cnn14", "bert", 100, 5.0)


def test_space_before_eos_tokenizes_like_msclap():
    """msclap encodes `caption + ' <|endoftext|>'`: a lone space token, then eos."""
    from clap_lightning.encoders.tokenizer import CaptionTokenizer

    plain = CaptionTokenizer("builtin:tiny-bpe", max_length=16)
    spaced = CaptionTokenizer("builtin:tiny-bpe", max_length=16, space_before_eos=True)
    caption = "a loud sine tone"
    expected = plain.tokenizer(caption + " <|endoftext|>")["input_ids"]  # the tokenizer splits the special token
    assert spaced([caption])["input_ids"][0].tolist() == expected
    assert plain.tokenizer.convert_ids_to_tokens(expected[-2:]) == ["Ġ", "<|endoftext|>"]
    assert plain([caption])["input_ids"][0].tolist() == expected[:-2] + expected[-1:]


def test_model_configs_ship_with_an_installed_package(tmp_path, monkeypatch):
    """`convert`'s default model YAMLs are declared as data files, and found there outside a checkout."""
    from setuptools.config.setupcfg import read_configuration

    from clap_lightning.convert import msclap
    from clap_lightning.errors import ConfigError

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # data_files globs are relative to the project root
    declared = dict(read_configuration(root / "setup.cfg")["options"]["data_files"])
    shipped = {Path(f).name for f in declared["share/clap_lightning/configs/model"]}
    assert {f"{name}.yaml" for name in msclap.MODEL_CONFIG_NAMES.values()} <= shipped
    # An installed wheel: no source checkout, the YAMLs under <prefix>/share/clap_lightning/configs/model.
    share = tmp_path / "share" / "clap_lightning" / "configs" / "model"
    share.mkdir(parents=True)
    (share / "msclap_2023.yaml").write_text((root / "configs" / "model" / "msclap_2023.yaml").read_text())
    monkeypatch.setattr(msclap, "CONFIG_DIRS", (tmp_path / "no-checkout", share))
    assert msclap.load_model_config("msclap_2023").model.audio_encoder["name"] == "htsat"
    with pytest.raises(ConfigError, match="model config 'msclap_2022' not found in .*no-checkout or .*share"):
        msclap.load_model_config("msclap_2022")
