"""Running under SLURM: ranks from the allocation, checkpoint-and-requeue on SIGUSR1, per-attempt records.

Why not Lightning's own auto-requeue (`SLURMEnvironment(auto_requeue=True)`): its SIGUSR1
handler saves the checkpoint *inside the signal handler*, on each rank at whatever point that
rank was interrupted. Saving is collective (a barrier, and `ClapDataModule.state_dict` gathers
every rank's data position), so when the signal lands while rank 0 is itself writing a periodic
checkpoint and rank 1 waits at that save's barrier, rank 0's gather meets rank 1's barrier and
both wait forever (seen on the test cluster). `SlurmRequeue` only records the signal in the
handler; at the end of the next training step every rank learns whether any rank got it
(one all-reduce of a flag, as Lightning already broadcasts a SIGTERM flag every step), then
all ranks save `<run_dir>/hpc_ckpt_N.ckpt` together, rank 0 runs `scontrol requeue`, and the
attempt exits. The requeued job (same id, `SLURM_RESTART_COUNT` + 1) resumes from that file
through `--ckpt_path auto`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1  # what `#SBATCH --signal=SIGUSR1@90` and `scancel --signal=USR1` send


def in_slurm_batch_job() -> bool:
    """True inside an `srun` task of a batch job; False outside SLURM and in interactive allocations.

    Lightning treats job names `bash` and `interactive` as interactive: there it launches
    its own processes and no cluster environment may be forced.
    """
    return SLURMEnvironment.detect()


def cluster_plugins() -> list:
    """`SLURMEnvironment` (ranks from SLURM_PROCID etc.) inside an srun task; requeue is `SlurmRequeue`'s.

    A Strategy *instance* that carries its own `cluster_environment` conflicts with this
    plugin (Lightning: "choose one").
    """
    return [SLURMEnvironment(auto_requeue=False)] if in_slurm_batch_job() else []


def cluster_callbacks() -> list[L.Callback]:
    """Per-attempt records always; checkpoint-and-requeue inside an srun task."""
    return [AttemptRecord()] + ([SlurmRequeue()] if in_slurm_batch_job() else [])


def slurm_job_id() -> str:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


class RequeueExit(SystemExit):
    """Ends an attempt after its checkpoint is written and the job requeued (exit status 0)."""

    def __init__(self) -> None:
        super().__init__(0)


class SlurmRequeue(L.Callback):
    """On SIGUSR1: at the next step boundary all ranks save an hpc checkpoint, the job is requeued.

    The handler is installed at construction (the Trainer is built before data or
    process groups are set up) so an early signal is not fatal; Python's default action
    for SIGUSR1 is to terminate.
    """

    def __init__(self) -> None:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(REQUEUE_SIGNAL, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True  # nothing collective here: the ranks may be anywhere

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        path = trainer.strategy.broadcast(path, src=0)  # one name, even if a rank saw the directory late
        log.info("requeue signal: saving %s at step %d", path, trainer.global_step)
        trainer.save_checkpoint(path)
        # Every rank records the requeue before it is asked for: `scontrol requeue` ends the job's
        # tasks at once, and a rank still writing its record then lost it (one suite run in ten).
        records = [callback for callback in trainer.callbacks if isinstance(callback, AttemptRecord)]
        for record in records:
            record.record_requeue(trainer, path)
        trainer.strategy.barrier("requeue-recorded")
        requeued = self._requeue() if trainer.is_global_zero else False
        if trainer.strategy.broadcast(requeued, src=0):
            raise RequeueExit()
        for record in records:
            record.record_requeue_failed(trainer)
        self.requested = False  # not requeued: keep training, the checkpoint is there to resume from

    @staticmethod
    def _requeue() -> bool:
        job_id = slurm_job_id()
        try:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("scontrol requeue %s failed: %s; training goes on", job_id, err)
            return False
        if result.returncode != 0:
            log.warning("scontrol requeue %s failed (%d): %s; training goes on", job_id, result.returncode,
                        result.stderr.strip())
            return False
        log.info("requeued SLURM job %s", job_id)
        return True


class AttemptRecord(L.Callback):
    """Appends one JSON line per rank and event to `<run_dir>/attempts/rank-<R>.jsonl`.

    Tells a cluster team which node ran which rank, under which cluster environment, which
    restart (`SLURM_RESTART_COUNT`) it was, the step it started at and the checkpoint it
    resumed from, then how the attempt ended: requeued at a step, or finished, with the
    contrastive batch the rank saw (`train/global_batch`).
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        env = trainer._accelerator_connector.cluster_environment
        self._write(trainer, {
            "event": "start", "step": trainer.global_step, "resumed_from": trainer.ckpt_path,
            "cluster_environment": type(env).__name__, "host": socket.gethostname(),
            "local_rank": trainer.local_rank, "node_rank": trainer.node_rank, "world_size": trainer.world_size,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_procid": os.environ.get("SLURM_PROCID"),
            "slurm_node": os.environ.get("SLURMD_NODENAME"),  # the node's name in the cluster (host may be shared)
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
        })

    def record_requeue(self, trainer: L.Trainer, checkpoint: str) -> None:
        self._write(trainer, {"event": "requeue", "step": trainer.global_step, "checkpoint": str(checkpoint)})

    def record_requeue_failed(self, trainer: L.Trainer) -> None:
        """`scontrol requeue` failed after the requeue was recorded: the attempt trains on."""
        self._write(trainer, {"event": "requeue_failed", "step": trainer.global_step})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = trainer.callback_metrics.get("train/global_batch")
        self._write(trainer, {
            "event": "end", "step": trainer.global_step,
            "global_batch": int(metric.item()) if metric is not None else None,
            "local_batch": getattr(trainer.datamodule, "batch_size", None),
        })

    @staticmethod
    def _write(trainer: L.Trainer, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), "global_rank": trainer.global_rank, **record}
        path = Path(trainer.default_root_dir) / "attempts" / f"rank-{trainer.global_rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
