"""Score registry tasks with one model: zero-shot classification, retrieval, optional linear probe,
and captioning when a captioner is given (its captions of the CLAP audio embeddings, CIDEr-D etc.).

Each task reads `<data>/<task.source>/<task.split>/`; a task whose split has no shards becomes
a "skipped: no shards at <dir>" result instead of an error, so one missing corpus does not
stop a 26-task run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from clap_lightning.data.stream import format_skipped
from clap_lightning.errors import DataError
from clap_lightning.eval.embed import (ClipSettings, EmbeddedSplit, EmbeddingCache, build_eval_loader, embed_batches,
                                       split_urls)
from clap_lightning.data.schema import read_labels
from clap_lightning.eval.caption_metrics import compute_caption_metrics
from clap_lightning.eval.linear_probe import cross_validate_probe, train_test_probe
from clap_lightning.eval.retrieval import clip_captions, score_retrieval
from clap_lightning.eval.tasks import TaskSpec, order_discovered_classes
from clap_lightning.eval.zeroshot import (build_targets, confusion_matrix, embed_class_prompt_sets, model_logit_scale,
                                          score_zero_shot)

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """What one task scored (keys as `TaskSpec.result_key`), or why it was not scored."""

    spec: TaskSpec
    metrics: dict[str, float] = field(default_factory=dict)
    num_clips: int = 0
    status: str = ""  # "" when scored, else "skipped: <reason>"
    left_out: dict[str, int] = field(default_factory=dict)  # bad samples and shards not scored, by reason
    classes: list[str] = field(default_factory=list)  # classification: the classes scored, in logit order
    confusion: Optional[torch.Tensor] = None  # single-label: [C, C] counts, rows = true class


@dataclass
class EvalOptions:
    """How tasks are read and scored."""

    batch_size: int = 64  # clips per forward pass
    num_workers: int = 0  # loader worker processes
    ensemble_prompts: bool = False  # average every template of a task (else the first only)
    linear_probe: bool = False  # also fit a logistic-regression probe on single-label tasks (`probe_acc`)


class TaskEvaluator:
    """Scores tasks with `model`; each `<source>/<split>` is embedded once (memory, then the disk cache).

    Args:
        model: a `CLAP` (any module with `encode_audio`, `encode_text`, `logit_scale`).
        tokenizer: the model's caption tokenizer.
        clip: sample rate / clip length / padding of the model's input.
        data_root: directory holding `<source>/<split>/` shard folders.
        cache: on-disk embedding cache, or None.
        captioner: a `Captioner` reading this model's audio embeddings, for captioning tasks
            (without one they are skipped); it decodes with `decoding` (default: its own).
    """

    def __init__(self, model, tokenizer, clip: ClipSettings, data_root: str | Path,
                 cache: Optional[EmbeddingCache] = None, options: Optional[EvalOptions] = None,
                 captioner=None, decoding=None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.clip = clip
        self.data_root = Path(data_root)
        self.cache = cache
        self.options = options or EvalOptions()
        self.captioner = captioner
        self.decoding = decoding
        self.num_embedded = 0  # splits run through the audio encoder
        self.num_from_cache = 0  # splits read from the disk cache
        self._memory: dict[tuple[str, str], EmbeddedSplit] = {}
        self._scorers: dict[str, Callable[[TaskSpec, EmbeddedSplit, TaskResult], None]] = {
            "single_label": self._score_classification,
            "multi_label": self._score_classification,
            "retrieval": self._score_retrieval,
            "captioning": self._score_captioning,
        }

    def split_dir(self, spec: TaskSpec) -> Path:
        return self.data_root / spec.source / spec.split

    def embed(self, source: str, split: str, urls: Optional[list[str]] = None) -> EmbeddedSplit:
        """Audio embeddings of `<data>/<source>/<split>` (or of `urls`), computed at most once per
        evaluator and cache."""
        key = (source, split)
        if key in self._memory:
            return self._memory[key]
        embedded = self.cache.load(source, split) if self.cache else None
        if embedded is not None:
            self.num_from_cache += 1
        else:
            urls = urls or split_urls(self.data_root / source / split)
            loader = build_eval_loader(urls, self.clip, self.options.batch_size, self.options.num_workers,
                                       name=f"{source}/{split}")
            embedded = embed_batches(self.model, loader)
            self.num_embedded += 1
            if embedded.skipped:
                log.warning("%s/%s: left out %s", source, split, format_skipped(embedded.skipped))
            if self.cache:
                self.cache.save(source, split, embedded)
        self._memory[key] = embedded
        return embedded

    def evaluate(self, spec: TaskSpec, urls: Optional[list[str]] = None) -> TaskResult:
        """Score one task; missing shards and kinds not implemented yet give a skipped result.

        Args:
            urls: the task's shards, instead of `<data>/<source>/<split>` (`clap-lightning zeroshot`).
        """
        scorer = self._scorers.get(spec.kind)
        if scorer is None:
            return TaskResult(spec, status=f"skipped: {spec.kind} is not implemented yet")
        if spec.kind == "captioning" and self.captioner is None:
            return TaskResult(spec, status="skipped: captioning needs a captioner (eval --captioner CKPT)")
        split_dir = self.split_dir(spec)
        if not urls:
            try:
                split_urls(split_dir)
            except DataError:
                return TaskResult(spec, status=f"skipped: no shards at {split_dir}")
        embedded = self.embed(spec.source, spec.split, urls)
        result = TaskResult(spec, num_clips=len(embedded.keys), left_out=embedded.skipped)
        scorer(spec, embedded, result)
        return result

    def evaluate_all(self, specs: list[TaskSpec]) -> list[TaskResult]:
        results = []
        for spec in specs:
            results.append(self.evaluate(spec))
            log.info("%s: %s", spec.name, results[-1].status or results[-1].metrics)
        return results

    def _score_classification(self, spec: TaskSpec, embedded: EmbeddedSplit, result: TaskResult) -> None:
        labels = [read_labels(meta, spec.label_field) for meta in embedded.metas]
        classes = spec.classes
        if spec.classes_from == "shards":
            classes = order_discovered_classes(label for labs in labels for label in labs)
        prompts = spec.render_prompts(classes)
        class_emb = embed_class_prompt_sets(self.model, self.tokenizer, prompts, self.options.ensemble_prompts)
        targets = build_targets(labels, classes, spec.is_multi_label)
        logits = model_logit_scale(self.model) * embedded.audio_emb @ class_emb.T  # [N, C]
        result.metrics = score_zero_shot(spec.kind, logits, targets, spec.threshold)
        result.classes = list(classes)
        if spec.kind == "single_label":
            result.confusion = confusion_matrix(logits, targets)
            if self.options.linear_probe:
                result.metrics.update(self._linear_probe(spec, embedded, classes, targets))

    def _score_retrieval(self, spec: TaskSpec, embedded: EmbeddedSplit, result: TaskResult) -> None:
        result.metrics = score_retrieval(self.model, self.tokenizer, embedded.audio_emb, embedded.metas,
                                         spec.label_field)

    def _score_captioning(self, spec: TaskSpec, embedded: EmbeddedSplit, result: TaskResult) -> None:
        """Caption each clip from its audio embedding; CIDEr-D, BLEU-4, ROUGE-L against its captions."""
        from clap_lightning.models.captioner import caption_audio

        references = clip_captions(embedded.metas, spec.label_field)
        captions = caption_audio(self.captioner, audio_emb=embedded.audio_emb, decoding=self.decoding,
                                 batch_size=self.options.batch_size)
        scores = compute_caption_metrics(captions, references)
        result.metrics = {m: scores[m] for m in ("CIDEr-D", "BLEU_4", "ROUGE_L")}
        log.info("%s: first captions %s", spec.name, captions[:3])

    def _linear_probe(self, spec: TaskSpec, embedded: EmbeddedSplit, classes: list[str],
                      targets: torch.Tensor) -> dict[str, float]:
        """`probe_acc`: cross-validated over `spec.fold_field`, else trained on the `train` split.

        A task without folds and without a `train` split gets no probe (logged, not fatal).
        """
        if spec.fold_field:
            folds = [meta.get(spec.fold_field) for meta in embedded.metas]
            return {"probe_acc": cross_validate_probe(embedded.audio_emb, targets, folds, len(classes)).mean_accuracy}
        try:
            train = self.embed(spec.source, "train")
        except DataError as err:
            log.warning("%s: no linear probe (%s)", spec.name, err)
            return {}
        train_targets = build_targets([read_labels(m, spec.label_field) for m in train.metas], classes, False)
        return {"probe_acc": train_test_probe(train.audio_emb, train_targets, embedded.audio_emb, targets,
                                              len(classes))}
