"""Recipes of the speech and emotion corpora (transcript- and label-aware captions), on miniature layouts."""

from __future__ import annotations

import pytest

from data_recipes import common

from .conftest import HAVE_FFMPEG


def test_ljspeech_transcript_captions(corpus):
    corpus.text("metadata.csv", 'LJ001-0001|Printing, in the only sense with which we are "concerned|'
                                'Printing, in the only sense with which we are "concerned\n'
                                "LJ001-0002|in 1st place|in first place\n"
                                "broken line without pipes\n")
    corpus.wav("wavs/LJ001-0001.wav")
    corpus.wav("wavs/LJ001-0002.wav")
    manifest = corpus.build("ljspeech", {"test_fraction": 0.0}, splits=["train"])["train"]
    clip = corpus.samples("ljspeech", "train")["ljspeech-LJ001-0002"]
    assert clip["normalized_transcript"] == "in first place" and clip["transcript"] == "in 1st place"
    assert len(clip["text"]) == 2 and all('"in first place"' in t for t in clip["text"])
    assert set(clip["text"]) <= {
        t.format(speaker="a woman", transcript="in first place") for t in common.SPEECH_TEMPLATES
    }
    assert manifest["skipped"] == {"malformed_row": 1} and clip["speaker"] == "LJ"


def _iemocap_session(corpus, n: int, dialog: str, utts: list[tuple[str, str, str]]) -> None:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    transcript = []
    for utt, code, text in utts:
        lines += [f"[6.2901 - 8.2357]\t{utt}\t{code}\t[2.5000, 3.0000, 2.0000]", "C-E1:\tNeutral;\t()", ""]
        transcript.append(f"{utt} [006.2901-008.2357]: {text}")
        corpus.wav(f"Session{n}/sentences/wav/{dialog}/{utt}.wav")
    lines.append("[1.0 - 2.0]\tmalformed line")
    corpus.text(f"Session{n}/dialog/EmoEvaluation/{dialog}.txt", "\n".join(lines) + "\n")
    corpus.text(f"Session{n}/dialog/transcriptions/{dialog}.txt", "\n".join(transcript) + "\n")


def test_iemocap_emotion_and_transcript_by_session(corpus):
    _iemocap_session(corpus, 1, "Ses01F_impro01", [("Ses01F_impro01_F000", "fru", "Excuse me."),
                                                   ("Ses01F_impro01_M001", "xxx", "Do you have your forms?")])
    _iemocap_session(corpus, 5, "Ses05M_script01_1", [("Ses05M_script01_1_M003", "hap", "Great news!")])
    manifests = corpus.build("iemocap")
    train = corpus.samples("iemocap", "train")
    frustrated = train["iemocap-Ses01F_impro01_F000"]
    assert (
        frustrated["labels"] == ["frustrated"] and frustrated["valence"] == 2.5 and frustrated["speaker_gender"] == "F"
    )
    assert set(frustrated["text"]) <= {t.format(speaker="a woman", emotion="frustrated", transcript="Excuse me.")
                                       for t in common.EMOTION_TEMPLATES}
    unagreed = train["iemocap-Ses01F_impro01_M001"]  # xxx: transcript captions, no label
    assert "labels" not in unagreed and all("Do you have your forms?" in t for t in unagreed["text"])
    assert all("a man" in t or "speech" in t for t in unagreed["text"])
    assert list(corpus.samples("iemocap", "test")) == ["iemocap-Ses05M_script01_1_M003"]
    assert manifests["train"]["skipped"] == {"malformed_row": 1}


def test_msp_podcast_labels_transcripts_and_test_sets(corpus):
    corpus.csv("Labels/labels_consensus.csv",
               ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"],
               [["MSP-PODCAST_0001_0008.wav", "A", 5.2, 2.0, 5.0, 127, "Male", "Train"],
                ["MSP-PODCAST_0001_0009.wav", "X", 4.0, 4.0, 4.0, 127, "Male", "Train"],  # no agreement, no transcript
                ["MSP-PODCAST_0002_0001.wav", "N", 4.0, 4.0, 4.0, 2, "Female", "Test1"],
                ["MSP-PODCAST_0003_0001.wav", "Q", 4.0, 4.0, 4.0, 3, "Female", "Train"]])  # unknown class
    corpus.text("Transcripts/MSP-PODCAST_0001_0008.txt", "I can't believe you did that\n")
    for name in ("0001_0008", "0001_0009", "0002_0001"):
        corpus.wav(f"Audios/MSP-PODCAST_{name}.wav")
    manifests = corpus.build("msp_podcast", splits=["train", "test1"])
    angry = corpus.samples("msp_podcast", "train")["msp_podcast-MSP-PODCAST_0001_0008"]
    assert angry["labels"] == ["angry"] and angry["arousal"] == 5.2 and angry["speaker"] == "127"
    assert all("I can't believe you did that" in t and "angry" in t for t in angry["text"])
    assert all("a man" in t or "utterance" in t for t in angry["text"])
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "no_caption": 1}
    neutral = corpus.samples("msp_podcast", "test1")["msp_podcast-MSP-PODCAST_0002_0001"]
    assert set(neutral["text"]) <= {
        t.format(speaker="a woman", emotion="neutral") for t in common.EMOTION_ONLY_TEMPLATES
    }


MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]


def test_meld_audio_from_mp4(corpus):
    corpus.csv(
        "train_sent_emo.csv",
        MELD_HEADER,
        [
            [
                1,
                "Oh my God, he\u2019s lost it.",
                "Monica",
                "surprise",
                "negative",
                0,
                0,
                8,
                21,
                "00:16:16,059",
                "00:16:21,731",
            ],
            [2, "No.", "Joey", "neutral", "neutral", 0, 1, 8, 21, "00:16:21,940", "00:16:23,442"],
            [3, "Hm.", "Ross", "boredom", "neutral", 0, 2, 8, 21, "", ""],
        ],
        encoding="cp1252",
    )
    corpus.csv("dev_sent_emo.csv", MELD_HEADER, [[1, "Okay.", "Rachel", "joy", "positive", 0, 0, 4, 1, "", ""]])
    if not HAVE_FFMPEG:
        with pytest.raises(ValueError, match="needs the ffmpeg binary"):
            corpus.build("meld", splits=["train"])
        return
    corpus.video("train_splits/dia0_utt0.mp4")
    corpus.video("dev_splits_complete/dia0_utt0.mp4")
    manifests = corpus.build("meld", splits=["train", "valid"])
    monica = corpus.samples("meld", "train")["meld-train-dia0_utt0"]
    assert monica["labels"] == ["surprise", "negative"] and monica["speaker"] == "Monica"
    assert monica["transcript"] == "Oh my God, he\u2019s lost it."  # cp1252 bytes read back
    assert set(monica["text"]) <= {t.format(speaker="Monica", emotion="surprised", transcript=monica["transcript"])
                                   for t in common.EMOTION_TEMPLATES}
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "missing_audio": 1}
    assert list(corpus.samples("meld", "valid")) == ["meld-dev-dia0_utt0"]


def test_cmu_mosi_sentiment_captions(corpus):
    corpus.csv(
        "label.csv",
        ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"],
        [
            ["03bSnISJMiM", 1, "a lot of sad parts", -2.4, -2.4, -2.4, -2.4, "Negative", "train"],
            ["03bSnISJMiM", 2, "but it was good", 1.0, 1.0, 1.0, 1.0, "Positive", "test"],
            ["03bSnISJMiM", 3, "broken", "n/a", "", "", "", "", "train"],
        ],
    )
    corpus.wav("Audio/WAV_16000/Segmented/03bSnISJMiM_1.wav")
    corpus.wav("Audio/WAV_16000/Segmented/03bSnISJMiM_2.wav")
    manifests = corpus.build("cmu_mosi", splits=["train", "test"])
    sad = corpus.samples("cmu_mosi", "train")["cmu_mosi-03bSnISJMiM_1"]
    assert sad["labels"] == ["negative"] and sad["sentiment"] == -2.4
    assert all("very negative" in t and "a lot of sad parts" in t for t in sad["text"])
    assert manifests["train"]["skipped"] == {"malformed_row": 1}
    assert all("positive" in t for t in corpus.samples("cmu_mosi", "test")["cmu_mosi-03bSnISJMiM_2"]["text"])


def test_cmu_mosei_segments_from_full_audio(corpus):
    corpus.csv(
        "CMU_MOSEI_Labels.csv",
        ["", "file", "index", "start", "end", "label2a", "label2b", "label6", "label7", "split"],
        [
            [0, "--qXJuDtHPw", 0, 0.25, 0.75, 1, 1, 0, 1, 0],
            [1, "--qXJuDtHPw", 1, -0.45, 0.5, 0, -1, 1, -2, 2],
            [2, "--qXJuDtHPw", 2, 0.1, 0.2, 1, 1, 0, 1, 3],  # outside the standard folds
            [3, "--qXJuDtHPw", 3, "x", 0.2, 1, 1, 0, 1, 0],
        ],
    )
    corpus.wav("Raw/Audio/Full/WAV_16000/--qXJuDtHPw.wav", seconds=1.0)
    corpus.text("Raw/Transcript/Segmented/Combined/--qXJuDtHPw.txt",
                "--qXJuDtHPw___0___0.25___0.75___I see that a writer is somebody who has an incredible power\n")
    manifests = corpus.build("cmu_mosei", splits=["train", "test"])
    happy = corpus.samples("cmu_mosei", "train")["cmu_mosei---qXJuDtHPw_0"]
    assert happy["duration"] == pytest.approx(0.5) and happy["labels"] == ["happy", "positive"]
    assert all("incredible power" in t and "happy" in t for t in happy["text"])
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "outside_folds": 1}
    sad = corpus.samples("cmu_mosei", "test")["cmu_mosei---qXJuDtHPw_1"]
    assert sad["duration"] == pytest.approx(0.5) and sad["segment"] == [0.0, 0.5]  # negative start clamped
    assert set(sad["text"]) <= {t.format(speaker="a person", emotion="sad") for t in common.EMOTION_ONLY_TEMPLATES}
