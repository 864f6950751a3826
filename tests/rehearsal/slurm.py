"""The rehearsal's jobs on a SLURM cluster (`slurm/rehearse.sh`): the same steps through the sbatch scripts.

Shards are built by `slurm/submit_shards.sh` job arrays; HTSAT-22 and CLAP run through
`slurm/pretrain.sbatch` (COMMAND=multitask for stage 1), CLAP is sent SIGUSR1 after its first
periodic checkpoint so it saves, requeues and resumes; the report comes from `slurm/eval.sbatch eval`.
Jobs ask for CPUs only (`--gres=none`); SBATCH_ARGS adds site options (partition, account).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}
CPU_JOB = ["--gres=none", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--time=60"]


def _command(*args: str, env: dict | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


class SlurmJobs:
    """Submit the repository's sbatch scripts from `cwd` and wait for them."""

    def __init__(self, repo: Path, logs: Path) -> None:
        self.repo = repo
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        path = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
        self.site = shlex.split(os.environ.get("SBATCH_ARGS", ""))

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        out = _command("sbatch", "--parsable", *self.site, f"--output={self.logs}/%x-%j.out", *args,
                       env={**self.env, **(env or {})})
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                                env=self.env, timeout=60)
        lines = result.stdout.splitlines()
        return dict(re.findall(r"(\w+)=(\S*)", lines[0])) if result.returncode == 0 and lines else {}

    def wait(self, job_ids: list[str], timeout_s: float = 3600) -> None:
        """Wait until every job ended; stop the rehearsal if one did not complete."""
        deadline = time.time() + timeout_s
        pending = list(job_ids)
        while pending:
            if time.time() > deadline:
                raise SystemExit(f"jobs {', '.join(pending)} still running after {timeout_s:.0f} s")
            state = self.job(pending[0]).get("JobState", "COMPLETED")  # purged from the controller: it ended
            if state in TERMINAL:
                if state != "COMPLETED":
                    raise SystemExit(f"job {pending[0]} ended {state}; see {self.logs}")
                pending.pop(0)
                continue
            time.sleep(1.0)

    def build(self, name: str, args: list[str], parts: int = 2) -> str:
        """Submit a `parts`-task shard array for `name` (`build` arguments with --out) and its merge; return the
        merge job's id."""
        at = args.index("--out")
        out_dir, rest = args[at + 1], args[:at] + args[at + 2:]
        out = _command(str(self.repo / "slurm" / "submit_shards.sh"), str(parts), name, out_dir, *rest,
                       env={**self.env, "SBATCH_ARGS": " ".join([*self.site, "--cpus-per-task=1",  # 1-s clips
                                                                 f"--output={self.logs}/%x-%A_%a.out"])})
        return out.split()[1]

    def multitask(self, config: str, overrides: list[str], run_dir: str) -> None:
        job = self.sbatch("--job-name=htsat22", *CPU_JOB, str(self.repo / "slurm" / "pretrain.sbatch"), config,
                          *overrides, env={"COMMAND": "multitask", "RUN_DIR": run_dir})
        self.wait([job])

    def pretrain_with_a_requeue(self, config: str, overrides: list[str], run_dir: Path) -> int:
        """Run CLAP; after its first periodic checkpoint, USR1 -> hpc checkpoint, requeue, resume. Return its step."""
        job = self.sbatch("--job-name=clap2023", *CPU_JOB, str(self.repo / "slurm" / "pretrain.sbatch"), config,
                          *overrides, env={"RUN_DIR": str(run_dir)})
        while not any((run_dir / "checkpoints").glob("*step=*.ckpt")):
            if self.job(job).get("JobState") in TERMINAL:
                raise SystemExit(f"CLAP job {job} ended before its first checkpoint; see {self.logs}")
            time.sleep(1.0)
        _command("scancel", "--signal=USR1", job, env=self.env)
        while self.job(job).get("Restarts", "0") == "0" or self.job(job).get("JobState") not in ("PENDING",):
            if self.job(job).get("JobState") in TERMINAL:
                raise SystemExit(f"CLAP job {job} ended instead of requeueing; see {self.logs}")
            time.sleep(1.0)
        hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
        # Slurm holds a requeued job ~2 min; release it (a few seconds after the revocation: see slurm/README.md).
        _command("scontrol", "update", f"jobid={job}", "StartTime=now+3", env=self.env)
        self.wait([job])
        import torch

        return int(torch.load(hpc[-1], map_location="cpu", weights_only=False)["global_step"])

    def eval(self, args: list[str]) -> None:
        job = self.sbatch("--job-name=clap-eval", "--gres=none", "--cpus-per-task=2", "--time=30",
                          str(self.repo / "slurm" / "eval.sbatch"), "eval", *args)
        self.wait([job])
