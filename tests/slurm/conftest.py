"""A private one-machine SLURM cluster for the session, and how jobs reach this checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import DEMO_EXPERIMENT, REPO, demo_overrides, demo_shards  # noqa: F401 (fixture)
from tests.slurm.cluster import ClusterUnavailable, LocalCluster, install_packages, munge_works


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """slurmctld + slurmd (2 CPUs) on this host, installed with apt-get if absent; stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("SLURM daemons cannot run: slurmd must be root to start jobs (CI runs the tests as root)")
    munge_was_running = munge_works()
    try:
        install_packages()
    except ClusterUnavailable as err:
        pytest.skip(f"SLURM daemons cannot run: {err}")
    cluster = LocalCluster(tmp_path_factory.mktemp("slurm"), cpus=2, owns_munged=not munge_was_running)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def job_env(slurm_cluster, tmp_path_factory) -> dict:
    """Environment for sbatch: this checkout on PYTHONPATH, this interpreter, runs under a temp dir."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(slurm_cluster.env, PYTHON=sys.executable, PYTHONPATH=path, OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", RUNS_ROOT=str(tmp_path_factory.mktemp("runs")))


@pytest.fixture(scope="session")
def job_logs(tmp_path_factory) -> Path:
    """Where the tests' job output files go (`--output`), so nothing lands in the checkout."""
    return tmp_path_factory.mktemp("job-logs")
