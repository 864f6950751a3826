"""Multi-task pretraining config: task heads, sources, temperature sampling; load, validate, resolve.

A multi-task YAML (`configs/multitask/*.yaml`) composes like an experiment YAML
(`defaults: {model: tiny, trainer: cpu}`; `load_config(MultiTaskConfig, path, overrides)`)
and lists its tasks:

    tasks:
      - {name: demo_class, shards: data/shards/demo/train, val: data/shards/demo/valid,
         label_field: labels, kind: single}
      - {name: nsynth_family, shards: .../nsynth/train, label_field: labels, kind: single,
         classes: [bass, brass, ...]}

Tasks naming the same `shards` share one training source: each of its clips carries a
label for every such task (NSynth: pitch, velocity, family, ...). Sources are drawn with
probability p_i proportional to n_i^(1/T) (n_i: manifest sample count, T:
`data.temperature`) through the loader's weighted `train_sources` mixing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Optional

from clap_lightning.config import DataConfig, ModelConfig, RunConfig, SourceConfig, bounded, validate_model
from clap_lightning.data.multitask import TaskLabelSpec, scan_field, sort_class_names, temperature_weights
from clap_lightning.data.sources import resolve_shards
from clap_lightning.errors import ConfigError, DataError
from clap_lightning.models.multitask import TASK_KINDS, HeadSpec

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # a log key part and a ModuleDict key (no dots)


@dataclass
class TaskHeadConfig:
    """One supervised task: where its clips are, which json field labels them, and its head."""

    name: str = ""  # task name, used in log keys (val/<name>/acc) and as the head's name
    shards: str = ""  # training shards (split dir with manifest.json, brace pattern, .txt list, or a::b)
    val: str = ""  # validation shards ("" = no validation metric for this task)
    label_field: str = "labels"  # json field holding the label(s) or the value
    kind: str = "single"  # single (cross-entropy), multi (clip-level BCE) or regression (MSE)
    classes: list[str] = field(default_factory=list)  # class names; [] = every value found in the shards
    weight: float = bounded(1.0, gt=0)  # factor of this task's loss in the sum
    mean: Optional[float] = None  # regression: target mean (None = computed from the training shards)
    std: Optional[float] = bounded(None, gt=0)  # regression: target std (None = computed from the training shards)


@dataclass
class MultiTaskDataConfig:
    """How the tasks' shards are mixed and batched."""

    temperature: float = bounded(2.0, gt=0)  # source i drawn with p ~ n_i^(1/T): 1 = by size, large = uniform
    global_batch_size: int = bounded(64, ge=1)  # clips per optimizer step over all devices
    num_workers: int = bounded(2, ge=0)  # loader worker processes per device
    shuffle_buffer: int = bounded(1000, ge=0)  # clips held for shuffling in training
    epoch_samples: int = bounded(0, ge=0)  # training clips per epoch; 0 = the sources' total
    pad_mode: str = "repeat"  # short clips: "repeat" or "zero"
    eval_batch_size: int = bounded(64, ge=1)  # per-device batch for validation
    seed: int = 0  # seeds the training streams


@dataclass
class MultiTaskConfig(RunConfig):
    """A multi-task pretraining run of one audio encoder."""

    name: str = "multitask"  # run name
    model: ModelConfig = field(default_factory=ModelConfig)  # uses sample_rate, clip_seconds, audio_encoder(_init)
    head_dropout: float = bounded(0.1, ge=0, lt=1)  # dropout on the embedding before the task heads
    tasks: list[TaskHeadConfig] = field(default_factory=list)  # the tasks, one head each
    data: MultiTaskDataConfig = field(default_factory=MultiTaskDataConfig)

    def validate(self) -> None:
        super().validate()
        validate_multitask(self)


def validate_multitask(config: MultiTaskConfig) -> None:
    """Check the tasks and the encoder section; reads no shard."""
    if not config.tasks:
        raise ConfigError("tasks is empty: list at least one task")
    names = [task.name for task in config.tasks]
    for i, task in enumerate(config.tasks):
        where = f"tasks[{i}]"
        if not _TASK_NAME.match(task.name):
            raise ConfigError(f"{where}.name must be letters, digits and '_', starting with a letter; "
                              f"got '{task.name}'")
        if names.count(task.name) > 1:
            raise ConfigError(f"{where}.name '{task.name}' is used by {names.count(task.name)} tasks; "
                              "names must be unique")
        if task.kind not in TASK_KINDS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(TASK_KINDS)}; got '{task.kind}'")
        if not task.shards:
            raise ConfigError(f"{where}.shards is empty: name the task's training shards")
        if not task.label_field:
            raise ConfigError(f"{where}.label_field is empty")
        if task.kind == "regression" and task.classes:
            raise ConfigError(f"{where}.classes must be empty for a regression task; got {len(task.classes)}")
        if len(set(task.classes)) != len(task.classes):
            raise ConfigError(f"{where}.classes lists a class twice")
    if config.data.pad_mode not in ("repeat", "zero"):
        raise ConfigError(f"data.pad_mode must be 'repeat' or 'zero', got '{config.data.pad_mode}'")
    validate_model(config.model)


def resolve_tasks(config: MultiTaskConfig) -> MultiTaskConfig:
    """Fill in classes and regression statistics left empty, from the training shards' jsons.

    Each (shards, field) pair is read once. The result is stored in every checkpoint, so
    the heads are rebuilt without the shards.

    Raises:
        DataError: a task's shards are missing, or hold no value for its field.
    """
    scans: dict[tuple[str, str], tuple] = {}
    tasks = []
    for task in config.tasks:
        needs_classes = task.kind != "regression" and not task.classes
        needs_stats = task.kind == "regression" and (task.mean is None or task.std is None)
        if needs_classes or needs_stats:
            key = (task.shards, task.label_field)
            if key not in scans:
                scans[key] = scan_field(resolve_shards(task.shards).urls, task.label_field)
            names, numbers = scans[key]
            if needs_classes and not names:
                raise DataError(f"task {task.name}: no '{task.label_field}' value in {task.shards} "
                                "to take classes from")
            if needs_stats and len(numbers) < 2:
                raise DataError(f"task {task.name}: fewer than 2 numeric '{task.label_field}' values in {task.shards}")
            if needs_classes:
                task = replace(task, classes=sort_class_names(names))
            if needs_stats:
                mean = sum(numbers) / len(numbers)
                std = math.sqrt(sum((x - mean) ** 2 for x in numbers) / len(numbers)) or 1.0
                task = replace(task, mean=mean if task.mean is None else task.mean,
                               std=std if task.std is None else task.std)
        tasks.append(task)
    return replace(config, tasks=tasks)


@dataclass
class SourcePlan:
    """Distinct training shard specs with their sampling weights, and distinct validation specs."""

    train: list[str]  # one per training source, in order of first appearance among the tasks
    weights: list[float]  # sampling probabilities, summing to 1
    val: list[str]  # one per validation source


def plan_sources(config: MultiTaskConfig) -> SourcePlan:
    """Group tasks into sources and weigh them by temperature over their manifests' sample counts.

    Raises:
        DataError: shards missing, or without a manifest stating their sample count.
    """
    train = list(dict.fromkeys(task.shards for task in config.tasks))
    counts = []
    for spec in train:
        count = resolve_shards(spec).num_samples
        if not count:
            raise DataError(f"temperature sampling needs sample counts, but {spec} has no manifest.json stating them")
        counts.append(count)
    val = list(dict.fromkeys(task.val for task in config.tasks if task.val))
    for spec in val:
        resolve_shards(spec)  # missing validation shards fail now, not after the first epoch
    return SourcePlan(train, temperature_weights(counts, config.data.temperature), val)


def head_specs(config: MultiTaskConfig) -> list[HeadSpec]:
    """The heads of a resolved config (classes known)."""
    specs = []
    for task in config.tasks:
        if task.kind != "regression" and not task.classes:
            raise ConfigError(f"task {task.name} has no classes; resolve_tasks fills them from the shards")
        specs.append(HeadSpec(task.name, task.kind, 1 if task.kind == "regression" else len(task.classes), task.weight))
    return specs


def label_specs(config: MultiTaskConfig, sources: list[str], stage: str) -> list[TaskLabelSpec]:
    """Label specs of every task; `sources` are the plan's train or val specs (`stage`: "train" or "val")."""
    specs = []
    for task in config.tasks:
        spec = task.shards if stage == "train" else task.val
        indices = tuple(i for i, s in enumerate(sources) if s == spec)
        specs.append(TaskLabelSpec(task.name, task.kind, task.label_field, tuple(task.classes), indices,
                                   task.mean or 0.0, task.std or 1.0))
    return specs


def multitask_data_config(config: MultiTaskConfig, plan: SourcePlan) -> DataConfig:
    """The contrastive loader's data section for this run: the plan's sources with their temperature weights."""
    d = config.data
    return DataConfig(train_sources=[SourceConfig(spec, w) for spec, w in zip(plan.train, plan.weights)],
                      seed=d.seed, global_batch_size=d.global_batch_size, num_workers=d.num_workers,
                      shuffle_buffer=d.shuffle_buffer, epoch_samples=d.epoch_samples, pad_mode=d.pad_mode,
                      eval_batch_size=d.eval_batch_size)
