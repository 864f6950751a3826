"""ClapPretraining: start-up checks, frozen towers, logging, GradCache gradients, strategy selection."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from clap_lightning.config import ExperimentConfig, config_from, load_config, pretraining_batch_size
from clap_lightning.errors import ConfigError
from clap_lightning.lit.gradcache import gradcache_backward, split_batch
from clap_lightning.lit.optim import split_decay_groups
from clap_lightning.lit.pretraining import ClapPretraining
from clap_lightning.lit.run import build_pretraining_trainer
from clap_lightning.lit.strategies import CPUDeepSpeedStrategy, build_strategy, read_deepspeed_config
from clap_lightning.objectives import ContrastiveObjective

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_config(tokenizer_dir: str, proj_dropout: float = 0.0, **sections: dict) -> ExperimentConfig:
    """The tiny model with deterministic training-mode forwards (no SpecAugment, no dropout)."""
    model = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / "tiny.yaml"))
    model["text_encoder"]["tokenizer"] = tokenizer_dir
    model["audio_encoder"]["use_spec_augment"] = False
    model["proj_dropout"] = proj_dropout
    return config_from(ExperimentConfig, {"model": model, "data": {"global_batch_size": 8}, **sections})


def random_batch(config: ExperimentConfig, size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    length = config.model.text_encoder["max_length"]
    lengths = torch.randint(3, length + 1, (size,), generator=generator)
    return {"audio": 0.1 * torch.randn(size, config.model.clip_samples, generator=generator),
            "input_ids": torch.randint(0, 300, (size, length), generator=generator),
            "attention_mask": (torch.arange(length) < lengths[:, None]).long(),
            "group_ids": torch.randint(0, 3, (size,), generator=generator)}  # ~3 pairs a class


def build_module(config: ExperimentConfig) -> ClapPretraining:
    torch.manual_seed(0)
    module = ClapPretraining(config)
    module.model.audio_encoder.bn0.eval()  # batch statistics differ between chunks and the whole batch
    return module


def collect_gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


# --- start-up checks -------------------------------------------------------------------------------------------

def test_global_batch_that_does_not_divide_is_refused_in_one_line():
    config = load_config(
        ExperimentConfig, None, ["data.global_batch_size=10", "trainer.devices=2", "trainer.accumulate_grad_batches=3"]
    )
    with pytest.raises(ConfigError) as err:
        pretraining_batch_size(config)
    assert str(err.value) == ("data.global_batch_size 10 is not divisible by devices 2 x num_nodes 1 "
                              "x accumulate_grad_batches 3 = 6")


def test_gradcache_loader_batch_holds_every_micro_batch_of_a_step():
    overrides = ["data.global_batch_size=24", "trainer.devices=2", "trainer.accumulate_grad_batches=3"]
    assert pretraining_batch_size(load_config(ExperimentConfig, None, overrides)) == 4
    assert (
        pretraining_batch_size(load_config(ExperimentConfig, None, [*overrides, "objective.accumulation=gradcache"]))
        == 12
    )


@pytest.mark.parametrize("key", ["objective.gather_with_grad=false", "objective.gather_without_grad=true",
                                 "objective.local_loss_gather=false"])
def test_there_is_no_switch_to_gather_without_gradients(key):
    with pytest.raises(ConfigError, match=f"bad config key '{key.split('=')[0]}'"):
        load_config(ExperimentConfig, None, [key])
    assert list(inspect.signature(ContrastiveObjective).parameters) == ["use_local_loss", "false_negatives"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.accumulation=cached"], "objective.accumulation must be one of plain, gradcache, got 'cached'"),
        (
            ["objective.false_negatives=drop"],
            "objective.false_negatives must be one of keep, mask, multi_positive, got 'drop'",
        ),
        (["trainer.strategy=deepspeed"], "trainer.deepspeed_config is empty"),
        (["trainer.deepspeed_config=configs/deepspeed/zero2.json"], "expected deepspeed"),
        (
            [
                "trainer.strategy=deepspeed",
                "trainer.deepspeed_config=configs/deepspeed/zero2.json",
                "objective.accumulation=gradcache",
            ],
            "gradcache runs under DDP only",
        ),
    ],
)
def test_incompatible_switches_fail_at_load_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(ExperimentConfig, None, overrides)
    assert "\n" not in str(err.value)


# --- strategies ------------------------------------------------------------------------------------------------

def deepspeed_config(name: str, *extra: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, ["trainer.strategy=deepspeed", "trainer.devices=2",
                                                f"trainer.deepspeed_config={CONFIGS}/deepspeed/{name}",
                                                "data.global_batch_size=16", *extra])


def read_ds(config: ExperimentConfig) -> dict:
    return read_deepspeed_config(config.trainer, pretraining_batch_size(config))


def strategy_of(config: ExperimentConfig):
    return build_strategy(config.trainer, pretraining_batch_size(config))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_json_gets_batch_from_config_and_validates(stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    ds_config = read_ds(deepspeed_config(f"zero{stage}.json"))
    assert ds_config["zero_optimization"]["stage"] == stage
    assert ds_config["train_micro_batch_size_per_gpu"] == 8  # 16 pairs over 2 devices, from the experiment config
    assert "bf16" not in ds_config and "optimizer" not in ds_config  # precision and optimizer come from the config
    checked = DeepSpeedConfig({**ds_config, "gradient_accumulation_steps": 1})  # as Lightning fills it
    assert checked.zero_optimization_stage == stage


def test_deepspeed_json_that_contradicts_the_config_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="bf16.enabled is True but trainer.precision is 32-true"):
        read_ds(deepspeed_config("zero2.json", f"trainer.deepspeed_config={bad}"))
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4}))
    with pytest.raises(ConfigError, match="remove gradient_accumulation_steps"):
        read_ds(deepspeed_config("zero2.json", f"trainer.deepspeed_config={bad}"))
    with pytest.raises(ConfigError, match="file not found: .*nope.json"):
        read_ds(deepspeed_config("nope.json"))


def test_build_strategy_defaults_to_ddp_and_builds_deepspeed_from_json():
    ddp = strategy_of(load_config(ExperimentConfig, None, ["trainer.devices=2"]))
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs == {"broadcast_buffers": False}
    assert strategy_of(load_config(ExperimentConfig, None, [])) == "auto"  # one device: no wrapper
    strategy = strategy_of(deepspeed_config("zero3.json"))
    assert isinstance(strategy, CPUDeepSpeedStrategy) and strategy.config["zero_optimization"]["stage"] == 3


# --- frozen towers ---------------------------------------------------------------------------------------------

def test_frozen_text_encoder_gets_no_gradients_and_stays_in_eval_mode(tokenizer_dir):
    config = tiny_config(tokenizer_dir, objective={"freeze_text_encoder": True})
    module = build_module(config).train()
    encoder = module.model.text_encoder
    assert not encoder.training and module.model.text_projection.training and module.model.audio_encoder.training
    outputs = []
    encoder.register_forward_hook(lambda mod, args, output: outputs.append(output))
    audio_emb, text_emb, logit_scale = module(random_batch(config))
    (text_encoder_out,) = outputs
    assert not text_encoder_out.requires_grad and text_encoder_out.grad_fn is None  # no graph: backward skipped
    ContrastiveObjective()(audio_emb, text_emb, logit_scale).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert all(p.grad is not None for p in module.model.text_projection.parameters())  # msclap trains it
    assert all(p.grad is not None for p in module.model.audio_encoder.parameters() if p.requires_grad)
    grouped = {id(p) for group in split_decay_groups(module.model, 0.1) for p in group["params"]}
    assert not grouped & {id(p) for p in encoder.parameters()}  # frozen weights are left out of the optimizer


# --- through Lightning: logging, the accumulation caveat, GradCache ---------------------------------------------

def fit_two_steps(config: ExperimentConfig) -> L.Trainer:
    config.trainer.max_steps = 2
    config.trainer.enable_progress_bar = False
    trainer = build_pretraining_trainer(config)
    batch_size = pretraining_batch_size(config)
    data = [random_batch(config, batch_size, seed) for seed in range(2 * config.trainer.accumulate_grad_batches)]
    trainer.fit(build_module(config), train_dataloaders=DataLoader(data, batch_size=None))
    return trainer


@pytest.mark.parametrize("false_negatives", ["keep", "multi_positive"])
def test_training_logs_loss_scale_and_global_batch_accuracies(tokenizer_dir, tmp_path, false_negatives):
    trainer = fit_two_steps(tiny_config(tokenizer_dir, run_dir=str(tmp_path),
                                        objective={"false_negatives": false_negatives},
                                        trainer={"accelerator": "cpu", "devices": 1}))
    assert trainer.lightning_module.objective.false_negatives == false_negatives
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/logit_scale", "train/a2t_acc", "train/t2a_acc"} <= set(metrics)
    assert metrics["train/logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-2)  # exp of the clamped log-scale
    assert 0.0 <= metrics["train/a2t_acc"].item() <= 1.0


def test_plain_accumulation_warns_that_the_contrastive_batch_shrinks(tokenizer_dir, tmp_path):
    config = tiny_config(tokenizer_dir, run_dir=str(tmp_path),
                         trainer={"accelerator": "cpu", "devices": 1, "accumulate_grad_batches": 2})
    with pytest.warns(UserWarning, match="each contrastive batch holds 4 pairs, not data.global_batch_size 8"):
        fit_two_steps(config)


def test_gradcache_runs_through_the_trainer_with_manual_optimization(tokenizer_dir, tmp_path):
    config = tiny_config(tokenizer_dir, run_dir=str(tmp_path), objective={"accumulation": "gradcache"},
                         trainer={"accelerator": "cpu", "devices": 1, "accumulate_grad_batches": 2})
    trainer = fit_two_steps(config)
    assert trainer.global_step == 2 and trainer.accumulate_grad_batches == 1
    assert trainer.lightning_module.automatic_optimization is False
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


# --- GradCache gradients ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("false_negatives", ["keep", "mask", "multi_positive"])
@pytest.mark.parametrize("use_local_loss", [False, True])
@pytest.mark.parametrize("chunks", [2, 4])
def test_gradcache_gradients_equal_one_big_batch(tokenizer_dir, chunks, use_local_loss, false_negatives):
    config = tiny_config(tokenizer_dir)
    batch = random_batch(config)
    objective = ContrastiveObjective(use_local_loss=use_local_loss, false_negatives=false_negatives)
    module = build_module(config)
    big = objective(*module(batch), batch["group_ids"])
    big.loss.backward()
    reference = collect_gradients(module)
    module.zero_grad()
    out, _ = gradcache_backward(module, split_batch(batch, chunks), objective, lambda loss: loss.backward())
    cached = collect_gradients(module)
    assert cached.keys() == reference.keys() and len(cached) > 10
    assert max((cached[n] - reference[n]).abs().max().item() for n in cached) <= 1e-5
    assert out.loss.item() == pytest.approx(big.loss.item(), abs=1e-6)
    assert out.global_batch_size == 8


def test_gradcache_replays_dropout_masks(tokenizer_dir):
    config = tiny_config(tokenizer_dir, proj_dropout=0.5)
    batch = random_batch(config)
    module = build_module(config)
    torch.manual_seed(7)
    ContrastiveObjective()(*module(batch)).loss.backward()
    reference = collect_gradients(module)
    module.zero_grad()
    torch.manual_seed(7)  # one chunk: the same masks as the plain step, if and only if the re-forward replays them
    gradcache_backward(module, split_batch(batch, 1), ContrastiveObjective(), lambda loss: loss.backward())
    cached = collect_gradients(module)
    assert max((cached[n] - reference[n]).abs().max().item() for n in cached) <= 1e-5


def test_split_batch_refuses_uneven_chunks():
    batch = {"audio": torch.zeros(6, 3), "input_ids": torch.zeros(6, 2), "meta": ["x"] * 6}
    assert [part["audio"].shape[0] for part in split_batch(batch, 3)] == [2, 2, 2]
    assert "meta" not in split_batch(batch, 3)[0]
    with pytest.raises(ValueError, match="batch of 6 cannot be split into 4 equal micro-batches"):
        split_batch(batch, 4)
