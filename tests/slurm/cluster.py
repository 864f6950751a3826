"""A real one-machine SLURM cluster for tests: install, configure, start, submit, wait, stop.

The cluster is private to the test session: its slurm.conf, state, spool, logs and pid files
live in a temporary directory and its daemons listen on free ports, so it neither needs nor
disturbs an /etc/slurm setup. Clients find it through `SLURM_CONF` (see `LocalCluster.env`).
munged is shared machine-wide: an already running one is reused and left running.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
MUNGE_PID = Path("/run/munge/munged.pid")
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED"}

SLURM_CONF = """\
ClusterName=clapci
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# KillWait: seconds between SIGTERM and SIGKILL when a job ends or is requeued (default 30).
KillWait=5
# Lightning's default MASTER_PORT is 15000 + the job id's last 4 digits: a random first id keeps two
# sessions on one machine (CI beside a developer) from both rendezvousing on port 15001.
FirstJobId={first_job_id}
# Keep finished jobs visible to `scontrol show job` for the whole session.
MinJobAge=3600
# A job whose dependency failed is cancelled rather than left pending forever.
DependencyParameters=kill_invalid_depend
# Trust the CPU count below rather than the hardware's, so a bigger or smaller machine still works.
SlurmdParameters=config_overrides
# Two nodes on this machine: one slurmd each (`slurmd -N`), on their own ports, spool and pid files.
# Their names do not resolve, so jobs get MASTER_ADDR=127.0.0.1 (LocalCluster.env) for the rendezvous.
{nodes}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
"""
NODE_LINE = "NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} State=UNKNOWN"
NODE_NAMES = ("n1", "n2")


class ClusterUnavailable(RuntimeError):
    """The daemons cannot run here (the one reason the SLURM tests may skip)."""


def _run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL  # CI has no standard input
    return subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_packages() -> None:
    """apt-get install slurm-wlm and munge when a daemon is missing (refresh the lists once if needed)."""
    if all(Path(d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailable("slurm-wlm/munge are not installed and cannot be (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    result = _run(install, env=env, timeout=900)
    if result.returncode != 0:
        _run(["apt-get", "update", "-qq"], env=env, timeout=600)
        result = _run(install, env=env, timeout=900)
    if result.returncode != 0 or not all(Path(d).exists() for d in DAEMONS):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")


def munge_works() -> bool:
    if not shutil.which("munge") or not shutil.which("unmunge"):
        return False
    cred = _run(["munge", "-n"], timeout=10)
    return cred.returncode == 0 and _run(["unmunge"], input=cred.stdout, timeout=10).returncode == 0


def start_munged() -> Optional[int]:
    """Start munged unless one answers already; return the pid we started (None when reused)."""
    if munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    result = _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"munged did not start: {result.stderr.strip()}")
    deadline = time.time() + 10
    while not munge_works():
        if time.time() > deadline:
            raise RuntimeError("munged started but munge -n | unmunge fails")
        time.sleep(0.2)
    return int(MUNGE_PID.read_text().strip()) if MUNGE_PID.exists() else None


def stop_pid(pid: Optional[int], timeout: float = 15.0) -> None:
    """SIGTERM a daemon we started, SIGKILL it if it outlives `timeout`."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


class LocalCluster:
    """slurmctld + two slurmd (nodes n1 and n2) on this host, configured under `root`."""

    def __init__(self, root: Path, cpus: int = 2, owns_munged: bool = False) -> None:
        """`cpus`: per node; `owns_munged`: munged was not running before this session (apt-get may have started it)."""
        self.root = root
        self.conf = root / "slurm.conf"
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.owns_munged = owns_munged
        self.munged_pid: Optional[int] = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env["SLURM_CONF"] = str(self.conf)
        # Lightning's SLURMEnvironment would resolve the first node's name (n1), which no DNS knows.
        self.env["MASTER_ADDR"] = "127.0.0.1"

    def start(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        nodes = "\n".join(NODE_LINE.format(name=name, host=self.host, port=_free_port(), cpus=self.cpus)
                           for name in NODE_NAMES)
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, nodes=nodes,
                                               node_list=",".join(NODE_NAMES), ctld_port=_free_port(),
                                               first_job_id=random.randrange(1000, 9000) * 10))
        self.munged_pid = start_munged()
        if self.munged_pid is None and self.owns_munged and MUNGE_PID.exists():
            self.munged_pid = int(MUNGE_PID.read_text().strip())  # started by the package install
        daemons = [["/usr/sbin/slurmctld"]] + [["/usr/sbin/slurmd", "-N", name] for name in NODE_NAMES]
        for daemon in daemons:
            result = _run([*daemon, "-f", str(self.conf)], env=self.env, timeout=60)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(daemon)} failed: {result.stderr.strip()}\n{self.log_tail()}")
        self.wait_node_idle()

    def stop(self) -> None:
        for name in (*(f"slurmd-{node}" for node in NODE_NAMES), "slurmctld"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.exists():
                stop_pid(int(pid_file.read_text().strip()))
        stop_pid(self.munged_pid)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for name in ("slurmctld.log", *(f"slurmd-{node}.log" for node in NODE_NAMES)):
            path = self.root / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def wait_node_idle(self, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            result = self.command("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = " ".join(result.stdout.split())
            if state == " ".join(["idle"] * len(NODE_NAMES)):
                return
            time.sleep(0.5)
        raise RuntimeError(f"nodes {','.join(NODE_NAMES)} not idle after {timeout:.0f} s (state '{state}')\n"
                           f"{self.log_tail()}")

    def command(self, *args: str, check: bool = True, env: Optional[dict] = None,
                cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        result = _run(args, env=env or self.env, cwd=cwd, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str, env: Optional[dict] = None, cwd: Optional[Path] = None) -> str:
        """Submit; return the job id."""
        out = self.command("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` fields of one job (the first record for an array)."""
        text = self.command("scontrol", "show", "job", "-o", job_id).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_job(self, job_id: str, timeout: float, states: frozenset = frozenset(TERMINAL_STATES),
                 poll: float = 0.5) -> dict[str, str]:
        """Poll until the job's state is in `states`; fail with its log tails after `timeout` s."""
        deadline = time.time() + timeout
        info: dict[str, str] = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(poll)
        self.command("scancel", job_id, check=False)
        raise AssertionError(f"job {job_id} still {info.get('JobState')} ({info.get('Reason')}) after "
                             f"{timeout:.0f} s\n{self.log_tail()}")
