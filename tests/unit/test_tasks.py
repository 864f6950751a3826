"""The downstream task registry: every task well-formed, paper numbers present, name resolution."""

from __future__ import annotations

import pytest
import torch

from clap_lightning.eval.metrics import retrieval_metrics
from clap_lightning.eval.tasks import (
    DEFAULT_PROMPT,
    KIND_METRICS,
    TASK_KINDS,
    TASKS,
    get_task,
    order_discovered_classes,
    resolve_tasks,
    task_names,
)

# Class counts of each dataset's public metadata.
STATED_CLASS_COUNTS = {
    "esc50": 50, "fsd50k": 200, "urbansound8k": 10, "dcase2017_task4": 17, "audioset": 527, "vocalsound": 6,
    "sesa": 4, "esc50_actions": 20, "tut2017": 15, "gtzan_music_speech": 2, "gtzan_genres": 10,
    "nsynth_velocity": 5, "nsynth_qualities": 10, "nsynth_instrument": 11, "beijing_opera": 4, "crema_d": 6,
    "ravdess": 8, "speech_commands": 35, "libricount10": 11,
}  # fmt: skip
CLASSIFICATION = ("single_label", "multi_label")


def test_the_paper_has_26_tasks():
    kinds = [spec.kind for spec in TASKS.values()]
    assert len(TASKS) == 26
    assert sum(k in CLASSIFICATION for k in kinds) == 20
    assert kinds.count("retrieval") == 4 and kinds.count("captioning") == 2


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_well_formed(name):
    spec = TASKS[name]
    assert spec.name == name and spec.display_name and spec.source and spec.split and spec.protocol
    assert spec.kind in TASK_KINDS
    assert spec.metric in KIND_METRICS[spec.kind]
    assert set(spec.paper) <= set(KIND_METRICS[spec.kind]) and set(spec.benchmark) <= set(KIND_METRICS[spec.kind])
    # The paper reports a number for the headline metric of every one of its 26 tasks.
    assert spec.paper[spec.metric] is not None and 0 < spec.paper[spec.metric] <= 1
    if spec.kind in CLASSIFICATION:
        assert spec.prompts and spec.prompts[0] == DEFAULT_PROMPT
        assert all(template.count("{}") == 1 for template in spec.prompts)
        assert spec.label_field and spec.direction is None
    else:
        assert not spec.prompts and not spec.classes and spec.label_field == "text"
    if spec.classes_from == "spec" and spec.kind in CLASSIFICATION:
        assert spec.classes and len(set(spec.classes)) == len(spec.classes) == spec.num_classes
        assert set(spec.class_text) <= set(spec.classes)
    else:
        assert spec.classes_from in ("spec", "shards") and not spec.classes


@pytest.mark.parametrize("name, count", sorted(STATED_CLASS_COUNTS.items()))
def test_class_counts_match_the_reference(name, count):
    assert TASKS[name].num_classes == count


def test_metric_per_task_follows_table_2():
    metrics = {name: spec.metric for name, spec in TASKS.items()}
    for name in ("fsd50k", "esc50_actions", "audioset", "nsynth_qualities"):
        assert metrics[name] == "mAP" and TASKS[name].is_multi_label
    assert metrics["dcase2017_task4"] == "F1" and TASKS["dcase2017_task4"].threshold == 0.5
    assert metrics["audiocaps_captioning"] == metrics["clotho_captioning"] == "SPIDEr"
    single = [n for n, s in TASKS.items() if s.kind == "single_label"]
    assert len(single) == 15 and all(metrics[n] == "acc" for n in single)


def test_paper_numbers_spot_checks():
    assert TASKS["esc50"].paper == {"acc": 0.939}
    assert TASKS["fsd50k"].paper == {"mAP": 0.485}
    assert TASKS["dcase2017_task4"].paper == {"F1": 0.466}
    assert TASKS["audioset"].paper == {"mAP": 0.102}
    assert TASKS["nsynth_pitch"].paper == {"acc": 0.444}
    assert TASKS["audiocaps_a2t"].paper == {"R@1": 0.425, "R@5": None, "R@10": None, "mAP@10": 0.319}
    assert TASKS["audiocaps_t2a"].paper["mAP@10"] == 0.51
    assert TASKS["clotho_a2t"].paper["R@1"] == 0.229 and TASKS["clotho_t2a"].paper["R@1"] == 0.157
    assert TASKS["clotho_captioning"].paper == {"SPIDEr": 0.271}


def test_random_benchmarks_match_the_class_count():
    # The paper's chance-level benchmarks imply SESA 4, NS Velocity 5, NS Instrument 11 classes.
    for name in ("sesa", "nsynth_velocity", "nsynth_instrument"):
        spec = TASKS[name]
        assert spec.benchmark_is_random
        assert spec.benchmark["acc"] == pytest.approx(1 / spec.num_classes, abs=0.002)


def test_exact_label_strings():
    assert TASKS["esc50"].classes[:3] == ["dog", "rooster", "pig"] and TASKS["esc50"].classes[-1] == "hand_saw"
    assert "Fire engine, fire truck (siren)" in TASKS["dcase2017_task4"].classes
    assert TASKS["gtzan_genres"].classes == [
        "blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock",
    ]  # fmt: skip
    assert TASKS["libricount10"].classes == [str(n) for n in range(11)]


def test_render_prompts_fills_every_template():
    esc50 = get_task("esc50")
    prompts = esc50.render_prompts()
    assert len(prompts) == 50 and all(len(row) == len(esc50.prompts) for row in prompts)
    assert prompts[11][0] == "this is the sound of sea waves"  # underscores become spaces
    assert get_task("sesa").render_prompts()[0][0] == "this is the sound of casual (not a threat)"
    pitch = get_task("nsynth_pitch")  # classes found in the shards
    assert pitch.render_prompts(["60", "72"]) == [
        [template.format("MIDI pitch 60") for template in pitch.prompts],
        [template.format("MIDI pitch 72") for template in pitch.prompts],
    ]


def test_retrieval_result_keys_exist_in_retrieval_metrics():
    computed = retrieval_metrics(torch.rand(2, 4), torch.tensor([0, 0, 1, 1]))
    for name in ("audiocaps_a2t", "audiocaps_t2a", "clotho_a2t", "clotho_t2a"):
        spec = TASKS[name]
        assert all(spec.result_key(metric) in computed for metric in spec.paper)
    assert TASKS["clotho_t2a"].result_key("R@1") == "t2a_r@1"
    assert TASKS["esc50"].result_key("acc") == "acc"


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'esc5'; known: audiocaps_a2t, audiocaps_captioning, ") as err:
        get_task("esc5")
    assert all(name in str(err.value) for name in task_names())
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        resolve_tasks("esc50,nope")


def test_resolve_tasks():
    assert [spec.name for spec in resolve_tasks("all")] == list(TASKS)
    assert [spec.name for spec in resolve_tasks("esc50, clotho")] == ["esc50", "clotho_a2t", "clotho_t2a"]
    assert [spec.name for spec in resolve_tasks("clotho_t2a,clotho,esc50,esc50")] == [
        "clotho_t2a", "clotho_a2t", "esc50",
    ]  # fmt: skip
    assert [spec.name for spec in resolve_tasks(["nsynth"])] == [
        "nsynth_pitch", "nsynth_velocity", "nsynth_qualities", "nsynth_instrument",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no task selected"):
        resolve_tasks(" , ")


def test_get_task_returns_a_copy():
    spec = get_task("esc50")
    spec.prompts.append("{} can be heard")
    spec.classes.clear()
    assert len(TASKS["esc50"].prompts) == 2 and len(TASKS["esc50"].classes) == 50


def test_discovered_classes_are_ordered():
    assert order_discovered_classes([100, "21", 60, "60", 9]) == ["9", "21", "60", "100"]
    assert order_discovered_classes(["Speech", "Music", "Dog", "Music"]) == ["Dog", "Music", "Speech"]
