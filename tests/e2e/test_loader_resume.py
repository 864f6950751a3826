"""Mid-epoch resume through Lightning: no batch of the epoch is replayed or lost (augmented, bucketed or not)."""

from __future__ import annotations

import warnings
from collections import Counter

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.lit.datamodule import ClapDataModule
from tests.e2e.conftest import DEMO_EXPERIMENT
from tests.shard_factory import bad_members, good_members, write_good_shards, write_tar

STEPS, CHECKPOINT_AT, BATCHES_PER_EPOCH = 14, 5, 12  # the resumed run crosses into epoch 1


class KeyRecorder(L.LightningModule):
    """Trains one weight on the clips' mean and records every batch it trains on (keys, captions, audio sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Linear(1, 1)
        self.batches: list[tuple[str, ...]] = []
        self.skipped: dict = {}
        self.samples_by_source: dict = {}

    def training_step(self, batch, batch_idx):
        assert "stream" not in batch  # the DataModule consumes the position tag
        self.batches.append((tuple(batch["key"]), tuple(batch["captions"]), batch["audio"].double().sum().item()))
        self.skipped = batch["skipped"]
        self.samples_by_source = batch["samples_by_source"]
        return self.weight(batch["audio"].mean(dim=1, keepdim=True)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(config, run_dir, ckpt_path=None) -> KeyRecorder:
    module = KeyRecorder()
    checkpoint = ModelCheckpoint(dirpath=run_dir, every_n_train_steps=CHECKPOINT_AT, save_top_k=-1,
                                 filename="{step}")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoint], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=ClapDataModule.for_pretraining(config), ckpt_path=ckpt_path)
    return module


AUGMENT = ["data.augment.gain_prob=0.5", "data.augment.shift_prob=0.5", "data.augment.noise_prob=0.5",
           "data.augment.mixup_prob=0.5"]


BUCKETED = ["data.pad_mode=none", "data.bucket_batches=4"]  # pools of 4 batches; the checkpoint falls inside one


@pytest.mark.parametrize("variant", ["plain", "augmented", "bucketed"])
def test_mid_epoch_resume_neither_replays_nor_loses_batches(tmp_path, variant):
    is_augmented = variant == "augmented"
    shards = tmp_path / "shards"
    write_good_shards(shards, "a", n_shards=3, per_shard=6)
    write_tar(shards / "z-bad.tar", good_members("z-0") + bad_members()["bad_json"])
    noise = write_good_shards(tmp_path / "noise", "n", n_shards=1, per_shard=3)[0]
    config = load_config(ExperimentConfig, DEMO_EXPERIMENT, [
        f"data.train={shards}", 'data.val=""', "data.global_batch_size=4", "data.num_workers=2",
        "data.epoch_samples=48", "data.shuffle_buffer=8", f"run_dir={tmp_path / 'run'}",
        *([*AUGMENT, f"data.augment.noise_shards={noise}"] if is_augmented else []),
        *(BUCKETED if variant == "bucketed" else [])])
    full = fit(config, tmp_path / "full")
    assert len(full.batches) == STEPS and len(set(full.batches)) > BATCHES_PER_EPOCH  # epoch 1 differs
    captions = [caption for _, batch_captions, _ in full.batches for caption in batch_captions]
    assert any(" and " in caption for caption in captions) == is_augmented  # mixup joined some captions
    checkpoint = torch.load(tmp_path / "full" / f"step={CHECKPOINT_AT}.ckpt", weights_only=False)
    state = checkpoint["ClapDataModule"]
    assert state["epoch"] == 0 and sum(b for b, *_ in state["ranks"][0].values()) == CHECKPOINT_AT

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(config, tmp_path / "resumed", ckpt_path=str(tmp_path / "full" / f"step={CHECKPOINT_AT}.ckpt"))
    # Lightning's "dataloader is not resumable" warning is wrong for this loader: it resumes exactly.
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert len(resumed.batches) == STEPS - CHECKPOINT_AT
    # Same batches (contents and count) as the uninterrupted run; only the order of the two
    # workers' batches within the resumed epoch may differ.
    epoch0 = BATCHES_PER_EPOCH - CHECKPOINT_AT
    assert Counter(resumed.batches[:epoch0]) == Counter(full.batches[CHECKPOINT_AT:BATCHES_PER_EPOCH])
    assert resumed.batches[epoch0:] == full.batches[BATCHES_PER_EPOCH:]
    # Bad samples are totalled across the resume (the count is restored from the checkpoint).
    assert full.skipped.get("bad_json", 0) >= 1 and resumed.skipped == full.skipped
    # Samples per json `source` (logged as data/samples_<source>) are totalled across the resume too.
    sources = Counter({"z": "test"}.get(key[0], key[0]) for keys, _, _ in full.batches for key in keys)  # z-0: "test"
    assert full.samples_by_source == resumed.samples_by_source == dict(sources)
