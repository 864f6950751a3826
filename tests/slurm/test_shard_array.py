"""slurm/submit_shards.sh: a 2-task build array plus a dependent merge equals a single-process build."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.slurm.conftest import REPO

pytestmark = pytest.mark.slurm

# 14 classes: train 56 clips (3 shards), valid 14 (1 shard: part 1 of 2 gets none), test 28 (2 shards).
BUILD_OPTIONS = ["--sample-rate", "16000", "--samples-per-shard", "20",
                 "-o", "train_per_class=4", "-o", "valid_per_class=1", "-o", "test_per_class=2"]
SPLITS = ("train", "valid", "test")


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def split_contents(split_dir: Path) -> tuple[dict, dict]:
    """(manifest facts that must agree, {shard name: [(member, bytes or parsed json)]})."""
    manifest = json.loads((split_dir / "manifest.json").read_text())
    facts = {key: manifest[key] for key in ("num_samples", "items", "hours", "skipped")}
    facts["shards"] = [(s["name"], s["samples"]) for s in manifest["shards"]]
    shards = {}
    for name, _ in facts["shards"]:
        members = tar_members(split_dir / name)
        # Audio must match byte for byte; metadata as parsed JSON (key order is not a contract).
        shards[name] = [(m, json.loads(data) if m.endswith(".json") else data) for m, data in members]
    return facts, shards


def test_build_array_and_merge_match_a_single_process_build(slurm_cluster, job_env, job_logs, tmp_path):
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "data_recipes", "build", "demo", "--out", str(single), "--workers", "1",
                    "--no-progress", *BUILD_OPTIONS], check=True, cwd=REPO, env=job_env, capture_output=True)

    arrayed = tmp_path / "array"
    env = dict(job_env, SBATCH_ARGS=f"--output={job_logs}/%x-%j.out --cpus-per-task=1 --time=10")
    submitted = subprocess.run(["bash", str(REPO / "slurm" / "submit_shards.sh"), "2", "demo", str(arrayed),
                                *BUILD_OPTIONS], check=True, cwd=REPO, env=env, capture_output=True, text=True)
    array_job, merge_job = submitted.stdout.split()
    merge = slurm_cluster.wait_job(merge_job, 300)
    lines = slurm_cluster.command("scontrol", "show", "job", "-o", array_job).stdout.splitlines()
    tasks = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]
    assert sorted(t["JobState"] for t in tasks) == ["COMPLETED", "COMPLETED"], \
        f"array tasks: {[t['JobState'] for t in tasks]}\n{slurm_cluster.log_tail()}"
    assert merge["JobState"] == "COMPLETED", f"merge job {merge_job}: {merge['JobState']} ({merge['Reason']})"
    assert merge["StartTime"] >= max(t["EndTime"] for t in tasks)  # afterok: merged once both parts were done

    for split in SPLITS:
        split_dir = arrayed / "demo" / split
        parts = sorted(p.name for p in split_dir.glob("manifest.part-*-of-*.json"))
        assert parts == ["manifest.part-0-of-2.json", "manifest.part-1-of-2.json"]  # really built in 2 parts
        array_facts, array_shards = split_contents(split_dir)
        single_facts, single_shards = split_contents(single / "demo" / split)
        assert array_facts == single_facts, split
        assert array_shards == single_shards, split
