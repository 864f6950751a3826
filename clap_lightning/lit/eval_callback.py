"""Score registry tasks during pretraining validation and log them as `val/<task>/<metric>`."""

from __future__ import annotations

import logging

import lightning as L

from clap_lightning.config import EvalConfig
from clap_lightning.errors import ConfigError
from clap_lightning.eval.embed import ClipSettings
from clap_lightning.eval.suite import EvalOptions, TaskEvaluator
from clap_lightning.eval.tasks import KIND_METRICS, TaskSpec, resolve_tasks

log = logging.getLogger(__name__)


class TaskEvalCallback(L.Callback):
    """At the end of every `every_n_val`-th validation, zero-shot / retrieval-score `tasks`.

    The weights change between validations, so nothing is cached. Every rank scores the whole
    of each task (no split across ranks) and logs the same values: no gather is needed, and
    under ZeRO-3 every rank runs the same forward passes. Validation must be configured
    (`data.val`), since this runs in the validation loop; sanity-check runs are skipped.

    Args:
        config: the tasks, their data root and how often to run them.
    """

    def __init__(self, config: EvalConfig) -> None:
        try:
            self.specs = resolve_tasks(config.tasks)
        except ValueError as err:
            raise ConfigError(f"eval.tasks: {err}") from None
        if not config.data:
            raise ConfigError(f"eval.tasks is '{config.tasks}' but eval.data is empty; set the shard root")
        if config.every_n_val < 1:
            raise ConfigError(f"eval.every_n_val must be >= 1, got {config.every_n_val}")
        self.config = config
        self.num_validations = 0
        self._tokenizer = None
        self._reported_skips: set[str] = set()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.num_validations += 1
        if (self.num_validations - 1) % self.config.every_n_val:
            return
        model, run_config = pl_module.model, pl_module.config
        if self._tokenizer is None:
            self._tokenizer = model.build_tokenizer()
        clip = ClipSettings(run_config.model.sample_rate, run_config.model.clip_samples, run_config.data.pad_mode)
        options = EvalOptions(batch_size=self.config.batch_size, ensemble_prompts=self.config.ensemble_prompts)
        evaluator = TaskEvaluator(model, self._tokenizer, clip, self.config.data, options=options)
        for result in evaluator.evaluate_all(self.specs):
            if result.status:
                self._report_skip(result.spec, result.status)
                continue
            for name, value in self.metrics_to_log(result.spec, result.metrics).items():
                pl_module.log(name, value, on_epoch=True, sync_dist=False)

    @staticmethod
    def metrics_to_log(spec: TaskSpec, metrics: dict[str, float]) -> dict[str, float]:
        """`val/<task>/<metric>` for every metric of the task's kind that was computed."""
        return {f"val/{spec.name}/{metric}": metrics[spec.result_key(metric)]
                for metric in KIND_METRICS[spec.kind] if spec.result_key(metric) in metrics}

    def _report_skip(self, spec: TaskSpec, status: str) -> None:
        if spec.name not in self._reported_skips:
            self._reported_skips.add(spec.name)
            log.warning("validation task %s %s", spec.name, status)


def build_eval_callbacks(eval_config: EvalConfig, has_validation: bool) -> list[L.Callback]:
    """The validation-time task callback when `eval.tasks` is set, else nothing.

    Args:
        eval_config: the pretraining run's `eval` section.
        has_validation: whether the run validates at all (`data.val` set); the tasks run inside validation.
    """
    if not eval_config.tasks.strip():
        return []
    if not has_validation:
        log.warning("eval.tasks is set but data.val is empty: no validation runs during fit, so neither do the tasks")
    return [TaskEvalCallback(eval_config)]
