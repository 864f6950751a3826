import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from clap_lightning.config import (ExperimentConfig, config_from, load_config, normalize_prompt, pretraining_batch_size,
                                   save_config, to_container)
from clap_lightning.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO = CONFIGS / "experiment" / "demo.yaml"


def test_demo_experiment_composes_groups_and_overrides():
    config = load_config(ExperimentConfig, DEMO, ["trainer.max_steps=7", "optim.lr=0.5"])
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
        load_config(ExperimentConfig, DEMO, [override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    (tmp_path / "experiment").mkdir()
    bad = tmp_path / "experiment" / "bad.yaml"
    bad.write_text("name: x\noptim:\n  learning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: bad config key 'optim\.learning_rate'"):
        load_config(ExperimentConfig, bad)


def test_missing_group_file_and_unknown_encoder(tmp_path):
    (tmp_path / "experiment").mkdir()
    exp = tmp_path / "experiment" / "e.yaml"
    exp.write_text("defaults: {model: nope}\n")
    with pytest.raises(ConfigError, match="config file not found: .*model/nope.yaml"):
        load_config(ExperimentConfig, exp)
    with pytest.raises(ConfigError, match="unknown audio encoder 'htsta'; known: .*htsat"):
        load_config(ExperimentConfig, DEMO, ["model.audio_encoder.name=htsta"])


def test_sample_rates_must_agree():
    with pytest.raises(ConfigError, match="model.sample_rate"):
        load_config(ExperimentConfig, DEMO, ["model.sample_rate=44100"])


def test_round_trip_through_yaml_and_container(tmp_path):
    config = load_config(ExperimentConfig, DEMO, ["seed=3"])
    save_config(config, tmp_path / "config.yaml")
    reloaded = load_config(ExperimentConfig, None, [f"{k}={v}" for k, v in []])  # schema defaults load too
    assert reloaded.model.d_proj == 1024
    again = config_from(ExperimentConfig, OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml")))
    assert to_container(again) == to_container(config)


def test_global_batch_divides_or_is_refused():
    config = load_config(
        ExperimentConfig, DEMO, ["data.global_batch_size=96", "trainer.devices=4", "trainer.accumulate_grad_batches=2"]
    )
    assert pretraining_batch_size(config) == 12
    config = load_config(ExperimentConfig, DEMO, ["data.global_batch_size=100", "trainer.devices=8"])
    with pytest.raises(ConfigError, match="100 is not divisible by devices 8 x num_nodes 1"):
        pretraining_batch_size(config)


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
        load_config(ExperimentConfig, DEMO, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_range_limits_admit_their_edges():
    config = load_config(ExperimentConfig, DEMO, ["data.num_workers=0", "data.shuffle_buffer=0", "trainer.max_steps=-1",
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
        load_config(ExperimentConfig, DEMO, [f"zeroshot.prompt='{template}'"])


# --- one config family -----------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_run_schema_loads_through_one_load_config(tmp_path):
    from clap_lightning.config import RunConfig
    from clap_lightning.lit.captioning_config import CaptioningConfig
    from clap_lightning.lit.multitask_config import MultiTaskConfig

    # A captioning YAML composes from configs/trainer like the others (configs/<group>/ beside configs/captioning/).
    (tmp_path / "trainer").symlink_to(CONFIGS / "trainer")
    captioning = _write(tmp_path / "captioning" / "cap.yaml",
                        "defaults: {trainer: cpu}\nname: cap\ncaptioner: {n_layer: 2}\ndata: {batch_size: 8}\n")
    for schema, path in ((ExperimentConfig, DEMO), (MultiTaskConfig, CONFIGS / "multitask" / "demo3.yaml"),
                         (CaptioningConfig, captioning)):
        config = load_config(schema, path, ["trainer.max_steps=3", "seed=5"])
        assert isinstance(config, schema) and isinstance(config, RunConfig)
        assert config.trainer.max_steps == 3 and config.seed == 5 and config.trainer.accelerator == "cpu"
        assert config.run_dir == f"runs/{config.name}"  # interpolation resolved
        assert config_from(schema, to_container(config)) == config  # the stored form round-trips
    cap = load_config(CaptioningConfig, captioning)
    assert cap.captioner.n_layer == 2 and cap.data.batch_size == 8 and cap.optim.lr == 2e-5  # its own optim default


def test_yaml_typos_name_the_key_in_every_schema(tmp_path):
    from clap_lightning.lit.captioning_config import CaptioningConfig

    with pytest.raises(ConfigError, match=r"cap\.yaml: bad config key 'captioner\.n_layerz'"):
        load_config(CaptioningConfig, _write(tmp_path / "cap.yaml", "captioner: {n_layerz: 2}\n"))
    with pytest.raises(ConfigError, match=r"override 'data\.batch_size=x': bad config key 'data\.batch_size'"):
        load_config(CaptioningConfig, None, ["data.batch_size=x"])
    # list items of any schema are checked against their dataclass, naming the item
    sources = _write(tmp_path / "x.yaml", "data: {train_sources: [{shards: a, wieght: 2}]}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: bad config key 'data\.train_sources\[0\]\.wieght'"):
        load_config(ExperimentConfig, sources)
    config = load_config(ExperimentConfig, None, ["data.train_sources=[{shards: a}, {shards: b}]",
                                                  "data.train_sources.1.weight=3"])
    assert [(s.shards, s.weight) for s in config.data.train_sources] == [("a", 1.0), ("b", 3.0)]


def test_init_from_takes_the_architecture_from_the_weights_and_refuses_conflicts(tmp_path):
    import torch

    from clap_lightning.config import to_container
    from clap_lightning.errors import CheckpointError

    source = load_config(ExperimentConfig, None, ["model.d_proj=48", "model.projection=mlp"])
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": to_container(source)}}, ckpt)
    config = load_config(ExperimentConfig, None, [f"model.init_from={ckpt}", "model.proj_dropout=0.2"])
    assert (config.model.d_proj, config.model.projection, config.model.proj_dropout) == (48, "mlp", 0.2)
    with pytest.raises(ConfigError, match="both set"):
        load_config(ExperimentConfig, None, [f"model.init_from={ckpt}", "model.audio_encoder_init=x.ckpt"])
    with pytest.raises(CheckpointError, match="not found"):
        load_config(ExperimentConfig, None, [f"model.init_from={tmp_path / 'missing.ckpt'}"])


def test_override_may_interpolate_other_keys_and_bad_values_are_one_line():
    assert load_config(ExperimentConfig, DEMO, ["name=x", "run_dir=runs/${name}/a"]).run_dir == "runs/x/a"
    for override, message in [("name=${missing}", "missing"), ("trainer.devices=[1", "cannot read the value"),
                              ("trainer.loggers={a: 1}", "trainer.loggers"),
                              ("model.audio_encoder.num_heads={a: 1}", "model.audio_encoder.num_heads")]:
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            load_config(ExperimentConfig, DEMO, [override])
        assert "\n" not in str(err.value)
