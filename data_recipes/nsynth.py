"""nsynth: NSynth, 4 s single notes of 1,006 instruments, template captions from the note fields.

Source: Engel et al. 2017, download.magenta.tensorflow.org (`nsynth-{train,valid,test}.jsonwav.tar.gz`).
Licence: CC BY 4.0.

Layout (`--src`, the three archives extracted)::

    nsynth-<split>/examples.json       {note_str: {note, note_str, instrument, instrument_str, pitch,
                                        velocity, sample_rate, qualities, qualities_str,
                                        instrument_family(_str), instrument_source(_str)}}
    nsynth-<split>/audio/<note_str>.wav   16 kHz mono, 4 s

Splits: train, valid, test (289,205 / 12,678 / 4,096). Keep "test" out of pretraining when the
NSynth tasks are downstream (their instruments do not overlap train).
Captions: 2 of `TEMPLATES`, e.g. "a soft electronic keyboard note at C4 that sounds bright
and percussive": family (`_` -> space), source, pitch as a note name (MIDI 60 = C4),
velocity as a word (`VELOCITY_WORDS`), `qualities_str` joined. Labels: family, source and
qualities (`_` -> space; the multi-task heads read these). Kept as NSynth spells them, for the
zero-shot tasks (`clap_lightning/eval/tasks.py`): `pitch`, `velocity`, `instrument_family`
(e.g. "synth_lead"), `qualities` (the `qualities_str` list), `instrument_str`. Ids: the note_str.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_recipes.base import RecipeError, register_recipe
from data_recipes.common import BadRow, ClipItem, ClipRecipe, join_words, pick_captions, read_json

TEMPLATES = (
    "a {velocity} {source} {family} note at {pitch}{qualities}",
    "{source} {family} playing the note {pitch}{qualities}",
    "a single {family} note, {pitch}, played {velocity}{qualities}",
    "the sound of a {source} {family} note{qualities}",
)
VELOCITY_WORDS = {25: "very soft", 50: "soft", 75: "medium loud", 100: "loud", 127: "very loud"}
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(midi: int) -> str:
    """MIDI pitch -> scientific note name (60 -> C4)."""
    return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def velocity_word(velocity: int) -> str:
    """Nearest of NSynth's five velocities as a word."""
    return VELOCITY_WORDS[min(VELOCITY_WORDS, key=lambda v: abs(v - velocity))]


@register_recipe
class NSynthRecipe(ClipRecipe):
    """NSynth (306k 4 s notes, 11 families); template captions from note fields; CC BY 4.0."""

    name = "nsynth"
    version = "2"  # 2: instrument_family and qualities fields for the zero-shot tasks
    splits = ("train", "valid", "test")

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        root = src / f"nsynth-{split}"
        examples = read_json(root / "examples.json")
        if not isinstance(examples, dict):
            raise RecipeError(f"{root / 'examples.json'}: expected an object keyed by note_str")
        return [self._item(root, key, note) for key, note in sorted(examples.items())]

    def _item(self, root: Path, key: str, note: Any) -> ClipItem | BadRow:
        try:
            family_str = str(note["instrument_family_str"])
            source = str(note["instrument_source_str"])
            pitch, velocity = int(note["pitch"]), int(note["velocity"])
            qualities_str = [str(q) for q in note.get("qualities_str") or []]
        except (KeyError, TypeError, ValueError) as err:
            return BadRow("malformed_row", f"examples.json {key}: {type(err).__name__} {err}")
        family = family_str.replace("_", " ")
        qualities = [q.replace("_", " ") for q in qualities_str]
        extra = f" that sounds {join_words(qualities)}" if qualities else ""
        captions = pick_captions(TEMPLATES, key, 2, family=family, source=source, pitch=note_name(pitch),
                                 velocity=velocity_word(velocity), qualities=extra)
        meta = {"pitch": pitch, "velocity": velocity, "instrument_family": family_str, "qualities": qualities_str,
                "instrument_str": note.get("instrument_str", "")}
        labels = (family, source, *qualities)
        return ClipItem(key, str(root / "audio" / f"{key}.wav"), captions, labels, meta=meta, duration=4.0)
