"""slurm/pretrain.sbatch and slurm/eval.sbatch on a real cluster: 2 DDP ranks, requeue and resume, eval."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from tests.slurm.conftest import DEMO_EXPERIMENT, REPO, demo_overrides

pytestmark = pytest.mark.slurm

MAX_STEPS = 10
# 2 tasks x 1 CPU on one node; `--gres=none` drops the script's GPU request (`--gres=` is refused by 22.05).
CPU_ALLOCATION = ["--gres=none", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=15"]
JOB_TIMEOUT_S = 420


def pretrain_overrides(shards: Path) -> list[str]:
    """The demo's seconds-long CPU run on two DDP ranks, global batch 16 (8 a rank), 10 steps.

    Validation runs every 4 steps (one demo epoch) on the demo's single validation shard, which the two ranks
    share sample by sample (a rank without validation batches would hang DDP). run_dir comes
    from the sbatch script.
    """
    overrides = [o for o in demo_overrides(shards, Path("unused"), steps=MAX_STEPS)
                 if not o.startswith(("run_dir=", "trainer.val_check_interval="))]
    return overrides + ["trainer.val_check_interval=4", "trainer.accelerator=cpu", "trainer.strategy=ddp",
                        "trainer.checkpoint_every_n_steps=2"]


def submit_pretrain(cluster, env: dict, logs: Path, shards: Path, name: str,
                    allocation: tuple[str, ...] = tuple(CPU_ALLOCATION)) -> tuple[str, Path]:
    job_id = cluster.sbatch(f"--job-name={name}", f"--output={logs}/%x-%j.out", *allocation,
                            str(REPO / "slurm" / "pretrain.sbatch"), str(DEMO_EXPERIMENT),
                            *pretrain_overrides(shards), env=env, cwd=REPO)
    return job_id, Path(env["RUNS_ROOT"]) / f"{name}-{job_id}"  # the script's per-job run directory


def read_attempts(run_dir: Path) -> dict[int, list[dict]]:
    """AttemptRecord's lines, by global rank."""
    return {int(p.stem.split("-")[1]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((run_dir / "attempts").glob("rank-*.jsonl"))}


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def assert_completed(cluster, job_id: str, info: dict, log: Path) -> None:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else "(no log)"
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
        f"job {job_id}: {info['JobState']} exit {info['ExitCode']}\n{tail}\n{cluster.log_tail()}"


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, job_env, job_logs, demo_shards):
    """One pretraining job that runs to the end: (job id, run dir, scontrol fields, output file)."""
    job_id, run_dir = submit_pretrain(slurm_cluster, job_env, job_logs, demo_shards, "clap-ddp")
    info = slurm_cluster.wait_job(job_id, JOB_TIMEOUT_S)
    return job_id, run_dir, info, job_logs / f"clap-ddp-{job_id}.out"


def test_pretrain_job_runs_two_ranks_under_slurm_environment(slurm_cluster, uninterrupted):
    job_id, run_dir, info, log = uninterrupted
    assert_completed(slurm_cluster, job_id, info, log)
    attempts = read_attempts(run_dir)
    assert sorted(attempts) == [0, 1]
    for rank, records in attempts.items():
        start, end = records
        assert start["event"] == "start" and end["event"] == "end"
        assert start["cluster_environment"] == "SLURMEnvironment"
        assert start["slurm_job_id"] == job_id and start["slurm_procid"] == str(rank)
        assert start["world_size"] == 2 and start["local_rank"] == rank and start["slurm_restart_count"] == 0
        # The objective's contrastive batch spans both ranks: 2 x the 8 pairs each rank loaded.
        assert end["local_batch"] == 8 and end["global_batch"] == 16
        assert end["step"] == MAX_STEPS
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == MAX_STEPS
    assert not list(run_dir.rglob(".partial-*"))  # no temporary checkpoint left behind


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def cancel_on_failure(slurm_cluster):
    """Jobs registered here are cancelled after the test, so a failed test does not hold the node."""
    jobs: list[str] = []
    yield jobs
    for job_id in jobs:
        slurm_cluster.command("scancel", job_id, check=False)


def data_position(checkpoint: Path) -> dict:
    """ClapDataModule's saved stream state: epoch and, per rank and worker, (batches, raw position)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["ClapDataModule"]
    return {"epoch": state["epoch"], "ranks": state["ranks"]}


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_final_step(
        slurm_cluster, job_env, job_logs, demo_shards, uninterrupted, cancel_on_failure):
    job_id, run_dir = submit_pretrain(slurm_cluster, job_env, job_logs, demo_shards, "clap-requeue")
    cancel_on_failure.append(job_id)
    log = job_logs / f"clap-requeue-{job_id}.out"

    def training_underway():
        state = slurm_cluster.job(job_id)["JobState"]
        assert state in ("PENDING", "RUNNING"), f"job {job_id} ended ({state}) before it could be signalled"
        return any((run_dir / "checkpoints").glob("*.ckpt"))  # step 2's checkpoint: mid-training

    wait_for(training_underway, JOB_TIMEOUT_S, "the first periodic checkpoint")
    slurm_cluster.command("scancel", "--signal=USR1", job_id)
    wait_for(lambda: (lambda i: i["JobState"] == "PENDING" and i["Restarts"] == "1")(slurm_cluster.job(job_id)),
             120, "the job to be requeued", poll_s=0.5)

    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), f"no hpc checkpoint after USR1: {sorted(p.name for p in run_dir.iterdir())}"
    interrupted_at = checkpoint_step(hpc)
    assert 2 <= interrupted_at < MAX_STEPS
    # Skip most of Slurm's ~120 s hold of a requeued job, but not all of it: slurmd refuses a
    # credential issued in the same second as the revocation of the attempt's ("Job credential
    # revoked"), which StartTime=now hit in one of five suite runs (2026-11-26).
    slurm_cluster.command("scontrol", "update", f"jobid={job_id}", "StartTime=now+3")
    info = slurm_cluster.wait_job(job_id, JOB_TIMEOUT_S)
    assert_completed(slurm_cluster, job_id, info, log)
    assert info["Restarts"] == "1"

    attempts = read_attempts(run_dir)
    assert sorted(attempts) == [0, 1]
    for rank, records in attempts.items():
        assert [r["event"] for r in records] == ["start", "requeue", "start", "end"], records
        first, requeue, second, end = records
        assert (first["slurm_restart_count"], first["step"]) == (0, 0)
        assert requeue["step"] == interrupted_at and requeue["checkpoint"] == str(hpc)
        assert second["slurm_restart_count"] == 1 and second["slurm_job_id"] == job_id
        assert second["resumed_from"] == str(hpc) and second["step"] == interrupted_at, second
        assert second["cluster_environment"] == "SLURMEnvironment" and second["slurm_procid"] == str(rank)
        assert end["step"] == MAX_STEPS and end["global_batch"] == 16
    final, reference = run_dir / "checkpoints" / "last.ckpt", uninterrupted[1] / "checkpoints" / "last.ckpt"
    assert checkpoint_step(final) == checkpoint_step(reference) == MAX_STEPS
    # The data stream resumed where the hpc checkpoint left it: both runs end at the same position.
    assert data_position(final) == data_position(reference)
    text = log.read_text()  # --open-mode=append keeps both attempts' output
    assert f"requeue signal: saving {hpc}" in text and f"Restoring states from the checkpoint path at {hpc}" in text
    assert f"job {job_id} restart 0" in text and f"job {job_id} restart 1" in text


def test_eval_job_scores_the_pretrained_checkpoint(slurm_cluster, job_env, job_logs, demo_shards, uninterrupted,
                                                   tmp_path):
    checkpoint = uninterrupted[1] / "checkpoints" / "last.ckpt"
    out = tmp_path / "zeroshot"
    job_id = slurm_cluster.sbatch("--job-name=clap-eval", f"--output={job_logs}/%x-%j.out", "--gres=none",
                                  "--cpus-per-task=1", "--time=10", str(REPO / "slurm" / "eval.sbatch"),
                                  "zeroshot", "--checkpoint", str(checkpoint), "--data", str(demo_shards / "test"),
                                  "--out", str(out), "--num-workers", "0", env=job_env, cwd=REPO)
    info = slurm_cluster.wait_job(job_id, JOB_TIMEOUT_S)
    log = job_logs / f"clap-eval-{job_id}.out"
    assert_completed(slurm_cluster, job_id, info, log)
    assert "zero-shot accuracy:" in log.read_text() and "42 held-out clips, 14 classes" in log.read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert rows[-1]["class"] == "ALL" and 0.0 <= float(rows[-1]["accuracy"]) <= 1.0


def test_pretrain_job_spans_two_nodes(slurm_cluster, job_env, job_logs, demo_shards, cancel_on_failure):
    """slurm/pretrain.sbatch unchanged on 2 nodes x 1 task: a rank per node, one gathered batch across both."""
    allocation = ("--gres=none", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=15")
    job_id, run_dir = submit_pretrain(slurm_cluster, job_env, job_logs, demo_shards, "clap-2nodes", allocation)
    cancel_on_failure.append(job_id)
    info = slurm_cluster.wait_job(job_id, JOB_TIMEOUT_S)
    assert_completed(slurm_cluster, job_id, info, job_logs / f"clap-2nodes-{job_id}.out")
    assert info["NumNodes"] == "2"
    attempts = read_attempts(run_dir)
    assert sorted(attempts) == [0, 1]
    starts = {rank: records[0] for rank, records in attempts.items()}
    assert {starts[0]["slurm_node"], starts[1]["slurm_node"]} == {"n1", "n2"}  # one rank on each node
    for rank, (start, end) in ((r, (records[0], records[-1])) for r, records in attempts.items()):
        assert start["world_size"] == 2 and start["node_rank"] == rank and start["local_rank"] == 0
        assert start["cluster_environment"] == "SLURMEnvironment" and start["slurm_procid"] == str(rank)
        # Each node loaded 8 pairs; the contrastive batch (train/global_batch) gathered both nodes' 16.
        assert end["event"] == "end" and end["local_batch"] == 8 and end["global_batch"] == 16
        assert end["step"] == MAX_STEPS
