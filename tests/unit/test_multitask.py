"""Multi-task pretraining: config schema, label encoding, masked loss, temperature mixing, encoder export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clap_lightning.config import ModelConfig, config_from, load_config
from clap_lightning.data.multitask import MultiTaskCollate, TaskLabelSpec, temperature_weights
from clap_lightning.errors import CheckpointError, ConfigError
from clap_lightning.lit.multitask import MultiTaskDataModule, MultiTaskPretraining, compute_task_metrics
from clap_lightning.lit.multitask_config import MultiTaskConfig, plan_sources
from clap_lightning.models.clap import CLAP
from clap_lightning.models.encoder_init import init_audio_encoder
from clap_lightning.models.multitask import HeadSpec, compute_multitask_loss
from tests.shard_factory import write_good_shards

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / "tiny.yaml"))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["demo3", "htsat22"])
def test_shipped_configs_load_and_validate(name: str) -> None:
    config = load_config(MultiTaskConfig, REPO / "configs" / "multitask" / f"{name}.yaml")
    assert config.tasks and len({t.name for t in config.tasks}) == len(config.tasks)
    if name == "htsat22":
        assert len(config.tasks) == 22


def test_unknown_task_key_fails_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tasks:\n  - {name: a, shards: x, lable_field: labels}\n")
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.lable_field"):
        load_config(MultiTaskConfig, path)
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.wieght"):
        load_config(MultiTaskConfig, REPO / "configs" / "multitask" / "demo3.yaml", ["tasks.0.wieght=2"])


@pytest.mark.parametrize("task, message", [
    ({"name": "a", "shards": "x", "kind": "softmax"}, "kind must be one of"),
    ({"name": "a.b", "shards": "x"}, "name must be letters"),
    ({"name": "a", "shards": ""}, "shards is empty"),
    ({"name": "a", "shards": "x", "kind": "regression", "classes": ["u"]}, "must be empty for a regression"),
])
def test_bad_tasks_are_refused(task: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from(MultiTaskConfig, {"model": TINY_MODEL, "tasks": [task]})


@pytest.mark.parametrize("override, message", [
    ("data.global_batch_size=0", "data.global_batch_size must be >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.temperature=0", "data.temperature must be > 0"),
    ("trainer.devices=0", "trainer.devices must be >= 1"),
    ("tasks.0.weight=0", r"tasks\[0\].weight must be > 0"),
    ("tasks.1.std=-1", r"tasks\[1\].std must be > 0"),
    ("head_dropout=1", "head_dropout must be >= 0 and < 1"),
])
def test_out_of_range_numbers_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(MultiTaskConfig, REPO / "configs" / "multitask" / "demo3.yaml", [override])


def test_override_reaches_a_task_by_index() -> None:
    config = load_config(MultiTaskConfig, REPO / "configs" / "multitask" / "demo3.yaml",
                                   ["tasks.1.weight=3", "tasks.0.classes=[a,b]"])
    assert config.tasks[1].weight == 3.0 and config.tasks[0].classes == ["a", "b"]


# ----------------------------------------------------------------------------- labels


def test_collate_reads_targets_and_masks_from_the_json() -> None:
    family = TaskLabelSpec("family", "single", "labels", ("bass", "guitar"), sources=(0,))
    quality = TaskLabelSpec("quality", "multi", "labels", ("bright", "dark", "reverb"), sources=(0,))
    pitch = TaskLabelSpec("pitch", "single", "pitch", ("59", "60"), sources=(0,))
    arousal = TaskLabelSpec("arousal", "regression", "arousal", sources=(1,), mean=4.0, std=2.0)
    metas = [
        {"labels": ["guitar", "acoustic", "bright", "reverb"], "pitch": 60},  # NSynth-like: family among other labels
        {"labels": ["bass", "guitar"], "pitch": 61},  # two families: no single label; pitch not a class
        {"labels": ["speech"], "arousal": 5.0},  # source 1: only arousal applies
        {"arousal": float("nan")},  # source 1 without a usable value
    ]
    samples = [{"audio": torch.zeros(4), "length": 4, "meta": m, "key": str(i), "source_index": s}
               for i, (m, s) in enumerate(zip(metas, [0, 0, 1, 1]))]
    batch = MultiTaskCollate([family, quality, pitch, arousal])(samples)
    assert batch["audio_length"].tolist() == [4, 4, 4, 4]
    assert batch["masks"]["family"].tolist() == [True, False, False, False]
    assert batch["targets"]["family"][0].item() == 1
    assert batch["masks"]["quality"].tolist() == [True, False, False, False]
    assert batch["targets"]["quality"][0].tolist() == [1.0, 0.0, 1.0]
    assert batch["masks"]["pitch"].tolist() == [True, False, False, False]
    assert batch["targets"]["pitch"][0].item() == 1
    assert batch["masks"]["arousal"].tolist() == [False, False, True, False]
    assert batch["targets"]["arousal"][2].item() == pytest.approx(0.5)  # (5 - 4) / 2


def test_temperature_weights_follow_the_formula() -> None:
    assert temperature_weights([100, 400, 1600], 2.0) == pytest.approx([10 / 70, 20 / 70, 40 / 70])
    assert temperature_weights([100, 400], 1.0) == pytest.approx([0.2, 0.8])
    assert temperature_weights([100, 10_000], 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)


# ----------------------------------------------------------------------------- loss


def _loss_inputs(garbage: bool) -> tuple[dict, dict, dict, dict]:
    torch.manual_seed(0)
    specs = {"cls": HeadSpec("cls", "single", 3), "tags": HeadSpec("tags", "multi", 2, weight=0.5),
             "value": HeadSpec("value", "regression", 1)}
    outputs = {"cls": torch.randn(4, 3, requires_grad=True), "tags": torch.randn(4, 2, requires_grad=True),
               "value": torch.randn(4, requires_grad=True)}
    masks = {"cls": torch.tensor([True, True, False, False]), "tags": torch.tensor([False, True, True, False]),
             "value": torch.tensor([False, False, False, True])}
    bad = 999 if garbage else 0
    targets = {"cls": torch.tensor([2, 0, bad, -bad]), "tags": torch.tensor([[7.0, bad], [1, 0], [0, 1], [bad, 3.0]]),
               "value": torch.tensor([math.nan, 1e9, math.inf, 0.25] if garbage else [0.0, 0.0, 0.0, 0.25])}
    return outputs, targets, masks, specs


def test_loss_ignores_unlabelled_rows_exactly() -> None:
    outputs, targets, masks, specs = _loss_inputs(garbage=False)
    total, per_task = compute_multitask_loss(outputs, targets, masks, specs)
    o = {k: v.detach() for k, v in outputs.items()}
    ce = -(torch.log_softmax(o["cls"][0], 0)[2] + torch.log_softmax(o["cls"][1], 0)[0]) / 2
    p = torch.sigmoid(o["tags"][1:3])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    mse = (o["value"][3] - 0.25) ** 2
    assert per_task["cls"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert per_task["tags"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert per_task["value"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert total.item() == pytest.approx((ce + 0.5 * bce + mse).item(), rel=1e-5)
    garbage = _loss_inputs(garbage=True)
    garbage_total, _ = compute_multitask_loss(*garbage)
    assert garbage_total.item() == total.item()  # garbage targets under a false mask change nothing
    garbage_total.backward()
    total.backward()
    for name, output in garbage[0].items():  # NaN/inf/out-of-range targets leak no NaN into the gradient
        assert torch.equal(output.grad, outputs[name].grad)
        assert torch.count_nonzero(output.grad[~masks[name]]) == 0


def test_unlabelled_head_gets_zero_gradient() -> None:
    torch.manual_seed(0)
    specs = {"a": HeadSpec("a", "single", 3), "b": HeadSpec("b", "regression", 1)}
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(5, 3), "b": torch.nn.Linear(5, 1)})
    features = torch.randn(6, 5)
    outputs = {"a": heads["a"](features), "b": heads["b"](features)[:, 0]}
    targets = {"a": torch.tensor([0, 1, 2, 0, 1, 2]), "b": torch.full((6,), float("nan"))}
    masks = {"a": torch.ones(6, dtype=torch.bool), "b": torch.zeros(6, dtype=torch.bool)}
    loss, per_task = compute_multitask_loss(outputs, targets, masks, specs)
    loss.backward()
    assert per_task["b"].item() == 0.0
    assert heads["b"].weight.grad is not None and torch.count_nonzero(heads["b"].weight.grad) == 0
    assert torch.count_nonzero(heads["b"].bias.grad) == 0
    assert torch.count_nonzero(heads["a"].weight.grad) > 0


def test_task_metrics() -> None:
    assert compute_task_metrics("single", torch.tensor([[2.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0])) == {"acc": 0.5}
    scores, tags = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert compute_task_metrics("multi", scores, tags) == {"mAP": 1.0}
    values = compute_task_metrics("regression", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert values == pytest.approx({"mse": 0.5, "r2": 1 - 0.5 / 1.0})


# ----------------------------------------------------------------------------- mixing


def _source(root: Path, name: str, declared: int) -> str:
    """Two tiny shards under `root/name` whose manifest declares `declared` samples (the mixing weight input)."""
    urls = write_good_shards(root / name, name, n_shards=2, per_shard=3)
    manifest = {"shards": [{"name": Path(u).name, "count": 3} for u in urls], "num_samples": declared}
    (root / name / "manifest.json").write_text(json.dumps(manifest))
    return str(root / name)


def test_batches_mix_sources_in_the_temperature_proportions(tmp_path: Path) -> None:
    declared = {"big": 8100, "mid": 900, "small": 100}
    tasks = [{"name": f"t_{n}", "shards": _source(tmp_path, n, c), "label_field": "labels", "classes": ["tone"]}
             for n, c in declared.items()]
    model = {**TINY_MODEL, "sample_rate": 8000, "audio_encoder": {**TINY_MODEL["audio_encoder"], "sample_rate": 8000}}
    config = config_from(MultiTaskConfig, {
        "model": model, "tasks": tasks, "trainer": {"accelerator": "cpu"},
        "data": {"temperature": 2.0, "global_batch_size": 50, "num_workers": 0, "shuffle_buffer": 20,
                 "epoch_samples": 3000}})
    plan = plan_sources(config)
    expected = [90 / 130, 30 / 130, 10 / 130]  # sqrt of 8100, 900, 100
    assert plan.weights == pytest.approx(expected)
    counts, n = np.zeros(3), 0
    for batch in MultiTaskDataModule(config, plan).train_dataloader():
        counts += np.bincount(batch["source_index"].numpy(), minlength=3)
        n += len(batch["source_index"])
        # A clip labels only the task of its own source.
        for i, task in enumerate(config.tasks):
            assert batch["masks"][task.name].tolist() == (batch["source_index"] == i).tolist()
    assert n == 3000
    for share, p in zip(counts / n, expected):
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations


# ----------------------------------------------------------------------------- export


def _tiny_multitask(embed_dim: int = 32) -> MultiTaskPretraining:
    model = {**TINY_MODEL, "audio_encoder": {**TINY_MODEL["audio_encoder"], "embed_dim": embed_dim}}
    return MultiTaskPretraining({"model": model, "tasks": [
        {"name": "a", "shards": "x", "classes": ["u", "v"]}, {"name": "b", "shards": "y", "kind": "regression"}]})


def test_exported_encoder_loads_into_clap_with_equal_weights(tmp_path: Path) -> None:
    module = _tiny_multitask()
    path = tmp_path / "multitask.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    clap = CLAP(ModelConfig(**{k: v for k, v in TINY_MODEL.items()}))
    init_audio_encoder(clap.audio_encoder, path)
    expected = module.model.audio_encoder.state_dict()
    loaded = clap.audio_encoder.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_export_into_another_architecture_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "wide.ckpt"
    wide = _tiny_multitask(embed_dim=64)
    torch.save({"state_dict": wide.state_dict(), "hyper_parameters": dict(wide.hparams)}, path)
    clap = CLAP(ModelConfig(**TINY_MODEL))
    with pytest.raises(CheckpointError, match=r"does not match model.audio_encoder: .*shape .*patch_embed"):
        init_audio_encoder(clap.audio_encoder, path)
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}, "hyper_parameters": {"config": {}}}, path)
    with pytest.raises(CheckpointError, match="holds no audio encoder"):
        init_audio_encoder(clap.audio_encoder, path)
    with pytest.raises(CheckpointError, match="not found"):
        init_audio_encoder(clap.audio_encoder, tmp_path / "missing.ckpt")



def test_export_with_another_front_end_is_refused(tmp_path: Path) -> None:
    model = {**TINY_MODEL, "audio_encoder": {**TINY_MODEL["audio_encoder"], "fmax": 7000.0}}
    module = MultiTaskPretraining({"model": model, "tasks": [{"name": "a", "shards": "x", "classes": ["u", "v"]}]})
    path = tmp_path / "other_front_end.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(CheckpointError, match="another front end .*fmax 7000.0 vs 8000.0"):
        init_audio_encoder(CLAP(ModelConfig(**TINY_MODEL)).audio_encoder, path)


def test_validation_over_several_tasks_own_splits_logs_one_loss(tmp_path: Path) -> None:
    """htsat22.yaml gives tasks their own validation shards: one fit validates them all (it used to be refused:
    'You called self.log(val/loss, ...) twice ... with different arguments')."""
    from clap_lightning.lit.multitask import fit_multitask

    for name, count in (("a", 6), ("b", 3), ("va", 3), ("vb", 5)):
        shard = Path(write_good_shards(tmp_path / name, name, 1, count)[0])
        (tmp_path / name / "manifest.json").write_text(json.dumps({"shards": [{"name": shard.name, "count": count}],
                                                                   "num_samples": count}))
    tasks = [{"name": task, "shards": str(tmp_path / task), "val": str(tmp_path / f"v{task}"), "label_field": "labels",
              "kind": "single", "classes": ["tone", "hum"]} for task in ("a", "b")]
    config = config_from(
        MultiTaskConfig,
        {
            "model": TINY_MODEL,
            "tasks": tasks,
            "run_dir": str(tmp_path / "run"),
            "data": {
                "global_batch_size": 4,
                "num_workers": 0,
                "shuffle_buffer": 4,
                "epoch_samples": 8,
                "eval_batch_size": 2,
            },
            "trainer": {"accelerator": "cpu", "max_steps": 2, "enable_progress_bar": False, "log_every_n_steps": 1},
        },
    )
    fit_multitask(config)
    rows = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"val/loss", "val/a/acc", "val/b/acc"} <= set(header)
    validated = [dict(zip(header, row.split(","))) for row in rows[1:]]
    assert sum(1 for row in validated if row["val/loss"]) == 1 and float(next(r["val/loss"] for r in validated
                                                                               if r["val/loss"])) > 0
