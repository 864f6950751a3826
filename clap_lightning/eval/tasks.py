"""Registry of the CLAP-2023 paper's 26 downstream tasks: classes, split, prompts, metric, reported numbers.

Reported numbers are Table 2 of Elizalde, Deshmukh, Wang, "Natural Language Supervision for
General-Purpose Audio Representations" (arXiv 2309.05767v2, ICASSP 2024); class lists are the
exact strings of each dataset's public metadata (e.g. ESC-50's `meta/esc50.csv` `category`,
AudioSet's `class_labels_indices.csv`, NSynth's `examples.json`). Where the paper does not
state its protocol (split, prompt, threshold, label set), the choice made here is ours and
`notes` says so; those rows compare with the paper only approximately.

Shards: a task reads `<data>/<source>/<split>/*.tar`; each sample's json field
`label_field` holds a string or a list of strings (numbers compare as `str(value)`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from clap_lightning.data.schema import DEMO_CLASSES

TASK_KINDS = ("single_label", "multi_label", "retrieval", "captioning")
# The metrics each kind may report (paper Table 2 caption, Sec. 4.3).
KIND_METRICS = {
    "single_label": ("acc",),
    "multi_label": ("mAP", "F1"),
    "retrieval": ("R@1", "R@5", "R@10", "mAP@10"),
    "captioning": ("SPIDEr", "CIDEr-D", "BLEU_4", "ROUGE_L"),
}
# Paper metric name -> suffix of the keys `metrics.retrieval_metrics` returns.
_RETRIEVAL_KEY = {"R@1": "r@1", "R@5": "r@5", "R@10": "r@10", "mAP@10": "mAP@10"}

# msclap's 2023 zero-shot template (examples/zero_shot_classification.py), the one its
# README reports ESC-50 93.9 % with (= paper Table 2); first in every classification task.
DEFAULT_PROMPT = "this is the sound of {}"
# msclap 2022 and LAION-CLAP's template; a second candidate for prompt ensembling.
ALT_PROMPT = "this is a sound of {}"


@dataclass
class TaskSpec:
    """One downstream task: what to load, how to prompt and score it, and what the paper reports."""

    name: str  # registry key and log name: `val/<name>/<metric>`
    display_name: str  # row label in the results table
    kind: str  # one of TASK_KINDS; multi_label is scored from sigmoid, single_label from softmax
    metric: str  # headline metric, one of KIND_METRICS[kind]
    source: str  # shard source directory under the data root
    split: str  # shard split evaluated (`<data>/<source>/<split>/`)
    protocol: str  # which clips / folds make the number comparable to the paper
    classes: list[str] = field(default_factory=list)  # exact label strings in shards, in index order
    classes_from: str = "spec"  # "spec": `classes` above; "shards": `order_discovered_classes` of the split's labels
    num_classes: int | None = None  # expected class count (also for classes_from="shards")
    prompts: list[str] = field(default_factory=list)  # templates with one `{}`; the first is the default
    class_text: dict[str, str] = field(default_factory=dict)  # label -> words put into prompts, where not the label
    class_format: str = "{}"  # applied to a label (underscores -> spaces) that has no class_text entry
    label_field: str = "labels"  # json field holding the labels (captions for retrieval/captioning)
    fold_field: str | None = None  # json field with the fold number, for cross-validated probes
    threshold: float | None = None  # decision threshold on sigmoid scores, for F1 tasks
    direction: str | None = None  # retrieval only: "a2t" or "t2a"
    paper: dict[str, float | None] = field(default_factory=dict)  # metric -> CLAP-2023 Table 2; None = not reported
    benchmark: dict[str, float | None] = field(default_factory=dict)  # metric -> Table 2 "Benchmark" column
    benchmark_is_random: bool = False  # the benchmark is chance level, not a published model
    notes: str = ""  # protocol choices the paper leaves open, and other caveats
    # paper metric -> the metric we report beside it because the paper's cannot be computed here
    # (captioning: SPIDEr needs SPICE; CIDEr-D is shown next to it, labelled, never as it)
    stand_in: dict[str, str] = field(default_factory=dict)

    @property
    def is_multi_label(self) -> bool:
        return self.kind == "multi_label"

    def class_texts(self) -> list[str]:
        """Return the words each class contributes to a prompt, in class order."""
        return [self.class_text.get(c, self.class_format.format(c.replace("_", " "))) for c in self.classes]

    def render_prompts(self, classes: list[str] | None = None) -> list[list[str]]:
        """Return `[C][P]` prompt texts: every template filled with every class (default template first).

        Args:
            classes: label strings to use instead of `classes` (for classes_from="shards").
        """
        labels = self.classes if classes is None else classes
        spec = self if classes is None else replace(self, classes=list(labels))
        return [[template.format(text) for template in self.prompts] for text in spec.class_texts()]

    def result_key(self, metric: str) -> str:
        """Map a paper metric to the key that holds our value (`t2a_r@1` for retrieval, else the name)."""
        if self.kind == "retrieval":
            return f"{self.direction}_{_RETRIEVAL_KEY[metric]}"
        return metric

    def headline(self, metrics: dict[str, float]) -> tuple[str, float]:
        """The headline metric's label and our value: the paper's metric, or its labelled stand-in."""
        metric = self.stand_in.get(self.metric, self.metric)
        label = metric if metric == self.metric else f"{metric} (paper: {self.metric})"
        return label, metrics[self.result_key(metric)]


def order_discovered_classes(labels) -> list[str]:
    """Order the labels found in a split's shards (classes_from="shards"): numerically if all are integers."""
    unique = {str(label) for label in labels}
    if all(label.lstrip("-").isdigit() for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _labels(text: str) -> list[str]:
    return [label.strip() for label in text.split(",")]


ESC50_CLASSES = _labels(
    "dog, rooster, pig, cow, frog, cat, hen, insects, sheep, crow, rain, sea_waves, crackling_fire, crickets, "
    "chirping_birds, water_drops, wind, pouring_water, toilet_flush, thunderstorm, crying_baby, sneezing, clapping, "
    "breathing, coughing, footsteps, laughing, brushing_teeth, snoring, drinking_sipping, door_wood_knock, "
    "mouse_click, keyboard_typing, door_wood_creaks, can_opening, washing_machine, vacuum_cleaner, clock_alarm, "
    "clock_tick, glass_breaking, helicopter, chainsaw, siren, car_horn, engine, train, church_bells, airplane, "
    "fireworks, hand_saw"
)
URBANSOUND8K_CLASSES = _labels(
    "air_conditioner, car_horn, children_playing, dog_bark, drilling, engine_idling, gun_shot, jackhammer, siren, "
    "street_music"
)
# `sound_event_list_17_classes.txt` order; several labels contain commas, so listed one by one.
DCASE2017_TASK4_CLASSES = [
    "Train horn", "Air horn, truck horn", "Car alarm", "Reversing beeps", "Bicycle", "Skateboard",
    "Ambulance (siren)", "Fire engine, fire truck (siren)", "Civil defense siren", "Police car (siren)",
    "Screaming", "Car", "Car passing by", "Bus", "Truck", "Motorcycle", "Train",
]  # fmt: skip
VOCALSOUND_CLASSES = _labels("laughter, sigh, cough, throat clearing, sneeze, sniff")  # file token: throatclearing
SESA_CLASSES = _labels("casual, gunshot, explosion, siren")  # index order 0-3 of the SESA README
ESC50_ACTIONS_CLASSES = _labels(
    "blowing, breaking, calling, crumpling, dripping, exhaling, exploding, gasping, groaning, pouring, ringing, "
    "rolling, rotating, scraping, singing, sizzling, splashing, tapping, vibrating, wailing"
)
TUT2017_CLASSES = _labels(
    "beach, bus, cafe/restaurant, car, city_center, forest_path, grocery_store, home, library, metro_station, "
    "office, park, residential_area, train, tram"
)
GTZAN_GENRES_CLASSES = _labels("blues, classical, country, disco, hiphop, jazz, metal, pop, reggae, rock")
NSYNTH_VELOCITY_CLASSES = ["25", "50", "75", "100", "127"]
NSYNTH_QUALITIES_CLASSES = _labels(
    "bright, dark, distortion, fast_decay, long_release, multiphonic, nonlinear_env, percussive, reverb, tempo-synced"
)
NSYNTH_INSTRUMENT_CLASSES = _labels(
    "bass, brass, flute, guitar, keyboard, mallet, organ, reed, string, synth_lead, vocal"
)
BEIJING_OPERA_CLASSES = _labels("bangu, naobo, daluo, xiaoluo")
# Recipes map the corpora's codes to these words: CREMA-D file token, RAVDESS emotion field.
CREMA_D_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
RAVDESS_CODES = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip
SPEECH_COMMANDS_35 = _labels(
    "yes, no, up, down, left, right, on, off, stop, go, zero, one, two, three, four, five, six, seven, eight, nine, "
    "bed, bird, cat, dog, happy, house, marvin, sheila, tree, wow, backward, forward, follow, learn, visual"
)
# The 12-class keyword-spotting variant (TFDS / HEAR official test set); not registered, kept for reference.
SPEECH_COMMANDS_12 = _labels("down, go, left, no, off, on, right, stop, up, yes, _silence_, _unknown_")
LIBRICOUNT10_CLASSES = [str(n) for n in range(11)]


def _zero_shot(name: str, display_name: str, metric: str, paper: float, benchmark: float, **fields) -> TaskSpec:
    """Build a classification task; `prompts` extends the default templates, the rest go to TaskSpec."""
    extra = fields.pop("prompts", [])
    kind = "single_label" if metric == "acc" else "multi_label"
    fields.setdefault("source", name)
    fields.setdefault("split", "test")
    if "classes" in fields:
        fields.setdefault("num_classes", len(fields["classes"]))
    return TaskSpec(
        name=name,
        display_name=display_name,
        kind=kind,
        metric=metric,
        prompts=[DEFAULT_PROMPT, ALT_PROMPT, *extra],
        paper={metric: paper},
        benchmark={metric: benchmark},
        **fields,
    )


def _caption_task(corpus: str, suffix: str, display_name: str, kind: str, metric: str, **fields) -> TaskSpec:
    """Build a task scored against the captions (`text` field) of a corpus' test split."""
    return TaskSpec(name=f"{corpus}_{suffix}", display_name=display_name, kind=kind, metric=metric, source=corpus,
                    split="test", label_field="text", **fields)


def _retrieval(
    corpus: str, display: str, direction: str, paper: tuple[float, float], benchmark: tuple[float, float], protocol: str
) -> TaskSpec:
    """Build one retrieval direction; `paper` / `benchmark` are (R@1, mAP@10)."""
    arrow = "audio→text" if direction == "a2t" else "text→audio"
    return _caption_task(
        corpus, direction, f"{display} {arrow}", "retrieval", "R@1",
        protocol=protocol,
        direction=direction,
        # The paper reports R@1 and mAP@10 only; R@5 / R@10 are ours, shown without a paper value.
        paper={"R@1": paper[0], "R@5": None, "R@10": None, "mAP@10": paper[1]},
        benchmark={"R@1": benchmark[0], "R@5": None, "R@10": None, "mAP@10": benchmark[1]},
    )


def _captioning(corpus: str, display: str, paper: float, benchmark: float, protocol: str) -> TaskSpec:
    return _caption_task(
        corpus, "captioning", f"{display} captioning", "captioning", "SPIDEr",
        protocol=protocol,
        paper={"SPIDEr": paper},
        benchmark={"SPIDEr": benchmark},
        stand_in={"SPIDEr": "CIDEr-D"},
        notes="Scored only with `eval --captioner CKPT`: captions generated from the CLAP audio embeddings, scored "
              "with CIDEr-D, BLEU-4 and ROUGE-L. SPIDEr = (CIDEr-D + SPICE) / 2 needs SPICE (Java + CoreNLP "
              "models), which is unavailable (eval/caption_metrics.py), so CIDEr-D stands beside the paper's SPIDEr.",
    )


_ALL_FILES = "zero-shot on every clip of the corpus"
_CLOTHO_RETRIEVAL = "v2.1 evaluation split: 1,045 clips x 5 captions"
_TASK_LIST = [
    # ----------------------------------------------------------------- sound events / scenes
    _zero_shot("esc50", "ESC50", "acc", 0.939, 0.948, classes=ESC50_CLASSES, fold_field="fold",
               protocol=f"{_ALL_FILES} (2,000, as msclap); linear probe / fine-tune: 5-fold CV over 'fold' 1-5",
               notes="Paper also reports 0.9825 after fine-tuning the audio encoder."),
    _zero_shot("fsd50k", "FSD50K", "mAP", 0.485, 0.302, classes_from="shards", num_classes=200,
               protocol="FSD50K eval set (10,231 clips)",
               notes="200 classes of vocabulary.csv, discovered from the shards' labels (the eval set holds all 200). "
                     "FSD50K audio with web descriptions is in the paper's pretraining data (not truly zero-shot)."),
    _zero_shot("urbansound8k", "UrbanSound8K", "acc", 0.823, 0.806, classes=URBANSOUND8K_CLASSES, fold_field="fold",
               protocol=f"{_ALL_FILES} (8,732); the 10 predefined folds are kept in 'fold'",
               notes="WavCaps averages per-fold accuracy instead; the paper does not say which it used."),
    _zero_shot("dcase2017_task4", "DCASE2017 Task 4", "F1", 0.466, 0.3, classes=DCASE2017_TASK4_CLASSES,
               threshold=0.5,
               protocol="evaluation set (1,103 clips), micro F1 over clip x class decisions at per-clip softmax >= 0.5",
               notes="Unverified: the paper states neither the set (dev test 488 vs evaluation 1,103) nor the "
                     "threshold; 0.5 is the DCASE2017 baseline's global threshold, applied here to the softmax "
                     "over the 17 classes (eval/zeroshot.py: sigmoid of a scaled cosine is ~1 for every class)."),
    _zero_shot("audioset", "AudioSet", "mAP", 0.102, 0.058, classes_from="shards", num_classes=527,
               protocol="eval_segments.csv (20,383 listed; report how many were scored)",
               notes="527 display names of class_labels_indices.csv, discovered from the shards. The poster text "
                     "is garbled for this cell; 0.102 is the paper's Table 2 value (arXiv v2)."),
    _zero_shot("vocalsound", "VocalSound", "acc", 0.80, 0.495, classes=VOCALSOUND_CLASSES,
               protocol="official speaker-disjoint test split (te.json)"),
    _zero_shot("sesa", "SESA", "acc", 0.65, 0.25, classes=SESA_CLASSES, benchmark_is_random=True,
               class_text={"casual": "casual (not a threat)"}, protocol="official test folder (105 clips)",
               notes="Unverified: the label strings in SESA's file names / SESA.txt; the recipe must map them "
                     "to these."),
    _zero_shot("esc50_actions", "ESC50-Actions", "mAP", 0.509, 0.045, classes=ESC50_ACTIONS_CLASSES,
               benchmark_is_random=True, fold_field="fold", protocol=f"{_ALL_FILES} (the 2,000 ESC-50 clips)",
               notes="Unverified: the vote threshold that makes an action positive (the recipe decides, "
                     "e.g. votes > 0)."),
    _zero_shot("tut2017", "TUT2017", "acc", 0.538, 0.296, classes=TUT2017_CLASSES,
               protocol="evaluation set (about 1,620 segments)",
               notes="Unverified: the paper does not say whether it scored the evaluation set or the dev folds."),
    # ----------------------------------------------------------------- music
    _zero_shot("gtzan_music_speech", "GTZAN Music-Speech", "acc", 0.992, 1.0, classes=["music", "speech"],
               protocol=f"{_ALL_FILES} (120)"),
    _zero_shot("gtzan_genres", "GTZAN Genres", "acc", 0.584, 0.25, classes=GTZAN_GENRES_CLASSES,
               prompts=["this audio is a {} song"], class_text={"hiphop": "hip hop"},
               protocol=f"{_ALL_FILES} (1,000)"),
    # ----------------------------------------------------------------- instruments (NSynth test split, 4,096 notes)
    _zero_shot("nsynth_pitch", "NSynth Pitch", "acc", 0.444, 0.015, source="nsynth", label_field="pitch",
               classes_from="shards", class_format="MIDI pitch {}", benchmark_is_random=True,
               protocol="official test split; candidates = pitches present in it",
               notes="Unverified label set: TFDS declares 128 pitches, HEAR keeps 21-108; the paper's random 0.015 "
                     "suggests about 67 candidates. Here: the pitches found in the test shards."),
    _zero_shot("nsynth_velocity", "NSynth Velocity", "acc", 0.222, 0.2, source="nsynth", label_field="velocity",
               classes=NSYNTH_VELOCITY_CLASSES, class_format="velocity {}", benchmark_is_random=True,
               protocol="official test split"),
    _zero_shot("nsynth_qualities", "NSynth Qualities", "mAP", 0.489, 0.1, source="nsynth", label_field="qualities",
               classes=NSYNTH_QUALITIES_CLASSES, class_text={"nonlinear_env": "nonlinear envelope"},
               benchmark_is_random=True, protocol="official test split"),
    _zero_shot("nsynth_instrument", "NSynth Instrument", "acc", 0.479, 0.09, source="nsynth",
               label_field="instrument_family", classes=NSYNTH_INSTRUMENT_CLASSES,
               class_text={"synth_lead": "synth lead"},
               benchmark_is_random=True, protocol="official test split"),
    _zero_shot("beijing_opera", "Beijing Opera", "acc", 0.466, 0.4746, classes=BEIJING_OPERA_CLASSES,
               class_text={"bangu": "bangu clapper drum", "naobo": "naobo cymbals", "daluo": "daluo large gong",
                           "xiaoluo": "xiaoluo small gong"},
               protocol=f"{_ALL_FILES} (236; only the original train set was released)"),
    # ----------------------------------------------------------------- speech
    _zero_shot("crema_d", "CREMA-D", "acc", 0.30, 0.178, classes=list(CREMA_D_CODES.values()),
               prompts=["a person speaking with {} emotion"], protocol=f"{_ALL_FILES} (7,442)",
               notes="Unverified subset (all files vs a fold). The paper's text quotes CLAP-2022 at 0.234 while its "
                     "Table 2 benchmark column shows 0.178."),
    _zero_shot("ravdess", "RAVDESS", "acc", 0.315, 0.159, classes=list(RAVDESS_CODES.values()),
               prompts=["a person speaking with {} emotion"], protocol=f"{_ALL_FILES}: the 1,440 speech files",
               notes="Unverified: whether the 1,012 song files were included. The paper's text quotes CLAP-2022 at "
                     "0.171 while its Table 2 benchmark column shows 0.159."),
    _zero_shot("speech_commands", "Speech Commands", "acc", 0.164, 0.106, classes=SPEECH_COMMANDS_35,
               prompts=['a person saying "{}"'], protocol="v0.02 test list (testing_list.txt), 35 words",
               notes="Unverified variant: 35 words chosen (zero-shot has no text for '_unknown_' / '_silence_'); "
                     "the 12-class KWS test set is SPEECH_COMMANDS_12."),
    _zero_shot("libricount10", "LibriCount10", "acc", 0.246, 0.178, classes=LIBRICOUNT10_CLASSES,
               class_format="{} people speaking", class_text={"0": "no one speaking", "1": "one person speaking"},
               protocol=f"{_ALL_FILES} (5,720; the original test set is not available)"),
    # ----------------------------------------------------------------- retrieval and captioning
    # The paper's Table 2 (arXiv v2). The ICASSP poster scrambles these cells; its numbers agree
    # with Table 2 except the A->T AudioCaps R@1 benchmark (0.517), which it drops.
    _retrieval("audiocaps", "AudioCaps", "a2t", (0.425, 0.319), (0.517, 0.457), "test split: 975 clips x 5 captions"),
    _retrieval("audiocaps", "AudioCaps", "t2a", (0.356, 0.51), (0.397, 0.51), "test split: 975 clips x 5 captions"),
    _retrieval("clotho", "Clotho", "a2t", (0.229, 0.155), (0.234, 0.138), _CLOTHO_RETRIEVAL),
    _retrieval("clotho", "Clotho", "t2a", (0.157, 0.257), (0.195, 0.204), _CLOTHO_RETRIEVAL),
    _captioning("audiocaps", "AudioCaps", 0.455, 0.438, "test split: 975 clips, 5 references each"),
    _captioning("clotho", "Clotho", 0.271, 0.215, "v2.1 evaluation split: 1,045 clips, 5 references each"),
]  # fmt: skip
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _TASK_LIST}

# Tasks outside the paper: asked for by name (`eval --tasks demo`, the validation callback), never in "all".
EXTRA_TASKS: dict[str, TaskSpec] = {
    "demo": TaskSpec(
        name="demo", display_name="Demo corpus", kind="single_label", metric="acc", source="demo", split="test",
        protocol="the built-in synthetic corpus' test split (`python -m data_recipes build demo`)",
        classes=list(DEMO_CLASSES), num_classes=len(DEMO_CLASSES), prompts=[ALT_PROMPT], fold_field=None,
        paper={"acc": None}, benchmark={"acc": None},
        notes="Not a paper task: a smoke test of the whole pipeline; its captions teach the ALT_PROMPT wording."),
}

# Names that expand to several tasks in `resolve_tasks`.
TASK_GROUPS: dict[str, list[str]] = {
    "all": list(TASKS),
    "zero_shot": [n for n, s in TASKS.items() if s.kind in ("single_label", "multi_label")],
    "retrieval": [n for n, s in TASKS.items() if s.kind == "retrieval"],
    "captioning": [n for n, s in TASKS.items() if s.kind == "captioning"],
    "nsynth": [n for n, s in TASKS.items() if s.source == "nsynth"],
    # A corpus name means its retrieval rows (both directions); captioning is asked for by name.
    "audiocaps": ["audiocaps_a2t", "audiocaps_t2a"],
    "clotho": ["clotho_a2t", "clotho_t2a"],
}


def task_names() -> list[str]:
    return sorted({**TASKS, **EXTRA_TASKS})


def get_task(name: str) -> TaskSpec:
    """Return a copy of the registered task `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the known tasks.
    """
    spec = TASKS.get(name) or EXTRA_TASKS.get(name)
    if spec is None:
        raise ValueError(f"unknown task '{name}'; known: {', '.join(task_names())} (groups: {', '.join(TASK_GROUPS)})")
    return copy.deepcopy(spec)


def resolve_tasks(selection: str | list[str]) -> list[TaskSpec]:
    """Turn "all", a group or a comma-separated list ("esc50,clotho") into task specs, in order, without repeats."""
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    names: list[str] = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        for name in TASK_GROUPS.get(item, [item]):
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"no task selected in {selection!r}; known: {', '.join(task_names())}")
    return [get_task(name) for name in names]
