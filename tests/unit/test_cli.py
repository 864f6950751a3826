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


@pytest.fixture(scope="module")
def fit_args(tmp_path_factory):
    """A fit that resolves its shards, and a valid (hand-built) checkpoint beside it."""
    from tests.checkpoint_factory import pretraining_checkpoint, save
    from tests.shard_factory import write_good_shards

    root = tmp_path_factory.mktemp("fit")
    write_good_shards(root / "shards", "t", 1, 4)
    args = ["fit", "--config", DEMO, f"data.train={root / 'shards'}", 'data.val=""', "data.epoch_samples=4",
            "data.global_batch_size=4", "data.num_workers=0", "trainer.max_steps=1", f"run_dir={root / 'run'}"]
    return args, save(pretraining_checkpoint(), root / "good.ckpt")


def _damaged(good: Path, tmp_path: Path, kind: str) -> Path:
    import torch

    path = tmp_path / f"{kind}.ckpt"
    data = good.read_bytes()
    if kind == "random":
        path.write_bytes(bytes((i * 131 + 7) % 256 for i in range(5000)))
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        checkpoint = torch.load(good, weights_only=True)
        if kind == "multitask":
            checkpoint["hyper_parameters"]["config"]["tasks"] = [{"name": "a", "shards": "x"}]
        elif kind == "weights_only":
            del checkpoint["optimizer_states"], checkpoint["loops"]
        elif kind == "other_model":
            checkpoint["state_dict"] = {k: v[..., :1] if v.ndim else v for k, v in checkpoint["state_dict"].items()}
        torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("random", "with torch.load(weights_only=True)"),
    ("truncated", "with torch.load(weights_only=True)"),
    ("multitask", "is not a pretraining checkpoint: it holds a multi-task run"),
    ("weights_only", "cannot resume training: it lacks loops, optimizer_states"),
    ("other_model", "does not match the configured model: size mismatch"),
])
def test_fit_refuses_a_checkpoint_it_cannot_resume_from(capsys, tmp_path, fit_args, kind, message):
    args, good = fit_args
    assert main([*args, "--ckpt_path", str(_damaged(good, tmp_path, kind))]) == 2
    assert_one_line_error(capsys, message)


def test_fit_ckpt_path_last_without_a_checkpoint_is_refused(capsys, fit_args):
    args, _ = fit_args
    assert main([*args, "--ckpt_path", "last"]) == 2
    assert_one_line_error(capsys, "--ckpt_path last: no complete last checkpoint in")


def test_corrupt_manifest_is_one_line(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text('{"shards": [{"name": "a.tar", "count": 3}')
    assert main(["fit", "--config", DEMO, f"data.train={tmp_path}"]) == 2
    assert_one_line_error(capsys, f"manifest {tmp_path / 'manifest.json'} is not valid json")


@pytest.mark.parametrize("extra, message", [
    (["--prompt", "a recording"], "--prompt 'a recording' must hold one class placeholder, {} or {class}; found none"),
    (["--prompt", "{label} or {}"], "found {label}, {}"),
    (["--prompt", "a {class"], "is not a template"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
])
def test_zeroshot_arguments_are_checked_before_the_checkpoint_is_read(capsys, extra, message):
    assert main(["zeroshot", "--checkpoint", "/no/such.ckpt", "--data", "/tmp", *extra]) == 2
    assert_one_line_error(capsys, message)


def test_lightning_log_lines_print_once_and_known_warnings_are_quiet():
    script = ("import warnings\n"
              "from clap_lightning.cli import configure_output\n"
              "from lightning.pytorch.utilities import rank_zero_info\n"
              "configure_output()\n"
              "rank_zero_info('GPU available: hello')\n"
              "warnings.warn('Your `IterableDataset` has `__len__` defined. In combination ...')\n"
              "warnings.warn('something else')\n")
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True).stderr
    assert err.count("GPU available: hello") == 1, err
    assert "IterableDataset" not in err and "something else" in err, err


def test_the_process_group_is_destroyed_before_exit(capsys, tmp_path):
    """A run leaves no process group to the interpreter's teardown, on success or on error."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
