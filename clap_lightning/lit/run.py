"""Build the Trainer, the module and the data for a config; load checkpoints with clear errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

from clap_lightning.checkpoint import PRETRAINING, check_resumable, load_stored_state, read_lightning_checkpoint
from clap_lightning.config import ExperimentConfig, RunConfig, pretraining_batch_size, save_config
from clap_lightning.data.sources import check_built_with_exclusion, resolve_shards
from clap_lightning.errors import CheckpointError
from clap_lightning.eval.run_report import write_run_report
from clap_lightning.lit.eval_callback import build_eval_callbacks
from clap_lightning.lit.checkpointing import CHECKPOINT_DIR, AtomicCheckpointIO, resolve_ckpt_path
from clap_lightning.lit.datamodule import ClapDataModule
from clap_lightning.lit.loggers import build_loggers
from clap_lightning.lit.monitor import TrainingMonitor
from clap_lightning.lit.pretraining import ClapPretraining
from clap_lightning.lit.slurm import cluster_callbacks, cluster_plugins
from clap_lightning.lit.strategies import build_strategy
from clap_lightning.models.encoder_init import init_audio_encoder, init_model
from clap_lightning.outputs import check_writable

log = logging.getLogger(__name__)


class ParameterSummary(ModelSummary):
    """Lightning's model summary without its FLOPs column and "Total Flops" line.

    Lightning counts FLOPs only for a module with an `example_input_array`, which ours do not
    set, so every fit printed "0 Total Flops"; lit/monitor.py reports throughput and MFU instead.
    """

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs) -> None:
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        # Lightning 2.6's table formatter (callbacks/model_summary.py calls the same); its last line is the FLOPs total.
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        logging.getLogger(ModelSummary.__module__).info("\n" + table.rsplit("\n", 1)[0])


def build_trainer(config: RunConfig, micro_batch_size: int, *, callbacks: Sequence[L.Callback] = (),
                  is_gradcache: bool = False) -> L.Trainer:
    """A Trainer writing checkpoints and the `trainer.loggers` logs under `config.run_dir`, with a live monitor.

    Args:
        config: any run's config; the Trainer reads its `trainer` section, `run_dir` and `name`.
        micro_batch_size: the per-device batch (DeepSpeed needs it stated).
        callbacks: the run's own callbacks, beside checkpointing, the monitor and SLURM requeue.
        is_gradcache: the module accumulates and clips inside one manually optimised step
            (`ClapPretraining._gradcache_step`), so Lightning must do neither.

    Raises:
        OutputError: the run directory or its `checkpoints`/`logs` folders cannot be written (checked
            here, before any step, rather than at the first save).
    """
    t = config.trainer
    run_dir = Path(config.run_dir)
    loggers = build_loggers(config)  # a missing logger package fails before any folder is made
    check_writable(run_dir, run_dir / CHECKPOINT_DIR, run_dir / "logs")
    # Saved at every epoch end (which max_steps also triggers) and every N steps when configured.
    checkpoint = ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, save_last=True, save_top_k=1,
                                 save_on_train_epoch_end=True,
                                 every_n_train_steps=t.checkpoint_every_n_steps or None)
    monitor = TrainingMonitor(t.peak_tflops)  # throughput, loader wait, MFU, gradient norm (lit/monitor.py)
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=build_strategy(t, micro_batch_size),
        precision=t.precision, max_steps=t.max_steps, max_epochs=t.max_epochs if t.max_steps < 0 else None,
        accumulate_grad_batches=1 if is_gradcache else t.accumulate_grad_batches,
        gradient_clip_val=None if is_gradcache else t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps, val_check_interval=val_check_interval(t.val_check_interval),
        limit_val_batches=t.limit_val_batches, enable_progress_bar=t.enable_progress_bar,
        default_root_dir=str(run_dir),
        callbacks=[checkpoint, monitor, ParameterSummary(), *callbacks, *cluster_callbacks()],
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],  # atomic checkpoint writes; SLURM ranks (+ requeue)
        logger=loggers, profiler=monitor.loader_wait,
        num_sanity_val_steps=0,
    )


def build_pretraining_trainer(config: ExperimentConfig) -> L.Trainer:
    """The Trainer of a contrastive pretraining run: its eval-task callback and its GradCache switch."""
    return build_trainer(config, pretraining_batch_size(config),
                         callbacks=build_eval_callbacks(config.eval, has_validation=bool(config.data.val)),
                         is_gradcache=config.objective.accumulation == "gradcache")


def val_check_interval(value: Optional[float]) -> Optional[float | int]:
    """Lightning reads a float as a fraction of an epoch and an int as a number of steps."""
    return int(value) if value is not None and value > 1 else value


@rank_zero_only
def write_run_config(config: RunConfig) -> None:
    """Write the resolved config to `<run_dir>/config.yaml` (rank 0 only)."""
    save_config(config, Path(config.run_dir) / "config.yaml")


def run_stage(stage: str, config: ExperimentConfig, ckpt_path: Optional[str] = None) -> list[dict]:
    """Run `fit`, `validate` or `test`; the same checks happen before any data is read."""
    pretraining_batch_size(config)  # refuse a global batch that does not divide, before anything starts
    ckpt_path = resolve_ckpt_path(ckpt_path, config.run_dir, stage)  # "auto": newest complete checkpoint
    if ckpt_path and not Path(ckpt_path).exists():  # DeepSpeed's is a directory
        raise CheckpointError(f"checkpoint not found: {ckpt_path}")
    for spec in stage_shards(stage, config):
        resolve_shards(spec)  # a missing or empty shard directory fails now, not inside the loop
    if stage == "fit" and config.data.exclude_list:
        check_built_with_exclusion([s.shards for s in config.data.training_sources()], config.data.exclude_list)
    L.seed_everything(config.seed, workers=True, verbose=False)
    if stage == "fit":
        module = ClapPretraining(config)
        if config.model.audio_encoder_init and not ckpt_path:  # a resumed run has its own weights
            init_audio_encoder(module.model.audio_encoder, config.model.audio_encoder_init)
        if config.model.init_from and not ckpt_path:
            init_model(module.model, config.model.init_from)
        if ckpt_path:  # the checks validate/test make, plus what resuming needs: one line, not a traceback in fit
            check_resumable(ckpt_path, module, PRETRAINING)
    else:
        module = load_pretraining(ckpt_path) if ckpt_path else ClapPretraining(config)
    trainer = build_pretraining_trainer(config)
    datamodule = ClapDataModule.for_pretraining(config)
    if stage == "fit":
        write_run_config(config)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if config.report and trainer.is_global_zero:
            log.info("report: %s", write_run_report(config.run_dir))
        return []
    return getattr(trainer, stage)(module, datamodule=datamodule)


def stage_shards(stage: str, config: ExperimentConfig) -> list[str]:
    """The shard specifications a stage reads (validation during fit only when configured)."""
    data = config.data
    return {
        "fit": [s.shards for s in data.training_sources()] + ([data.val] if data.val else []),
        "validate": [data.val],
        "test": [data.test],
    }[stage]


def load_pretraining(path: str | Path, map_location: str = "cpu") -> ClapPretraining:
    """Load a `ClapPretraining` checkpoint, with one-line errors for missing or foreign files."""
    checkpoint, config = read_lightning_checkpoint(path, map_location, kind=PRETRAINING)
    module = ClapPretraining(config)
    return load_stored_state(module, checkpoint, path)
