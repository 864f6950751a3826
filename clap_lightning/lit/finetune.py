"""Fine-tune a pretrained audio encoder with a linear head on a labelled task (cross-entropy).

ESC-50 protocol: 5-fold cross-validation over the json `fold` field, a fresh copy of the
pretrained encoder per fold (the paper reports 0.9825 after fine-tuning). A task without
folds trains on its `train` split and tests on its evaluation split.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from clap_lightning.data.multitask import scan_field, sort_class_names
from clap_lightning.data.pipeline import ClapLoader, ClapStream, ClipDecoder, stack_for_transfer
from clap_lightning.data.schema import read_labels
from clap_lightning.errors import DataError
from clap_lightning.eval.embed import ClipSettings, split_urls
from clap_lightning.eval.tasks import TaskSpec


@dataclass
class FineTuneConfig:
    """The fine-tuning recipe (one for every fold and task)."""

    lr: float = 1e-4  # AdamW learning rate of the pretrained encoder
    head_lr: float = 1e-3  # AdamW learning rate of the new linear head
    weight_decay: float = 0.01  # AdamW weight decay
    head_dropout: float = 0.1  # dropout before the head
    max_epochs: int = 30  # passes over the training clips
    batch_size: int = 32  # clips per step
    num_workers: int = 2  # loader worker processes
    shuffle_buffer: int = 500  # clips held for shuffling in training
    accelerator: str = "auto"  # Lightning accelerator
    seed: int = 0  # seeds the head, dropout and shuffling


class AudioClassifier(nn.Module):
    """A (pretrained) audio encoder followed by a linear head: waveform [B, T] -> logits [B, C]."""

    def __init__(self, audio_encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(audio_encoder.out_dim, num_classes)

    def forward(self, audio: torch.Tensor, audio_length: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`audio_length` [B] (real samples per clip) masks the padding when the encoder's `mask_padding` is on."""
        return self.head(self.dropout(self.audio_encoder(audio, audio_length)))


class AudioFineTuning(L.LightningModule):
    """Glue: cross-entropy training of an `AudioClassifier`; `val/acc` and `test/acc` per clip."""

    def __init__(self, classifier: AudioClassifier, config: FineTuneConfig) -> None:
        super().__init__()
        self.classifier = classifier
        self.config = config

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.classifier(batch["audio"], batch.get("audio_length")), batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self.classifier(batch["audio"], batch.get("audio_length"))
        hits = (logits.argmax(dim=1) == batch["target"]).float()
        # Epoch value = mean over clips, since Lightning weights each batch mean by batch_size.
        self.log(f"{stage}/acc", hits.mean(), on_epoch=True, batch_size=len(hits))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": self.classifier.audio_encoder.parameters(), "lr": self.config.lr},
                  {"params": [*self.classifier.head.parameters()], "lr": self.config.head_lr}]
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)


class FoldFilter:
    """Keep samples whose json `field` is (or, with `keep=False`, is not) in `folds`; None keeps all.

    A sample whose json cannot be read is kept, so that the decoder skips and counts it.
    """

    def __init__(self, field: Optional[str], folds: Optional[Sequence[Any]], keep: bool) -> None:
        self.field, self.folds, self.keep = field, None if folds is None else {str(f) for f in folds}, keep

    def __call__(self, sample: dict[str, Any]) -> bool:
        if self.field is None or self.folds is None:
            return True
        try:
            fold = json.loads(sample["json"]).get(self.field)
        except (KeyError, ValueError, AttributeError, RecursionError):
            return True
        return (str(fold) in self.folds) == self.keep


class LabelledCollate:
    """Stack clips and map each clip's single label to its class index."""

    def __init__(self, label_field: str, classes: Sequence[str]) -> None:
        self.label_field, self.index = label_field, {c: i for i, c in enumerate(classes)}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        targets = []
        for sample in samples:
            labels = read_labels(sample["meta"], self.label_field)
            if not labels or labels[0] not in self.index:
                raise DataError(f"clip {sample['key']}: label {labels[:1]} in '{self.label_field}' is not one of "
                                f"the task's {len(self.index)} classes")
            targets.append(self.index[labels[0]])
        return {"audio": stack_for_transfer([s["audio"] for s in samples]),  # [B, T]
                "audio_length": torch.tensor([s["length"] for s in samples]),  # [B] samples that are not padding
                "target": torch.tensor(targets)}  # [B]


def build_labelled_loader(urls: list[str], clip: ClipSettings, spec: TaskSpec, keep: FoldFilter,
                          config: FineTuneConfig, is_train: bool) -> ClapLoader:
    """Labelled clips of the shards that pass `keep`; in training random crops, shuffled, full batches.

    Read by the project's shard reader: one `ClapStream` pass per epoch (shuffled when
    training), so damaged shards and bad samples are skipped and counted as in pretraining,
    and every random crop comes from a generator seeded by (seed, epoch, worker, position).
    """
    workers = max(0, min(config.num_workers, len(urls)))
    decoder = ClipDecoder(clip.sample_rate, clip.clip_samples, clip.pad_mode, is_train)
    collate = LabelledCollate(spec.label_field, spec.classes)
    stream = ClapStream([urls], decoder, collate, config.batch_size, is_train=False, seed=config.seed,
                        shuffle_buffer=config.shuffle_buffer if is_train else 0, select=keep, drop_last=is_train,
                        name=f"the {spec.name} {'training' if is_train else 'test'} clips")
    # Persistent workers keep the stream's epoch counter, so each epoch is shuffled differently.
    return ClapLoader(stream, batch_size=None, num_workers=workers, persistent_workers=is_train and workers > 0)


def finetune_once(audio_encoder: nn.Module, spec: TaskSpec, clip: ClipSettings, train_urls: list[str],
                  test_urls: list[str], test_folds: Optional[Sequence[Any]], config: FineTuneConfig) -> float:
    """Fine-tune a copy of `audio_encoder` and return its test accuracy.

    Args:
        test_folds: fold values held out for testing (the rest train); None = no folds, the
            two URL lists are the train and test splits.
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    classifier = AudioClassifier(copy.deepcopy(audio_encoder), len(spec.classes), config.head_dropout)
    module = AudioFineTuning(classifier, config)
    field = spec.fold_field if test_folds is not None else None
    train = build_labelled_loader(train_urls, clip, spec, FoldFilter(field, test_folds, keep=False), config, True)
    test = build_labelled_loader(test_urls, clip, spec, FoldFilter(field, test_folds, keep=True), config, False)
    trainer = L.Trainer(accelerator=config.accelerator, devices=1, max_epochs=config.max_epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=train)
    scores = trainer.test(module, dataloaders=test, verbose=False)[0]
    if "test/acc" not in scores:
        raise DataError(f"{spec.name}: no test clips (held-out folds {test_folds})")
    return float(scores["test/acc"])


def finetune_task(audio_encoder: nn.Module, spec: TaskSpec, clip: ClipSettings, data_root: str | Path,
                  config: Optional[FineTuneConfig] = None, folds: Optional[Sequence[Any]] = None) -> dict[Any, float]:
    """Test accuracy per held-out fold (ESC-50: folds 1-5), or {"test": acc} for a train/test task.

    Args:
        folds: the fold values to hold out in turn; None = every value found in the shards.
    """
    config = config or FineTuneConfig()
    if spec.kind != "single_label" or not spec.classes:
        raise ValueError(f"fine-tuning needs a single-label task with a class list; '{spec.name}' is {spec.kind}")
    test_urls = split_urls(Path(data_root) / spec.source / spec.split)
    if not spec.fold_field:
        train_urls = split_urls(Path(data_root) / spec.source / "train")
        return {"test": finetune_once(audio_encoder, spec, clip, train_urls, test_urls, None, config)}
    if folds is None:
        folds = sort_class_names(scan_field(test_urls, spec.fold_field)[0])
    return {fold: finetune_once(audio_encoder, spec, clip, test_urls, test_urls, [fold], config) for fold in folds}
