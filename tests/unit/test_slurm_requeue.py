"""SlurmRequeue on one process: SIGUSR1 -> hpc checkpoint at a step boundary -> requeue -> the attempt ends."""

from __future__ import annotations

import json
import os
import signal

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.demos.boring_classes import BoringModel

from clap_lightning.lit import slurm
from clap_lightning.lit.slurm import AttemptRecord, RequeueExit, SlurmRequeue, cluster_callbacks, cluster_plugins


@pytest.fixture
def restore_usr1():
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


class SignalAtStep(L.Callback):
    """Sends SIGUSR1 to this process in the middle of step `step` (as Slurm would, at any moment)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def fit(tmp_path, requeue_result: bool, monkeypatch) -> L.Trainer:
    monkeypatch.setattr(SlurmRequeue, "_requeue", staticmethod(lambda: requeue_result))
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=6, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SlurmRequeue(), AttemptRecord(), SignalAtStep(2)])
    trainer.fit(BoringModel())
    return trainer


def test_signal_saves_at_the_step_boundary_then_ends_the_attempt(tmp_path, monkeypatch, restore_usr1):
    with pytest.raises(RequeueExit) as exit_info:
        fit(tmp_path, requeue_result=True, monkeypatch=monkeypatch)
    assert exit_info.value.code == 0
    checkpoint = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3  # step 2's optimizer step completed before the save
    records = [json.loads(line) for line in (tmp_path / "attempts" / "rank-0.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "requeue"]  # never reached the end of training
    assert records[1]["step"] == 3 and records[1]["checkpoint"] == str(tmp_path / "hpc_ckpt_1.ckpt")


def test_failed_requeue_keeps_training_with_the_checkpoint_saved(tmp_path, monkeypatch, restore_usr1):
    trainer = fit(tmp_path, requeue_result=False, monkeypatch=monkeypatch)
    assert trainer.global_step == 6
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 3
    assert not (tmp_path / "hpc_ckpt_2.ckpt").exists()  # the flag was cleared after the one save
    records = [json.loads(line) for line in (tmp_path / "attempts" / "rank-0.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("start", 0), ("requeue", 3), ("requeue_failed", 3),
                                                          ("end", 6)]


def test_the_requeue_is_recorded_before_scontrol_is_asked(tmp_path, monkeypatch, restore_usr1):
    """`scontrol requeue` ends the job's tasks at once: every rank's record must already be written."""
    seen = []

    def requeue() -> bool:
        seen.extend(json.loads(line)["event"] for line in (tmp_path / "attempts" / "rank-0.jsonl").open())
        return True

    monkeypatch.setattr(SlurmRequeue, "_requeue", staticmethod(requeue))
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=6, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[SlurmRequeue(), AttemptRecord(), SignalAtStep(2)])
    with pytest.raises(RequeueExit):
        trainer.fit(BoringModel())
    assert seen == ["start", "requeue"]


def test_requeue_takes_the_array_task_id(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert slurm.slurm_job_id() == "101"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm.slurm_job_id() == "100_3"


def _slurm_env(monkeypatch, job_name: str) -> None:
    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "7",
                       "SLURM_NODELIST": "node1", "SLURM_JOB_NAME": job_name}.items():
        monkeypatch.setenv(key, value)


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_slurm_handling_only_inside_an_srun_task_of_a_batch_job(monkeypatch, restore_usr1):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert cluster_plugins() == [] and [type(c) for c in cluster_callbacks()] == [AttemptRecord]
    _slurm_env(monkeypatch, "interactive")  # `srun --pty bash`-style allocation: Lightning launches processes
    assert cluster_plugins() == [] and [type(c) for c in cluster_callbacks()] == [AttemptRecord]
    _slurm_env(monkeypatch, "clap-pretrain")
    (environment,) = cluster_plugins()
    # Lightning's in-handler auto-requeue stays off: SlurmRequeue does it at a step boundary.
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert [type(c) for c in cluster_callbacks()] == [AttemptRecord, SlurmRequeue]
