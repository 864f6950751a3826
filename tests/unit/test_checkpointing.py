"""Atomic checkpoint writes and the newest complete checkpoint to resume from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

from clap_lightning.errors import CheckpointError
from clap_lightning.lit.checkpointing import (
    TMP_PREFIX, AtomicCheckpointIO, find_resume_checkpoint, is_complete_checkpoint, resolve_ckpt_path,
)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def write(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_save_is_complete_and_a_failed_save_keeps_the_previous_file(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.ones(4)}, path)
    assert torch.load(path)["global_step"] == 3 and is_complete_checkpoint(path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"global_step": 4, "bad": Unpicklable()}, path)
    assert torch.load(path)["global_step"] == 3  # the interrupted write never touched it
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left


def test_temporary_names_do_not_shift_lightnings_hpc_numbering(tmp_path):
    # Lightning numbers the next hpc checkpoint from the digits of every name containing "hpc_ckpt_".
    write(tmp_path / "hpc_ckpt_1.ckpt", 1, 1000)
    (tmp_path / f"{TMP_PREFIX}12345-abcdef01.tmp").write_bytes(b"half")
    assert Path(_CheckpointConnector.hpc_save_path(str(tmp_path))).name == "hpc_ckpt_2.ckpt"


def test_newest_complete_checkpoint_wins_across_hpc_and_modelcheckpoint(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    last = write(tmp_path / "checkpoints" / "last.ckpt", 4, 1000)
    hpc = write(tmp_path / "hpc_ckpt_1.ckpt", 6, 2000)
    assert find_resume_checkpoint(tmp_path) == hpc
    os.utime(last, (3000, 3000))  # a later periodic save after resuming from the hpc checkpoint
    assert find_resume_checkpoint(tmp_path) == last


def test_truncated_newest_checkpoint_is_skipped(tmp_path):
    older = write(tmp_path / "hpc_ckpt_1.ckpt", 2, 1000)
    newest = write(tmp_path / "checkpoints" / "last.ckpt", 5, 2000)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # what a copy killed half-way leaves
    os.utime(newest, (2000, 2000))
    assert not is_complete_checkpoint(newest)
    assert find_resume_checkpoint(tmp_path) == older


def test_deepspeed_directory_counts_once_its_latest_tag_is_written(tmp_path):
    shard_dir = tmp_path / "hpc_ckpt_1.ckpt" / "checkpoint"
    shard_dir.mkdir(parents=True)
    (shard_dir / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert find_resume_checkpoint(tmp_path) is None  # shards written, `latest` not yet
    (tmp_path / "hpc_ckpt_1.ckpt" / "latest").write_text("checkpoint")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"


def test_auto_is_fresh_for_fit_and_an_error_for_evaluation(tmp_path):
    assert resolve_ckpt_path("auto", tmp_path, "fit") is None
    assert resolve_ckpt_path("x.ckpt", tmp_path, "fit") == "x.ckpt"  # other values pass through
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_ckpt_path("auto", tmp_path, "test")
    hpc = write(tmp_path / "hpc_ckpt_3.ckpt", 9, 1000)
    assert resolve_ckpt_path("auto", tmp_path, "test") == str(hpc)


def test_last_is_modelcheckpoints_newest_last_file_or_a_refusal(tmp_path):
    with pytest.raises(CheckpointError, match=r"--ckpt_path last: no complete last checkpoint in .*checkpoints "
                                              r"\(--ckpt_path auto resumes"):
        resolve_ckpt_path("last", tmp_path, "fit")
    write(tmp_path / "hpc_ckpt_1.ckpt", 5, 3000)  # not ModelCheckpoint's: "last" ignores it, as Lightning does
    write(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt", 4, 2500)
    with pytest.raises(CheckpointError, match="no complete last checkpoint"):
        resolve_ckpt_path("last", tmp_path, "validate")
    last = write(tmp_path / "checkpoints" / "last.ckpt", 4, 2000)
    newer = write(tmp_path / "checkpoints" / "last-v1.ckpt", 6, 2600)
    assert resolve_ckpt_path("last", tmp_path, "fit") == str(newer)
    newer.write_bytes(newer.read_bytes()[:100])  # a half-copied file is passed over
    assert resolve_ckpt_path("last", tmp_path, "test") == str(last)
