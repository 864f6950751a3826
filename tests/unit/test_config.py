from pathlib import Path

import pytest
from omegaconf import OmegaConf

from clap_lightning.config import (ExperimentConfig, from_container, load_config, local_batch_size, save_config,
                                   to_container)
from clap_lightning.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO = CONFIGS / "experiment" / "demo.yaml"


def test_demo_experiment_composes_groups_and_overrides():
    config = load_config(DEMO, ["trainer.max_steps=7", "optim.lr=0.5"])
    assert isinstance(config, ExperimentConfig)
    assert config.name == "demo" and config.run_dir == "runs/demo"  # interpolation resolved
    assert config.model.audio_encoder["name"] == "htsat" and config.model.sample_rate == 16000
    assert config.trainer.accelerator == "cpu" and config.trainer.max_steps == 7 and config.optim.lr == 0.5


@pytest.mark.parametrize("override, key", [
    ("trainer.max_stepz=3", "trainer.max_stepz"),
    ("trainer.max_steps=many", "trainer.max_steps"),
    ("model.audio_encoder.embed_dimm=8", "model.audio_encoder.embed_dimm"),
    ("model.text_encoder.n_layer=two", "model.text_encoder.n_layer"),
])
def test_bad_key_or_type_fails_with_one_line_naming_it(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    (tmp_path / "experiment").mkdir()
    bad = tmp_path / "experiment" / "bad.yaml"
    bad.write_text("name: x\noptim:\n  learning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: bad config key 'optim\.learning_rate'"):
        load_config(bad)


def test_missing_group_file_and_unknown_encoder(tmp_path):
    (tmp_path / "experiment").mkdir()
    exp = tmp_path / "experiment" / "e.yaml"
    exp.write_text("defaults: {model: nope}\n")
    with pytest.raises(ConfigError, match="config file not found: .*model/nope.yaml"):
        load_config(exp)
    with pytest.raises(ConfigError, match="unknown audio encoder 'htsta'; known: .*htsat"):
        load_config(DEMO, ["model.audio_encoder.name=htsta"])


def test_sample_rates_must_agree():
    with pytest.raises(ConfigError, match="model.sample_rate"):
        load_config(DEMO, ["model.sample_rate=44100"])


def test_round_trip_through_yaml_and_container(tmp_path):
    config = load_config(DEMO, ["seed=3"])
    save_config(config, tmp_path / "config.yaml")
    reloaded = load_config(None, [f"{k}={v}" for k, v in []])  # schema defaults load too
    assert reloaded.model.d_proj == 1024
    again = from_container(OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml")))
    assert to_container(again) == to_container(config)


def test_global_batch_divides_or_is_refused():
    config = load_config(DEMO, ["data.global_batch_size=96", "trainer.devices=4", "trainer.accumulate_grad_batches=2"])
    assert local_batch_size(config) == 12
    config = load_config(DEMO, ["data.global_batch_size=100", "trainer.devices=8"])
    with pytest.raises(ConfigError, match="100 is not divisible by devices 8 x num_nodes 1"):
        local_batch_size(config)
