"""Checkpoints that survive preemption: atomic writes, and the newest complete checkpoint to resume from.

Lightning 2.6 saves through `fabric.utilities.cloud_io._atomic_save`: the whole checkpoint is
serialised into memory, written by fsspec to a temporary file made with `tempfile.mkstemp()`
(the node's /tmp, not the checkpoint directory) and moved into place. On a cluster the run
directory is on a shared filesystem, so that move is a copy: a job killed during it leaves a
truncated `last.ckpt` or `hpc_ckpt_N.ckpt` behind, and the in-memory copy doubles host memory
for large models. `AtomicCheckpointIO` streams to a temporary file *beside* the target,
fsyncs and renames it, which is atomic on a local disk and on NFS/Lustre alike.

A requeued SLURM job leaves `<run_dir>/hpc_ckpt_N.ckpt` (see `clap_lightning.lit.slurm`).
Lightning restores those by itself only when `fit` gets no `ckpt_path`, and its
`ckpt_path="last"` looks only at ModelCheckpoint files (and `--ckpt_path last` with none is refused,
where Lightning would start afresh); `--ckpt_path auto` takes the newest
complete file of both kinds (`find_resume_checkpoint`), so a requeue after a node failure
does not fall back to an older hpc checkpoint, nor a periodic save to an older hpc one.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from clap_lightning.errors import CheckpointError

log = logging.getLogger(__name__)

HPC_PATTERN = "hpc_ckpt_*.ckpt"  # Lightning's requeue checkpoints, in the run directory
CHECKPOINT_DIR = "checkpoints"  # ModelCheckpoint's directory inside the run directory
# Temporary names must not contain "hpc_ckpt_": Lightning numbers the next hpc checkpoint by
# scanning every file name holding that string, digits included.
TMP_PREFIX = ".partial-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are complete files or nothing.

    Remote URLs (s3://, gs://, ...) go through Lightning's own fsspec transaction.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomic(checkpoint, Path(path))


def save_atomic(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file in `path`'s directory, fsync, then rename onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse to open a directory: harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_complete_checkpoint(path: Path) -> bool:
    """True for a finished `torch.save` file (a zip with its end record) or DeepSpeed checkpoint directory.

    DeepSpeed writes a checkpoint directory's `latest` tag file after every shard is saved.
    """
    if path.is_dir():
        return (path / "latest").is_file()
    try:
        return path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """Every checkpoint a run may resume from, newest first (by modification time)."""
    run_dir = Path(run_dir)
    found = list(run_dir.glob(HPC_PATTERN)) + list((run_dir / CHECKPOINT_DIR).glob("*.ckpt"))
    found = [p for p in found if not p.name.startswith(TMP_PREFIX)]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def find_resume_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint in `run_dir` (hpc_ckpt_N.ckpt or checkpoints/*.ckpt), or None."""
    for path in resume_candidates(run_dir):
        if is_complete_checkpoint(path):
            return path
        log.warning("skipping incomplete checkpoint %s", path)
    return None


def find_last_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """ModelCheckpoint's newest complete `*last*.ckpt` in `<run_dir>/checkpoints` (what Lightning's
    "last" reads), or None."""
    found = [p for p in (Path(run_dir) / CHECKPOINT_DIR).glob("*last*.ckpt") if not p.name.startswith(TMP_PREFIX)]
    found = [p for p in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True) if is_complete_checkpoint(p)]
    return found[0] if found else None


def resolve_ckpt_path(ckpt_path: Optional[str], run_dir: str | Path, stage: str) -> Optional[str]:
    """Turn `--ckpt_path auto|last` into a path.

    `auto`: the newest complete checkpoint of either kind, or None for a fresh `fit`.
    `last`: ModelCheckpoint's newest `last` file, or a refusal. Lightning's own "last" would
    warn and start a fresh run when there is none, which silently discards the intent to resume.

    Raises:
        CheckpointError: `last` and no such file; `auto` for validate/test and no checkpoint.
    """
    if ckpt_path == "last":
        last = find_last_checkpoint(run_dir)
        if last is None:
            raise CheckpointError(f"--ckpt_path last: no complete last checkpoint in {Path(run_dir) / CHECKPOINT_DIR} "
                                  "(--ckpt_path auto resumes when there is a checkpoint and starts fresh otherwise)")
        return str(last)
    if ckpt_path != "auto":
        return ckpt_path
    found = find_resume_checkpoint(run_dir)
    if found is None and stage != "fit":
        raise CheckpointError(f"--ckpt_path auto: no complete checkpoint in {run_dir}")
    log.info("--ckpt_path auto: %s",
             f"resuming from {found}" if found else f"no checkpoint in {run_dir}, starting fresh")
    return str(found) if found else None
