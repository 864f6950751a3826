"""Live throughput and health of a fit: pairs/s, loader wait, TFLOP/s, MFU, gradient norm, learning rate.

Logged every `trainer.log_every_n_steps` steps, as `perf/*` and `train/*` (see `TrainingMonitor`).
Nothing here waits for the device on an ordinary step: the clock is read on the host, and on a
GPU the device is synchronised once per logging interval (where Lightning's own logging
already copies the metrics to the host). Lightning's `ThroughputMonitor` is not used because
its callback synchronises CUDA after every batch.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.profilers import Profiler

from clap_lightning.flops import FlopCount, achieved_tflops, count_flops, device_peak_tflops

FETCH_ACTION = "train_dataloader_next"  # how Lightning's training loop names fetching the next batch


class LoaderWaitTimer(Profiler):
    """A Lightning profiler that only adds up the host time spent waiting for training batches."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0  # total since the last `take()`
        self._started: Optional[float] = None

    def start(self, action_name: str) -> None:
        if action_name.endswith(FETCH_ACTION):
            self._started = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if action_name.endswith(FETCH_ACTION) and self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def take(self) -> float:
        """The wait since the last call, in seconds; resets the total."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def count_batch_samples(batch: Any) -> int:
    """Samples (audio-text pairs, clips) in a batch: the leading size of its audio tensor."""
    if isinstance(batch, dict):
        for key in ("audio", "logmel", "audio_emb"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key].shape[0]
        batch = [value for value in batch.values() if isinstance(value, torch.Tensor)]
    return next(value.shape[0] for value in batch if isinstance(value, torch.Tensor) and value.dim() > 0)


class TrainingMonitor(L.Callback):
    """Log, every `log_every_n_steps` optimizer steps, on rank 0's logger:

    - `perf/pairs_per_s` (all devices) and `perf/pairs_per_s_per_device`, over the last interval;
    - `perf/step_ms` (wall time per step) and `perf/data_wait_ms` (of which the host waited for the loader);
    - `perf/tflops_per_device`: the FLOPs of one training batch, counted once on the first real batch with
      `FlopCounterMode`, times the batches of the interval, over its wall time;
    - `perf/mfu`: that over the device's peak (`flops.device_peak_tflops`: a configured peak, else the
      GPU's by name; on CPU only when `trainer.peak_tflops` is set);
    - `train/grad_norm` (L2 over all gradients before clipping, as the optimizer will see them) and `train/lr`.

    Time spent in validation is left out of the training rates.

    Args:
        peak_tflops: one device's peak TFLOP/s; 0 = look it up from the GPU's name.
    """

    def __init__(self, peak_tflops: float = 0.0) -> None:
        self.loader_wait = LoaderWaitTimer()  # pass as `Trainer(profiler=...)`
        self.configured_peak = peak_tflops
        self.peak_tflops: Optional[float] = None
        self.flops_per_batch: Optional[int] = None
        self._counting: Optional[ExitStack] = None
        self._count: Optional[FlopCount] = None
        self._interval_start = 0.0
        self._batches = self._samples = self._steps = 0
        self._last_global_step = 0
        self._validation_start: Optional[float] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak_tflops = device_peak_tflops(trainer.strategy.root_device, trainer.precision, self.configured_peak)
        self._last_global_step = trainer.global_step
        self._start_interval()

    def _start_interval(self) -> None:
        self._interval_start = time.perf_counter()
        self._batches = self._samples = self._steps = 0
        self.loader_wait.take()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.flops_per_batch is None and self._counting is None:
            self._counting = ExitStack()
            self._count = self._counting.enter_context(count_flops())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not _is_logging_step(trainer):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:  # DeepSpeed keeps its gradients partitioned outside `.grad`: nothing to measure here
            pl_module.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False,
                          batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._counting is not None:
            self._counting.close()
            self._counting = None
            self.flops_per_batch = self._count.total or None  # 0: nothing countable ran (e.g. a compiled graph)
        self._batches += 1
        self._samples += count_batch_samples(batch)
        stepped = trainer.global_step != self._last_global_step  # the last micro-batch of an accumulated step
        self._last_global_step = trainer.global_step
        self._steps += stepped
        if not (stepped and _is_logging_step(trainer)):
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # once per logging interval: the clock must include the queued kernels
        seconds = time.perf_counter() - self._interval_start
        metrics = self.compute_metrics(seconds, trainer.world_size)
        metrics["train/lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self._start_interval()

    def compute_metrics(self, seconds: float, world_size: int) -> dict[str, float]:
        """Rates over an interval of `seconds` holding the counted batches, samples and steps of this rank."""
        pairs_per_device = self._samples / seconds
        metrics = {"perf/pairs_per_s": pairs_per_device * world_size, "perf/pairs_per_s_per_device": pairs_per_device,
                   "perf/step_ms": 1000 * seconds / max(1, self._steps),
                   "perf/data_wait_ms": 1000 * self.loader_wait.take() / max(1, self._steps)}
        if self.flops_per_batch:
            tflops = achieved_tflops(self.flops_per_batch * self._batches, seconds)
            metrics["perf/tflops_per_device"] = tflops
            if self.peak_tflops:
                metrics["perf/mfu"] = tflops / self.peak_tflops
        return metrics

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:  # leave validation out of the training interval
            self._interval_start += time.perf_counter() - self._validation_start
            self._validation_start = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._counting is not None:  # never leave the FLOP counter installed
            self._counting.close()
            self._counting = None


def _is_logging_step(trainer: L.Trainer) -> bool:
    """Whether this step's logged values reach the loggers (Lightning's own test, as its ThroughputMonitor uses)."""
    return trainer._logger_connector.should_update_logs
