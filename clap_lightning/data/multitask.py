"""Multi-task labels: read each task's target from a clip's json, batch them with masks, weigh sources.

A task reads one json field (`label_field`) of the clips of its own source(s):
- single: the field's value (or the one entry of a list) that is among the task's classes,
  e.g. `labels: ["bell"]`, `pitch: "low"` or NSynth's `labels: [family, source, *qualities]`
  read against the 11 families; no such value, or several, leaves the clip unlabelled;
- multi: a multi-hot vector of the listed values found among the classes (AudioSet tags);
- regression: a finite number, standardised with the task's mean and std.
Class names are compared as strings, so `pitch: 60` matches the class "60".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from clap_lightning.data.pipeline import stack_for_transfer
from clap_lightning.data.stream import single_pass


@dataclass(frozen=True)
class TaskLabelSpec:
    """How one task's target is read from a clip's json (picklable, for loader workers)."""

    name: str
    kind: str  # single | multi | regression
    label_field: str  # json field holding the label(s) or value
    classes: tuple[str, ...] = ()  # class names (single, multi), in head-output order
    sources: tuple[int, ...] = (0,)  # training sources whose clips this task labels
    mean: float = 0.0  # regression: subtracted from the value
    std: float = 1.0  # regression: the value is divided by this


def _values(raw: Any) -> list[str]:
    """A json field as a list of class-name strings (scalars become a one-item list)."""
    if raw is None:
        return []
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    return [str(v) for v in items if v is not None and not isinstance(v, (dict, list))]


def encode_target(spec: TaskLabelSpec, meta: dict[str, Any], index: dict[str, int]) -> tuple[Any, bool]:
    """(target, is_labelled) of one clip for one task; the target is a placeholder when unlabelled."""
    raw = meta.get(spec.label_field)
    if spec.kind == "regression":
        is_number = isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)
        return ((float(raw) - spec.mean) / spec.std, True) if is_number else (0.0, False)
    hits = sorted({index[v] for v in _values(raw) if v in index})
    if spec.kind == "multi":
        multi_hot = np.zeros(len(spec.classes), dtype=np.float32)
        multi_hot[hits] = 1.0
        return multi_hot, bool(hits)
    return (hits[0], True) if len(hits) == 1 else (0, False)


class MultiTaskCollate:
    """Stack clips and, per task, its targets and a mask of the clips labelled for it.

    Args:
        tasks: the tasks' label specs.
        source: the source index of every clip of this loader (validation: one loader per
            source); None takes each clip's `source_index` from the mixed training stream.
    """

    def __init__(self, tasks: Sequence[TaskLabelSpec], source: Optional[int] = None) -> None:
        self.tasks = list(tasks)
        self.source = source
        self._index = {t.name: {c: i for i, c in enumerate(t.classes)} for t in self.tasks}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        sources = [self.source if self.source is not None else s.get("source_index", 0) for s in samples]
        targets, masks = {}, {}
        for task in self.tasks:
            encoded = [encode_target(task, s["meta"], self._index[task.name]) if src in task.sources else (None, False)
                       for s, src in zip(samples, sources)]
            masks[task.name] = torch.tensor([ok for _, ok in encoded], dtype=torch.bool)  # [B]
            targets[task.name] = _stack_targets(task, [t for t, _ in encoded])
        return {
            "audio": stack_for_transfer([s["audio"] for s in samples]),  # [B, T]
            "audio_length": torch.tensor([s["length"] for s in samples]),  # [B] samples that are not padding
            "targets": targets,
            "masks": masks,
            "source_index": torch.tensor(sources, dtype=torch.long),  # [B]
            "key": [s["key"] for s in samples],
        }


def _stack_targets(task: TaskLabelSpec, values: list[Any]) -> torch.Tensor:
    if task.kind == "multi":
        blank = np.zeros(len(task.classes), dtype=np.float32)
        return torch.from_numpy(np.stack([blank if v is None else v for v in values]))  # [B, C]
    if task.kind == "regression":
        return torch.tensor([0.0 if v is None else v for v in values], dtype=torch.float32)  # [B]
    return torch.tensor([0 if v is None else v for v in values], dtype=torch.long)  # [B]


def temperature_weights(counts: Sequence[int], temperature: float) -> list[float]:
    """Sampling probabilities p_i proportional to n_i^(1/T): T=1 follows the sizes, large T tends to uniform."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not counts or any(n <= 0 for n in counts):
        raise ValueError(f"every source needs a positive sample count; got {list(counts)}")
    powered = [float(n) ** (1.0 / temperature) for n in counts]
    return [p / sum(powered) for p in powered]


def scan_field(urls: Iterable[str], field: str) -> tuple[Counter, list[float]]:
    """Read only the jsons of `urls`: (count of every class-name value, every finite numeric value)."""
    names: Counter = Counter()
    numbers: list[float] = []
    for sample in single_pass(list(urls), Counter()):
        try:
            raw = json.loads(sample["json"]).get(field)
        except (KeyError, ValueError, AttributeError):
            continue
        names.update(_values(raw))
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            numbers.append(float(raw))
    return names, numbers


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Numbers in numeric order (MIDI pitches, velocities), then names alphabetically."""
    def key(name: str) -> tuple[int, float, str]:
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    return sorted(set(names), key=key)
