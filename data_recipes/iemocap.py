"""iemocap: IEMOCAP, acted dyadic conversations, captions from transcript and emotion label.

Source: Busso et al. 2008, USC SAIL (`IEMOCAP_full_release`). Licence: gated; a signed
licence from USC SAIL is required, research use.

Layout (`--src` = `IEMOCAP_full_release/`)::

    Session<n>/sentences/wav/<dialog>/<utt>.wav          utterances (16 kHz)
    Session<n>/dialog/EmoEvaluation/<dialog>.txt         "[start - end]\t<utt>\t<cat>\t[V, A, D]" lines
    Session<n>/dialog/transcriptions/<dialog>.txt        "<utt> [start-end]: text" lines

Categories (`EMOTIONS`): ang, hap, exc, sad, fru, fea, sur, neu, dis, oth, xxx (no agreement).
Captions: 2 of `common.EMOTION_TEMPLATES` ('a woman sounds frustrated while saying "..."');
for `oth`/`xxx` 2 of `common.SPEECH_TEMPLATES` (transcript only, no label). The speaker's
gender is the letter before the utterance number (`Ses01F_impro01_M012` -> M). Labels: the
emotion word; `valence`, `arousal`, `dominance`, `speaker_gender` kept.
Splits: by session, `test_sessions` (default 5) -> "test", the rest -> "train" (the usual
leave-one-session-out fold). Ids: the utterance id.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from data_recipes.base import register_recipe
from data_recipes.common import (BadRow, ClipItem, ClipRecipe, emotion_captions, read_text, speaker_phrase,
                                 speech_captions)

EMOTIONS = {"ang": "angry", "hap": "happy", "exc": "excited", "sad": "sad", "fru": "frustrated", "fea": "fearful",
            "sur": "surprised", "neu": "neutral", "dis": "disgusted", "oth": "", "xxx": ""}
_EVALUATION = re.compile(r"^\[([\d.]+) - ([\d.]+)\]\t(\S+)\t(\S+)\t\[([\d.]+), ([\d.]+), ([\d.]+)\]")
_TRANSCRIPT = re.compile(r"^(\S+) \[[\d.]+-[\d.]+\]: ?(.*)$")


@dataclasses.dataclass
class IemocapConfig:
    """Which sessions form the test split."""

    test_sessions: str = "5"  # comma-separated session numbers held out as "test"


def _speaker(utt: str) -> str:
    match = re.search(r"_([FM])\d+$", utt)
    return match.group(1) if match else ""


@register_recipe
class IemocapRecipe(ClipRecipe):
    """IEMOCAP (~10k acted utterances, 5 sessions); gated licence."""

    name = "iemocap"
    version = "1"
    splits = ("train", "test")
    config_cls = IemocapConfig

    def items(self, src: Path, split: str) -> list[ClipItem | BadRow]:
        test = {s.strip() for s in self.config.test_sessions.split(",") if s.strip()}
        sessions = sorted(p for p in src.glob("Session*") if p.is_dir())
        if not sessions:
            raise FileNotFoundError(f"no Session* folders in {src} (expected IEMOCAP_full_release)")
        items: list[ClipItem | BadRow] = []
        for session in sessions:
            if (session.name.removeprefix("Session") in test) == (split == "test"):
                for path in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
                    items += self._dialog(session, path)
        return items

    def _dialog(self, session: Path, path: Path) -> list[ClipItem | BadRow]:
        transcripts = {}
        transcript_path = session / "dialog" / "transcriptions" / path.name
        if transcript_path.is_file():
            for line in read_text(transcript_path).splitlines():
                match = _TRANSCRIPT.match(line.strip())
                if match:
                    transcripts[match.group(1)] = match.group(2).strip()
        items: list[ClipItem | BadRow] = []
        for line in read_text(path).splitlines():
            if not line.startswith("["):
                continue  # per-annotator lines (C-E1:, A-E2:, ...) and headers
            match = _EVALUATION.match(line)
            if not match or match.group(4) not in EMOTIONS:
                items.append(BadRow("malformed_row", f"{path.name}: {line[:80]!r}"))
                continue
            utt, code = match.group(3), match.group(4)
            transcript = transcripts.get(utt, "")
            speaker = speaker_phrase(_speaker(utt))
            emotion = EMOTIONS[code]
            if emotion:
                captions = emotion_captions(emotion, utt, transcript, speaker)
            elif transcript:
                captions = speech_captions(transcript, utt, speaker)
            else:
                items.append(BadRow("no_caption", f"{utt}: no agreed emotion and no transcript"))
                continue
            valence, arousal, dominance = (float(match.group(i)) for i in (5, 6, 7))
            meta = {"transcript": transcript, "emotion_code": code, "valence": valence, "arousal": arousal,
                    "dominance": dominance, "speaker_gender": _speaker(utt)}
            audio = session / "sentences" / "wav" / path.stem / f"{utt}.wav"
            items.append(ClipItem(utt, str(audio), captions, (emotion,) if emotion else (), meta=meta))
        return items
