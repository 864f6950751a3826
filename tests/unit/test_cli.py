"""Bad input gets one line on stderr and exit status 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from clap_lightning.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "experiment" / "demo.yaml")


def assert_one_line_error(capsys, pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert pattern in err, err


def test_unknown_config_key(capsys):
    assert main(["fit", "--config", DEMO, "trainer.max_stepz=3"]) == 2
    assert_one_line_error(capsys, "trainer.max_stepz")


def test_missing_config_file(capsys, tmp_path):
    assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert_one_line_error(capsys, "config file not found")


def test_missing_shard_directory(capsys, tmp_path):
    assert main(["fit", "--config", DEMO, f"data.train={tmp_path / 'missing'}"]) == 2
    assert_one_line_error(capsys, f"shard directory not found: {tmp_path / 'missing'}")


def test_empty_shard_list(capsys, tmp_path):
    assert main(["fit", "--config", DEMO, f"data.train={tmp_path}"]) == 2
    assert_one_line_error(capsys, "no shards found")


def test_global_batch_not_divisible(capsys):
    assert main(["fit", "--config", DEMO, "data.global_batch_size=10", "trainer.accumulate_grad_batches=3"]) == 2
    assert_one_line_error(capsys, "not divisible")


@pytest.mark.parametrize("command", [
    ["zeroshot", "--checkpoint", "/no/such.ckpt", "--data", "/tmp"],
    ["validate", "--config", DEMO, "--ckpt_path", "/no/such.ckpt"],
])
def test_missing_checkpoint(capsys, command):
    assert main(command) == 2
    assert_one_line_error(capsys, "checkpoint not found: /no/such.ckpt")


def test_foreign_checkpoint(capsys, tmp_path):
    import torch

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    assert main(["zeroshot", "--checkpoint", str(path), "--data", str(tmp_path)]) == 2
    assert_one_line_error(capsys, "not a clap-lightning checkpoint")


def test_console_script_exit_codes():
    """The installed entry point: usage errors exit 2, --help exits 0."""
    run = lambda *args: subprocess.run([sys.executable, "-m", "clap_lightning.cli", *args],  # noqa: E731
                                       capture_output=True, text=True, cwd=REPO)
    assert run("--help").returncode == 0
    bad = run("frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = run("fit", "--config", DEMO, "data.train=/no/such/dir")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "error: shard directory not found: /no/such/dir"]
