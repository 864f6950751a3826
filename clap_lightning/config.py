"""Run configuration: dataclass schemas, YAML composition, overrides and validation.

Every run's schema extends `RunConfig` (name, seed, run_dir, trainer, optim): contrastive
pretraining `ExperimentConfig` (here), multi-task `MultiTaskConfig` (lit/multitask_config.py)
and captioning `CaptioningConfig` (lit/captioning_config.py). One loader reads them all:

    config = load_config(ExperimentConfig, "configs/experiment/demo.yaml", ["trainer.max_steps=100"])

A YAML names one file per group under `defaults` and lists only what it changes:

    defaults: {model: tiny, data: demo, trainer: cpu}
    name: demo
    optim: {lr: 1e-3}

Each group file (`configs/<group>/<name>.yaml`) holds that section's keys. Everything is
merged onto the schema, then `key=value` overrides from the command line (`tasks.0.weight=2`
reaches a list item), so an unknown key or a wrong type fails here, with the key's dotted
name, before any data or model is touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clap_lightning.errors import ConfigError, first_line

PAD_MODES = ("repeat", "zero", "none")  # data.pad_mode: tile, zero-pad, or cut each batch to its longest clip
CONFIG_GROUPS = ("model", "data", "trainer", "optim")


@dataclass(frozen=True)
class Range:
    """The values a numeric field admits: bounds (`ge`/`gt`/`le`/`lt`) and one extra value (`or_`, e.g. -1)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    or_: Optional[float] = None

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # types are OmegaConf's to check
        if self.or_ is not None and value == self.or_:
            return True
        return (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts) + (f" (or {self.or_:g})" if self.or_ is not None else "")


def bounded(default: Any, **limits: float) -> Any:
    """A dataclass field whose value `check_ranges` keeps within `Range(**limits)` (every item, for a list)."""
    if isinstance(default, list):
        items = list(default)
        return field(default_factory=lambda: list(items), metadata={"range": Range(**limits)})
    return field(default=default, metadata={"range": Range(**limits)})


def check_ranges(config: Any, prefix: str = "") -> None:
    """Raise a ConfigError naming the first field, by dotted key, whose value is outside its `bounded` range.

    Walks nested dataclasses and lists of them, so a root schema's `__post_init__` checks the whole tree.
    """
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else None
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
        for i, item in items or []:
            if dataclasses.is_dataclass(item):
                check_ranges(item, f"{key}[{i}].")
        allowed = f.metadata.get("range")
        if allowed is None or value is None:
            continue
        for where, item in ([(f"{key}[{i}]", v) for i, v in items] if items is not None else [(key, value)]):
            if not allowed.admits(item):
                raise ConfigError(f"{where} must be {allowed}, got {item}")


@dataclass
class ModelConfig:
    """The CLAP model: two encoders, two projections and a temperature."""

    sample_rate: int = bounded(44100, ge=1)  # rate of the waveforms the model takes (the loader resamples to it)
    clip_seconds: float = bounded(7.0, gt=0)  # clip length the loader crops/pads to
    d_proj: int = bounded(1024, ge=1)  # joint embedding size
    proj_dropout: float = bounded(0.5, ge=0, lt=1)  # dropout inside the projection heads (msclap: 0.5)
    logit_scale_init: float = math.log(1 / 0.07)  # initial log temperature, as CLIP
    projection: str = "msclap"  # projection heads: msclap (linear-GELU-linear, residual, LayerNorm) or mlp (LAION)
    text_logit_scale: bool = False  # also keep LAION's `logit_scale_t` (saved and exported; the loss uses logit_scale)
    audio_encoder: dict = field(default_factory=lambda: {"name": "htsat"})  # `name` + that encoder's config
    text_encoder: dict = field(default_factory=lambda: {"name": "gpt2"})  # `name` + that encoder's config
    audio_encoder_init: str = ""  # checkpoint (e.g. multi-task) whose audio encoder a fresh `fit` starts from
    # a whole model (.ckpt, or an exported folder) a fresh `fit` starts from; its architecture is the base
    init_from: str = ""
    compile: bool = False  # torch.compile the audio and text encoders for training (in place: checkpoints unchanged)
    # how embed_audio and evaluation pad a short clip: "" = zeros when the encoder masks padding, else
    # tiling (msclap); "repeatpad" = whole copies then zeros (LAION-CLAP, transformers' ClapFeatureExtractor)
    pad_mode: str = ""

    def __post_init__(self) -> None:
        if self.pad_mode not in ("", "repeat", "repeatpad", "zero"):
            raise ConfigError(f"model.pad_mode must be '', repeat, repeatpad or zero; got '{self.pad_mode}'")
        if self.init_from and self.audio_encoder_init:
            raise ConfigError("model.init_from (a whole model) and model.audio_encoder_init (its audio encoder) "
                              "both set: keep one")

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


@dataclass
class SourceConfig:
    """One weighted training source."""

    shards: str = ""  # shard specification, same forms as data.train
    weight: float = bounded(1.0, gt=0)  # relative share of training samples drawn from this source


@dataclass
class AugmentConfig:
    """Waveform augmentations of training clips in the loader, each with its probability (all off by default).

    Every draw is seeded by the sample's stream position, so a resumed run repeats them exactly.
    """

    gain_prob: float = bounded(0.0, ge=0, le=1)  # chance of a random gain
    gain_db: float = bounded(6.0, ge=0)  # the gain is uniform in [-gain_db, +gain_db] dB
    shift_prob: float = bounded(0.0, ge=0, le=1)  # chance of a circular time shift within the crop
    shift_max: float = bounded(0.5, ge=0, le=1)  # largest shift, as a fraction of the clip
    noise_prob: float = bounded(0.0, ge=0, le=1)  # chance of adding a noise clip from noise_shards
    noise_shards: str = ""  # noise shards (same forms as data.train; captions unused)
    noise_bank: int = bounded(64, ge=1)  # noise clips each worker holds: the first of noise_shards
    noise_snr_db: list = bounded([5.0, 30.0])  # [low, high]: signal-to-noise ratio drawn uniformly in dB
    mixup_prob: float = bounded(0.0, ge=0, le=1)  # chance a clip is mixed with another of its batch, captions joined


@dataclass
class DataConfig:
    """Where shards are and how batches are made."""

    train: str = ""  # train shards: a split dir with manifest.json, a brace pattern, or a .txt list
    train_sources: list[SourceConfig] = field(default_factory=list)  # weighted train sources (instead of data.train)
    exclude_list: str = ""
    # json field of a clip's class labels (label-aware negatives, mixup); `labels` falls back to LAION's `tag`
    label_field: str = "labels"
    seed: int = 0  # seeds the training streams with (seed, epoch, rank, worker, position)
    val: str = ""  # validation shards, same forms ("" = no validation)
    test: str = ""  # test shards, same forms
    global_batch_size: int = bounded(64, ge=1)  # pairs per optimizer step over all devices (paper: 1536)
    num_workers: int = bounded(2, ge=0)  # loader worker processes per device
    shuffle_buffer: int = bounded(1000, ge=0)  # samples held for shuffling in training
    epoch_samples: int = bounded(0, ge=0)  # training samples per epoch; 0 = one pass over the train manifest
    pad_mode: str = "repeat"  # short clips: "repeat" (msclap), "zero", or "none" (batch cut to its longest clip)
    bucket_batches: int = bounded(0, ge=0)  # pad_mode none: batches per pool sorted by clip length (0 or 1: off)
    eval_batch_size: int = bounded(64, ge=1)  # per-device batch for validation, test and zero-shot
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # waveform augmentations in training

    def training_sources(self) -> list[SourceConfig]:
        """`train_sources`, or `train` as a single source of weight 1."""
        return list(self.train_sources) if self.train_sources else [SourceConfig(self.train, 1.0)]


@dataclass
class TensorBoardOptions:
    """`trainer.tensorboard`: event files under `<run_dir>/<name>/version_N/`."""

    name: str = "tensorboard"  # folder under run_dir


@dataclass
class WandbOptions:
    """`trainer.wandb`: Weights & Biases; offline by default (files under `<run_dir>/wandb/`, `wandb sync` uploads)."""

    project: str = "clap-lightning"  # W&B project
    entity: str = ""  # W&B team or user ("" = the account's default)
    mode: str = "offline"  # offline (no network) or online
    tags: list = field(default_factory=list)  # run tags


@dataclass
class MLflowOptions:
    """`trainer.mlflow`: MLflow tracking; a local file store under the run folder by default."""

    tracking_uri: str = ""  # "" = file:<run_dir>/mlruns; or http://host:5000, sqlite:///path.db
    experiment: str = "clap-lightning"  # MLflow experiment name


@dataclass
class TrainerConfig:
    """Arguments passed to `lightning.Trainer`."""

    accelerator: str = "auto"  # cpu, gpu, auto
    devices: int = bounded(1, ge=1)  # devices per node
    num_nodes: int = bounded(1, ge=1)  # nodes
    strategy: str = "auto"  # auto (= ddp on several devices), ddp, or deepspeed (with deepspeed_config)
    deepspeed_config: str = ""  # DeepSpeed JSON when strategy is deepspeed, e.g. configs/deepspeed/zero2.json
    precision: str = "32-true"  # 32-true, bf16-mixed, ...
    max_steps: int = bounded(-1, ge=1, or_=-1)  # optimizer steps (-1 = use max_epochs)
    max_epochs: int = bounded(1, ge=1, or_=-1)  # epochs when max_steps is -1
    accumulate_grad_batches: int = bounded(1, ge=1)  # micro-batches per optimizer step
    gradient_clip_val: Optional[float] = bounded(None, ge=0)  # clip gradient norm (None = off)
    log_every_n_steps: int = bounded(10, ge=1)  # logging interval in steps
    val_check_interval: Optional[float] = bounded(None, gt=0)  # > 1: validate every N steps; <= 1: fraction of an epoch
    limit_val_batches: Optional[float] = bounded(None, ge=0)  # cap validation batches
    enable_progress_bar: bool = True  # Lightning's progress bar
    checkpoint_every_n_steps: int = bounded(0, ge=0)  # save a checkpoint every N steps (0 = at epoch end only)
    loggers: list = field(default_factory=lambda: ["csv"])  # any of csv, tensorboard, wandb, mlflow
    tensorboard: TensorBoardOptions = field(default_factory=TensorBoardOptions)  # when loggers has tensorboard
    wandb: WandbOptions = field(default_factory=WandbOptions)  # when loggers has wandb
    mlflow: MLflowOptions = field(default_factory=MLflowOptions)  # when loggers has mlflow
    peak_tflops: float = bounded(0.0, ge=0)  # a device's peak TFLOP/s for MFU; 0 = the GPU's by name (CPU: none)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay."""

    lr: float = bounded(1e-4, gt=0)  # peak learning rate
    weight_decay: float = bounded(0.2, ge=0)  # AdamW weight decay (not applied to norms, biases, logit scale)
    betas: list = bounded([0.9, 0.98], ge=0, lt=1)  # AdamW betas
    eps: float = bounded(1e-6, gt=0)  # AdamW epsilon
    warmup_steps: int = bounded(100, ge=0)  # linear warmup steps
    min_lr_ratio: float = bounded(0.0, ge=0, le=1)  # final lr as a fraction of lr at the end of the cosine
    fused: bool = False  # torch's fused AdamW (CUDA and CPU): the same update in fewer kernel launches

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must hold two numbers (beta1, beta2), got {list(self.betas)}")


ACCUMULATION_MODES = ("plain", "gradcache")


@dataclass
class ObjectiveConfig:
    """The contrastive objective and which towers it trains. Features are always gathered with gradients."""

    use_local_loss: bool = False  # this rank's rows against all columns: memory O(b*W*b) not O((W*b)^2), same grads
    accumulation: str = "plain"  # with accumulate_grad_batches > 1: plain (negatives = one micro-batch) or gradcache
    # pairs with the same caption or the same label set: keep (negatives), mask (not negatives) or multi_positive
    false_negatives: str = "keep"
    freeze_audio_encoder: bool = False  # audio encoder in eval mode without gradients (its projection still trains)
    freeze_text_encoder: bool = False  # text encoder in eval mode without gradients (msclap froze GPT2)


def normalize_prompt(template: str, where: str = "zeroshot.prompt") -> str:
    """A class-name template with exactly one placeholder, `{}` or `{class}`, returned in the `{}` form.

    Literal braces are written `{{` and `}}`, as in `str.format`.

    Raises:
        ConfigError: no placeholder (every class would get the same text), several, another
            name such as `{label}`, or unbalanced braces; naming `where` (a key or a flag).
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(f"{where} {template!r} is not a template: {err}") from None
    names = [name for _, name, _, _ in parts if name is not None]
    if names not in ([""], ["class"]):
        found = ", ".join("{" + name + "}" for name in names) or "none"
        raise ConfigError(f"{where} {template!r} must hold one class placeholder, {{}} or {{class}}; found {found}")
    out = ""
    for literal, name, spec, conversion in parts:
        out += literal.replace("{", "{{").replace("}", "}}")
        if name is not None:
            out += "{" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    return out


@dataclass
class ZeroShotConfig:
    """Zero-shot classification settings."""

    prompt: str = "this is a sound of {}"  # class-name template: one `{}` or `{class}`
    label_field: str = "labels"  # json field holding the class labels

    def __post_init__(self) -> None:
        self.prompt = normalize_prompt(self.prompt)


@dataclass
class EvalConfig:
    """Registry tasks scored during pretraining validation (lit/eval_callback.py)."""

    tasks: str = ""  # comma-separated task names or a group, e.g. "demo" or "esc50,clotho" ("" = none)
    data: str = ""  # root holding <source>/<split>/ shard folders of those tasks
    every_n_val: int = bounded(1, ge=1)  # run the tasks at every N-th validation
    batch_size: int = bounded(64, ge=1)  # clips per forward pass
    ensemble_prompts: bool = False  # average every prompt template of a task (else the first)


@dataclass
class RunConfig:
    """What every run has; the pretraining, multi-task and captioning schemas extend it."""

    name: str = "run"  # run name
    seed: int = 0  # global seed
    run_dir: str = "runs/${name}"  # checkpoints, logs, resolved config and reports go here
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        check_ranges(self)

    def validate(self) -> None:
        """Checks across sections, run by `load_config` and `config_from`."""
        validate_trainer(self.trainer)


@dataclass
class ExperimentConfig(RunConfig):
    """A contrastive pretraining run."""

    name: str = "clap"  # run name
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: bool = False  # write <run_dir>/report.html when fit ends (as `clap-lightning report RUN_DIR`)

    def validate(self) -> None:
        validate_experiment(self)


RunConfigT = TypeVar("RunConfigT", bound=RunConfig)


def _merge(base: DictConfig, other: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{origin}: bad config key '{key}': {first_line(err)}") from None
    except TypeError as err:  # OmegaConf: "Cannot merge incompatible container types", with no key
        raise ConfigError(f"{origin}: bad config key '{_container_mismatch(base, other)}': {first_line(err)} "
                          "(a list where a mapping belongs, or the reverse)") from None


def _container_mismatch(base: Any, other: Any, prefix: str = "") -> str:
    """The first dotted key where `other` holds a list and `base` a mapping, or the reverse ("?" if none)."""
    def kind(value: Any) -> Optional[str]:
        return (
            "map"
            if isinstance(value, (dict, DictConfig))
            else "list"
            if isinstance(value, (list, ListConfig))
            else None
        )

    if kind(other) != "map" or kind(base) != "map":
        return prefix.rstrip(".") or "?"
    for key, value in other.items():
        try:
            have = base._get_node(key) if isinstance(base, DictConfig) else base.get(key)
        except (KeyError, AttributeError, OmegaConfBaseException):
            continue
        have = have._value() if hasattr(have, "_value") and not isinstance(have, (DictConfig, ListConfig)) else have
        if kind(value) and kind(have) and kind(value) != kind(have):
            return f"{prefix}{key}"
        if kind(value) == "map" and kind(have) == "map":
            found = _container_mismatch(have, value, f"{prefix}{key}.")
            if found != "?":
                return found
    return "?"


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report, do not dump a traceback
        raise ConfigError(f"cannot parse {path}: {first_line(err)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at top level")
    return loaded


def compose_layers(path: Path) -> list[tuple[str, DictConfig]]:
    """Expand `defaults` of an experiment file into (origin, section-config) layers."""
    experiment = _read_yaml(path)
    layers = []
    defaults = experiment.pop("defaults", None) or {}
    root = path.resolve().parent.parent  # configs/experiment/x.yaml -> configs/
    for group, name in dict(defaults).items():
        if group not in CONFIG_GROUPS:
            raise ConfigError(f"{path}: unknown config group '{group}' in defaults; known: {', '.join(CONFIG_GROUPS)}")
        group_file = root / group / f"{name}.yaml"
        layers.append((str(group_file), OmegaConf.create({group: _read_yaml(group_file)})))
    layers.append((str(path), experiment))
    return layers


def check_override(item: str) -> None:
    """Raise a ConfigError unless a command-line override reads `key=value`."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")


def read_overrides(path: str | Path) -> list[str]:
    """Read `key=value` overrides from a file: one a line, '#' starts a comment line (e.g. configs/rehearsal/)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    overrides = [line for line in lines if line and not line.startswith("#")]
    for item in overrides:
        check_override(item)
    return overrides


def load_config(schema: type[RunConfigT], path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> RunConfigT:
    """Compose a YAML (with optional `defaults`) onto `schema`, apply overrides, validate.

    Args:
        schema: `ExperimentConfig`, `MultiTaskConfig`, `CaptioningConfig` or another `RunConfig`.
        path: the YAML, or None for the schema defaults.
        overrides: `key=value` strings, e.g. `trainer.max_steps=100` or `tasks.0.weight=2`.

    Raises:
        ConfigError: one line naming the file or override and the offending key.
    """
    if not (isinstance(schema, type) and issubclass(schema, RunConfig)):
        raise TypeError(f"load_config(schema, path, overrides): schema must be a RunConfig such as ExperimentConfig, "
                        f"got {schema!r}")
    layers = compose_layers(Path(path)) if path else []
    merged = compose(schema, OmegaConf.structured(schema), layers, overrides)
    init_from = OmegaConf.select(merged, "model.init_from", default="")
    if init_from:  # the architecture comes from the weights; the run's own model keys apply on top
        base = _merge(OmegaConf.structured(schema), {"model": read_model_section(init_from)}, init_from)
        merged = compose(schema, base, layers, overrides)
    return config_from(schema, merged)


def compose(schema: type, merged: DictConfig, layers: Sequence[tuple[str, DictConfig]],
            overrides: Sequence[str]) -> DictConfig:
    """Merge YAML layers, then `key=value` overrides, onto `merged`."""
    for origin, layer in layers:
        check_list_items(schema, layer, origin)
        merged = _merge(merged, layer, origin)
    for item in overrides:
        check_override(item)
        key, raw = item.split("=", 1)
        try:  # typed as YAML reads it; interpolations such as runs/${name} resolve later, in the whole config
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]), resolve=False)["value"]
        except Exception as err:  # yaml.YAMLError, OmegaConf grammar errors
            raise ConfigError(f"override '{item}': cannot read the value: {first_line(err)}") from None
        try:
            OmegaConf.update(merged, key.strip(), value, merge=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"override '{item}': bad config key '{getattr(err, 'full_key', None) or key}': "
                              f"{first_line(err)}") from None
        except TypeError as err:  # a list where a mapping belongs, or the reverse
            raise ConfigError(f"override '{item}': bad config key '{key.strip()}': {first_line(err)}") from None
    return merged


def read_model_section(source: str) -> dict:
    """The model section of a whole model to start from: a clap-lightning checkpoint's stored config, an
    exported folder's config.yaml, or a Hugging Face `ClapModel` folder's config.json (read, not its weights)."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        from clap_lightning.convert.hf import model_config_from_hf  # convert imports this module

        return model_config_from_hf(json.loads((path / "config.json").read_text()), str(path.resolve()))
    if path.is_dir() and (path / "config.yaml").is_file():
        return dict(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))).get("model", {})
    if path.is_dir():
        raise ConfigError(f"model.init_from: {path} holds neither config.yaml (clap-lightning export) "
                          "nor config.json (Hugging Face ClapModel)")
    from clap_lightning.checkpoint import read_lightning_checkpoint  # torch: configs load without it

    return read_lightning_checkpoint(path)[1].get("model", {})


def check_list_items(schema: type, layer: Any, origin: str, prefix: str = "") -> None:
    """Check each item of a list-of-dataclass field against its schema, so an error names `tasks[i].key`."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        value = layer.get(f.name) if hasattr(layer, "get") else None
        if value is None:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            check_list_items(kind, value, origin, f"{prefix}{f.name}.")
        elif (typing.get_origin(kind) is list and dataclasses.is_dataclass(item_kind := typing.get_args(kind)[0])
              and isinstance(value, (list, ListConfig))):  # not a list at all: the merge names the key
            for i, item in enumerate(value):
                try:
                    OmegaConf.merge(OmegaConf.structured(item_kind), item)
                except OmegaConfBaseException as err:
                    raise ConfigError(
                        f"{origin}: bad config key '{prefix}{f.name}[{i}].{getattr(err, 'full_key', '?')}': "
                        f"{first_line(err)}"
                    ) from None


def config_from(
    schema: type[RunConfigT], data: Union[RunConfigT, DictConfig, dict], origin: str = "config"
) -> RunConfigT:
    """Build and validate a `schema` instance from plain dicts (e.g. a checkpoint's), a DictConfig or an instance."""
    if isinstance(data, schema):
        config = data
    else:
        # Already on the schema (load_config's result): no second merge, which costs as much as the first.
        is_typed = isinstance(data, DictConfig) and OmegaConf.get_type(data) is schema
        merged = data if is_typed else _merge(OmegaConf.structured(schema), data, origin)
        try:
            OmegaConf.resolve(merged)
            config = OmegaConf.to_object(merged)
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad config key '{getattr(err, 'full_key', '?')}': {first_line(err)}") from None
    config.validate()
    return config


def validate_model(model: ModelConfig) -> None:
    """Check the registry-selected encoder sections against their own schemas, and the sample rates."""
    # Imported here so that reading a config (the CLI, data tools) does not import torch.
    from clap_lightning.encoders.registry import AUDIO_ENCODERS, TEXT_ENCODERS, import_builtin_encoders

    import_builtin_encoders()
    for registry, section, where in (
        (AUDIO_ENCODERS, model.audio_encoder, "model.audio_encoder"),
        (TEXT_ENCODERS, model.text_encoder, "model.text_encoder"),
    ):
        options = dict(section)
        name = options.pop("name", None)
        if name is None:
            raise ConfigError(f"{where}.name is missing; known: {', '.join(registry.names())}")
        try:
            registry.parse_config(name, options, where=where)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    audio_rate = model.audio_encoder.get("sample_rate")
    if audio_rate is not None and audio_rate != model.sample_rate:
        raise ConfigError(f"model.sample_rate ({model.sample_rate}) differs from "
                          f"model.audio_encoder.sample_rate ({audio_rate}); they must agree")


def validate_trainer(trainer: TrainerConfig) -> None:
    """Check strategy switches that only make sense together."""
    if trainer.strategy == "deepspeed" and not trainer.deepspeed_config:
        raise ConfigError("trainer.strategy is deepspeed but trainer.deepspeed_config is empty; "
                          "name a JSON file such as configs/deepspeed/zero2.json")
    if trainer.deepspeed_config and trainer.strategy != "deepspeed":
        raise ConfigError(f"trainer.deepspeed_config is set but trainer.strategy is '{trainer.strategy}', "
                          "expected deepspeed")


def validate_experiment(config: ExperimentConfig) -> None:
    """Check a pretraining run: encoders, data sources, objective and strategy switches."""
    from clap_lightning.objectives import FALSE_NEGATIVE_MODES  # torch: configs load without it

    validate_model(config.model)
    if config.data.train and config.data.train_sources:
        raise ConfigError("set either data.train or data.train_sources, not both")
    if config.data.pad_mode not in PAD_MODES:
        raise ConfigError(f"data.pad_mode must be one of {', '.join(PAD_MODES)}; got '{config.data.pad_mode}'")
    if config.data.pad_mode == "none" and not config.model.audio_encoder.get("mask_padding"):
        raise ConfigError("data.pad_mode 'none' needs model.audio_encoder.mask_padding: true "
                          "(without the mask, HTSAT stretches a shorter batch in time)")
    augment = config.data.augment
    if augment.noise_prob > 0 and not augment.noise_shards:
        raise ConfigError("data.augment.noise_prob is set but data.augment.noise_shards is empty; name noise shards")
    if len(augment.noise_snr_db) != 2 or augment.noise_snr_db[0] > augment.noise_snr_db[1]:
        raise ConfigError(f"data.augment.noise_snr_db must be [low, high] with low <= high, got {augment.noise_snr_db}")
    objective, trainer = config.objective, config.trainer
    if objective.accumulation not in ACCUMULATION_MODES:
        raise ConfigError(f"objective.accumulation must be one of {', '.join(ACCUMULATION_MODES)}, "
                          f"got '{objective.accumulation}'")
    if objective.false_negatives not in FALSE_NEGATIVE_MODES:
        raise ConfigError(f"objective.false_negatives must be one of {', '.join(FALSE_NEGATIVE_MODES)}, "
                          f"got '{objective.false_negatives}'")
    validate_trainer(trainer)
    if config.report and "csv" not in trainer.loggers:
        raise ConfigError(
            "report is true but trainer.loggers has no csv: the report draws its curves from the CSV logs"
        )
    if objective.accumulation == "gradcache" and trainer.strategy.startswith("deepspeed"):
        raise ConfigError("objective.accumulation=gradcache runs under DDP only; "
                          f"found trainer.strategy={trainer.strategy}")


def to_container(config: RunConfig) -> dict:
    """The resolved config as plain dicts and lists (for checkpoints and YAML)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def write_yaml(data: dict, path: str | Path) -> None:
    """Write plain dicts and lists as YAML, atomically (creating the parent folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(data))
    tmp.replace(path)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    write_yaml(to_container(config), path)


def local_batch_size(global_batch_size: int, trainer: TrainerConfig, is_gradcache: bool = False) -> int:
    """Per-device loader batch: global batch / (devices x nodes x accumulation), or refuse.

    With GradCache (`objective.accumulation=gradcache`) the loader yields all
    `accumulate_grad_batches` micro-batches of a step at once (global / (devices x nodes));
    the module splits them.

    Raises:
        ConfigError: naming the numbers when they do not divide.
    """
    t = trainer
    replicas = t.devices * t.num_nodes * t.accumulate_grad_batches
    if global_batch_size % replicas:
        raise ConfigError(
            f"data.global_batch_size {global_batch_size} is not divisible by devices {t.devices} "
            f"x num_nodes {t.num_nodes} x accumulate_grad_batches {t.accumulate_grad_batches} = {replicas}")
    micro_batch = global_batch_size // replicas
    return micro_batch * t.accumulate_grad_batches if is_gradcache else micro_batch


def pretraining_batch_size(config: ExperimentConfig) -> int:
    """`local_batch_size` of a contrastive pretraining run (its objective decides GradCache)."""
    return local_batch_size(config.data.global_batch_size, config.trainer, config.objective.accumulation == "gradcache")
