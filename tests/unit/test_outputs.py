"""Output folders that cannot be written stop a command at start-up with one line, before any step."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2Model  # noqa: F401 - resolved before the user switch (lazy imports)

import clap_lightning.lit.run  # noqa: F401 - imported before the user switch, as the CLI imports it lazily
from clap_lightning.cli import main
from clap_lightning.errors import OutputError
from clap_lightning.outputs import check_writable
from tests.shard_factory import write_good_shards

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "experiment" / "demo.yaml")
NOBODY = 65534


@pytest.fixture
def world_dir():
    """A folder every user may enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="clap-outputs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def as_unprivileged_user():
    """Permission bits do not stop root: run the block as `nobody` when the tests run as root."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def read_only_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o555)
    return path


def test_an_unwritable_folder_is_named_with_the_reason(world_dir):
    locked = read_only_dir(world_dir / "locked")
    with as_unprivileged_user(), pytest.raises(OutputError) as err:
        check_writable(locked / "run")
    assert str(err.value).startswith(f"output folder {locked / 'run'} is not writable: Permission denied")


def test_a_writable_run_dir_with_a_read_only_checkpoint_folder_is_refused(world_dir):
    run = world_dir / "run"
    run.mkdir(mode=0o777)
    run.chmod(0o777)
    read_only_dir(run / "checkpoints")
    with as_unprivileged_user():
        check_writable(run)  # the run directory itself is fine
        with pytest.raises(OutputError, match=r"output folder .*run/checkpoints is not writable: Permission denied"):
            check_writable(run, run / "checkpoints", run / "logs")
    assert not (run / "logs").exists() and not list(run.iterdir())[1:]  # the probe files are gone


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(OutputError, match=r"output folder .*run/checkpoints is not writable: Not a directory"):
        check_writable(tmp_path / "run" / "checkpoints")
    check_writable(tmp_path / "fresh" / "deep")
    assert (tmp_path / "fresh" / "deep").is_dir() and not list((tmp_path / "fresh" / "deep").iterdir())


@pytest.mark.parametrize("locked_part", ["run_dir", "checkpoints"])
def test_fit_stops_before_training_when_an_output_folder_is_unwritable(capsys, world_dir, locked_part):
    shards = world_dir / "shards"
    write_good_shards(shards, "t", 1, 4)
    for path in [shards, *shards.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    if locked_part == "run_dir":
        run = read_only_dir(world_dir / "locked") / "run"
    else:
        run = world_dir / "run"
        run.mkdir()
        run.chmod(0o777)
        read_only_dir(run / "checkpoints")
    args = ["fit", "--config", DEMO, f"data.train={shards}", 'data.val=""', "data.epoch_samples=4",
            "data.global_batch_size=4", "data.num_workers=0", "trainer.max_steps=1", f"run_dir={run}"]
    with as_unprivileged_user():
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: output folder ") and "is not writable" in err, err
    assert not (run / "logs").exists() and not (run / "config.yaml").exists()  # nothing was started
