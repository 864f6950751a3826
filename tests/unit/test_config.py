from pathlib import Path

import pytest
from omegaconf import OmegaConf

from clap_lightning.config import (ExperimentConfig, from_container, load_config, local_batch_size, normalize_prompt,
                                   save_config, to_container)
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


@pytest.mark.parametrize("override, message", [
    ("data.global_batch_size=0", "data.global_batch_size must be >= 1, got 0"),
    ("data.global_batch_size=-64", "data.global_batch_size must be >= 1, got -64"),
    ("trainer.devices=0", "trainer.devices must be >= 1, got 0"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1, got 0"),
    ("trainer.num_nodes=-1", "trainer.num_nodes must be >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps must be >= 1 (or -1), got 0"),
    ("trainer.max_epochs=-3", "trainer.max_epochs must be >= 1 (or -1)"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1"),
    ("trainer.checkpoint_every_n_steps=-5", "trainer.checkpoint_every_n_steps must be >= 0"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval must be > 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("data.shuffle_buffer=-1", "data.shuffle_buffer must be >= 0"),
    ("data.epoch_samples=-10", "data.epoch_samples must be >= 0"),
    ("data.eval_batch_size=0", "data.eval_batch_size must be >= 1"),
    ("model.sample_rate=0", "model.sample_rate must be >= 1"),
    ("model.clip_seconds=-1", "model.clip_seconds must be > 0"),
    ("model.proj_dropout=1.5", "model.proj_dropout must be >= 0 and < 1"),
    ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
    ("optim.lr=-1e-3", "optim.lr must be > 0"),
    ("optim.lr=nan", "optim.lr must be > 0, got nan"),
    ("optim.lr=inf", "optim.lr must be > 0, got inf"),
    ("optim.eps=0", "optim.eps must be > 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio must be >= 0 and <= 1"),
    ("optim.betas=[0.9,1.5]", "optim.betas[1] must be >= 0 and < 1, got 1.5"),
    ("optim.betas=[0.9]", "optim.betas must hold two numbers"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ("eval.every_n_val=0", "eval.every_n_val must be >= 1"),
    ("data.train_sources=[{shards: a, weight: -1}]", "data.train_sources[0].weight must be > 0"),
])
def test_out_of_range_numbers_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_range_limits_admit_their_edges():
    config = load_config(DEMO, ["data.num_workers=0", "data.shuffle_buffer=0", "trainer.max_steps=-1",
                                "trainer.max_epochs=-1", "optim.min_lr_ratio=1", "optim.betas=[0,0.5]",
                                "trainer.gradient_clip_val=0", "optim.warmup_steps=0"])
    assert config.data.num_workers == 0 and config.trainer.max_epochs == -1


@pytest.mark.parametrize("template, expected, filled", [
    ("this is a sound of {}", "this is a sound of {}", "this is a sound of dog"),
    ("this is a sound of {class}", "this is a sound of {}", "this is a sound of dog"),
    ("{{class}} is {class:>4}", "{{class}} is {:>4}", "{class} is  dog"),
])
def test_prompt_takes_one_placeholder_either_way(template, expected, filled):
    assert normalize_prompt(template) == expected and expected.format("dog") == filled


@pytest.mark.parametrize("template", ["no placeholder", "{} and {}", "{label}", "{0}", "{class", "}{"])
def test_prompt_without_exactly_one_class_placeholder_is_refused(template):
    with pytest.raises(ConfigError, match="zeroshot.prompt"):
        load_config(DEMO, [f"zeroshot.prompt='{template}'"])
