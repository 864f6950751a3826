"""Miniature corpora for the rehearsal: each of the 20 pretraining corpora in its real layout (as the
recipe tests in tests/unit/recipes write them), and the evaluation sets of the 26 tasks.

Every writer takes a `Corpus` (tests/unit/recipes/conftest.py) and fills its `src`; clip counts are
small but every split the configs read has clips, every HTSAT-22 task has labels, and a few training
clips carry the ids of AudioCaps test / Clotho evaluation clips, so the leakage filter has
something to remove (`LEAKED`).
"""

from __future__ import annotations

import json
import pickle
from typing import Callable

from clap_lightning.eval.tasks import TASKS
from tests.unit.recipes.conftest import Corpus

SECONDS = 1.0  # clip length: short, so 20 builds and the rehearsal's steps stay cheap
# AudioCaps test and Clotho evaluation clips whose ids reappear in AudioSet, WavCaps and FSD50K training lists.
AUDIOCAPS_TEST_YTIDS = ["acTestVid01", "acTestVid02", "acTestVid03", "acTestVid04"]
CLOTHO_TEST_SOUND_IDS = ["80399", "80400", "80401", "80402"]
# What the leakage filter must drop from each corpus' train split.
LEAKED = {"audioset": 1, "wavcaps": 2, "fsd50k": 1}
CAPTIONS = ["a dog barks near a road", "rain falls on a metal roof", "a crowd talks in a hall",
            "birds sing in a park at dawn", "an engine starts and idles", "water pours into a glass"]


def wav(c: Corpus, relative: str, seconds: float = SECONDS, **kwargs):
    return c.wav(relative, seconds=seconds, **kwargs)


# ----------------------------------------------------------------------------- sound events with text

def wavcaps(c: Corpus) -> None:
    subs = {"FreeSound": ("fsd_final", ["1001", "1002", "1003", CLOTHO_TEST_SOUND_IDS[0]]),
            "BBC_Sound_Effects": ("bbc_final", ["07067016", "07067017"]),
            "SoundBible": ("sb_final", ["1", "2"]),
            "AudioSet_SL": ("as_final", ["Ytrainvid001.wav", f"Y{AUDIOCAPS_TEST_YTIDS[0]}.wav"])}
    for sub, (stem, ids) in subs.items():
        items = [{"id": i, "caption": CAPTIONS[n % len(CAPTIONS)], "audio": "wav_path", "duration": SECONDS}
                 for n, i in enumerate(ids)]
        c.json(f"json_files/{sub}/{stem}.json", {"num_captions_per_audio": 1, "data": items})
        for i in ids:
            wav(c, f"audio/{sub}/{i.removesuffix('.wav')}.flac")


AUDIOSET_HEADER = "# Segments csv\n# num_ytids\n# YTID, start_seconds, end_seconds, positive_labels\n"
AUDIOSET_CLASSES = [("/m/09x0r", "Speech"), ("/m/0bt9lr", "Dog"), ("/m/05tny_", "Bark"), ("/m/06mb1", "Rain"),
                    ("/m/04rlf", "Music")]


def audioset(c: Corpus) -> None:
    c.csv("class_labels_indices.csv", ["index", "mid", "display_name"],
          [[i, mid, name] for i, (mid, name) in enumerate(AUDIOSET_CLASSES)])
    lists = {"balanced_train_segments": ["trainvid001", "trainvid002", "trainvid003", AUDIOCAPS_TEST_YTIDS[1]],
             "unbalanced_train_segments": ["trainvid004", "trainvid005"],
             "eval_segments": ["evalvid0001", "evalvid0002", "evalvid0003", "evalvid0004"]}
    for name, ytids in lists.items():
        rows = []
        for n, ytid in enumerate(ytids):
            mids = ",".join(mid for mid, _ in AUDIOSET_CLASSES[n % 5: n % 5 + 2])
            rows.append(f'{ytid}, 10.000, 20.000, "{mids}"\n')
            wav(c, f"audios/{name}/Y{ytid}.wav")
        c.text(f"{name}.csv", AUDIOSET_HEADER + "".join(rows))


def fsd50k(c: Corpus) -> None:
    dev = [["2001", "Bark,Dog", "/m/05tny_,/m/0bt9lr", "train"], ["2002", "Rain", "/m/06mb1", "train"],
           ["2003", "Music", "/m/04rlf", "train"], [CLOTHO_TEST_SOUND_IDS[1], "Speech", "/m/09x0r", "train"],
           ["2005", "Rain", "/m/06mb1", "val"], ["2006", "Bark", "/m/05tny_", "val"]]
    evaluation = [["3001", "Bark,Dog", "/m/05tny_,/m/0bt9lr"], ["3002", "Rain", "/m/06mb1"],
                  ["3003", "Music", "/m/04rlf"], ["3004", "Speech,Music", "/m/09x0r,/m/04rlf"]]
    c.csv("FSD50K.ground_truth/dev.csv", ["fname", "labels", "mids", "split"], dev)
    c.csv("FSD50K.ground_truth/eval.csv", ["fname", "labels", "mids"], evaluation)
    for part, rows in (("dev", dev), ("eval", evaluation)):
        info = {r[0]: {"title": f"clip {r[0]}", "description": CAPTIONS[n % 6], "tags": [], "license": "cc0",
                       "uploader": "x"} for n, r in enumerate(rows)}
        c.json(f"FSD50K.metadata/{part}_clips_info_FSD50K.json", info)
        for r in rows:
            wav(c, f"FSD50K.{part}_audio/{r[0]}.wav")


def clotho(c: Corpus) -> None:
    captions = [f"caption_{i}" for i in range(1, 6)]
    folders = {"development": [("Birds at dawn.wav", "1234"), ("Rain, heavy.wav", "1235"), ("Door.wav", "1236")],
               "validation": [("Wind.wav", "5678"), ("Cars passing.wav", "5679")],
               "evaluation": [(f"Eval clip {n}.wav", sid) for n, sid in enumerate(CLOTHO_TEST_SOUND_IDS)]}
    for folder, clips in folders.items():
        c.csv(
            f"clotho_captions_{folder}.csv",
            ["file_name", *captions],
            [
                [name, *[f"{CAPTIONS[(n + i) % 6]} ({folder} {n})" for i in range(5)]]
                for n, (name, _) in enumerate(clips)
            ],
        )
        c.csv(f"clotho_metadata_{folder}.csv",
              ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"],
              [[name, "k1;k2", sid, f"https://freesound.org/s/{sid}", "", "someone", "cc0"] for name, sid in clips],
              encoding="latin-1")
        for name, _ in clips:
            wav(c, f"{folder}/{name}")


def audiocaps(c: Corpus) -> None:
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    splits = {"train": ["actrain0001", "actrain0002", "actrain0003"], "val": ["acvalvid001", "acvalvid002"],
              "test": AUDIOCAPS_TEST_YTIDS}
    for split, ytids in splits.items():
        per_clip = 1 if split == "train" else 5
        rows = [[f"{split}{n}{i}", ytid, 30, f"{CAPTIONS[(n + i) % 6]} ({split} {n})"]
                for n, ytid in enumerate(ytids) for i in range(per_clip)]
        c.csv(f"dataset/{split}.csv", header, rows)
        for ytid in ytids:
            wav(c, f"audio/{split}/{ytid}.wav")


def macs(c: Corpus) -> None:
    files = []
    for n, (scene, tag) in enumerate([("airport", "adults_talking"), ("park", "birds_singing"),
                                      ("public_square", "footsteps"), ("airport", "announcement_jingle"),
                                      ("park", "dog_bark"), ("public_square", "adults_talking")]):
        filename = f"{scene}-lisbon-{n}-{n}00-a.wav"
        files.append({"filename": filename, "annotations": [
            {"annotator_id": n, "sentence": CAPTIONS[n % 6], "tags": [tag]},
            {"annotator_id": n + 10, "sentence": CAPTIONS[(n + 1) % 6], "tags": [tag, "footsteps"]}]})
        wav(c, f"TAU-urban-acoustic-scenes-2019-development/audio/{filename}", channels=2)
    c.text("MACS.yaml", json.dumps({"files": files}))  # YAML is a superset of json


def wavtext5k(c: Corpus) -> None:
    rows = [[f"https://bigsoundbank.com/{n}", f"https://x/{n}.wav", f"Title {n}", CAPTIONS[n % 6], f"{n:04d}.wav", ""]
            for n in range(5)]
    c.csv("WavText5K.csv", ["view_link", "download_link", "title", "description", "fname", "tags"], rows)
    for row in rows:
        wav(c, f"Webcrawl/44100/audios/{row[4]}")


def sounddescs(c: Corpus) -> None:
    ids = {"train": ["nhu05050061", "nhu05050062", "nhu05050063"], "val": ["07010101"], "test": ["07010102"]}
    every = [i for split in ids.values() for i in split]
    c.path("sounddescs_data/descriptions.pkl").write_bytes(
        pickle.dumps({i: CAPTIONS[n % 6] for n, i in enumerate(every)})
    )
    c.path("sounddescs_data/categories.pkl").write_bytes(pickle.dumps({i: ["Nature"] for i in every}))
    c.path("sounddescs_data/extra_info.pkl").write_bytes(pickle.dumps({i: "File info: WAV" for i in every}))
    for split, split_ids in ids.items():
        c.text(f"data/SoundDescs/{split}_list.txt", "\n".join(split_ids) + "\n")
    for i in every:
        wav(c, f"audio/{i}.wav")


def findsounds(c: Corpus) -> None:
    hits = [{"url": f"http://sfx.example.com/sound{n}.wav", "file": f"files/{n:02d}/sound{n}.wav",
             "keywords": ["dog", "bark"] if n % 2 else ["rain"], "description": CAPTIONS[n % 6]} for n in range(8)]
    c.text("crawl.jsonl", "\n".join(json.dumps(h) for h in hits) + "\n")
    for hit in hits:
        wav(c, hit["file"])


# ----------------------------------------------------------------------------- music and instruments

NSYNTH_NOTES = [("keyboard", "electronic", 60, 25, ["bright"]), ("bass", "synthetic", 48, 50, ["dark"]),
                ("guitar", "acoustic", 64, 75, ["fast_decay"]), ("mallet", "acoustic", 72, 100, ["percussive"]),
                ("synth_lead", "synthetic", 69, 127, ["distortion", "long_release"]),
                ("string", "acoustic", 55, 50, ["reverb"])]


def nsynth(c: Corpus) -> None:
    families = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead",
                "vocal"]
    qualities = ["bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic", "nonlinear_env",
                 "percussive", "reverb", "tempo-synced"]
    for split, offset in (("train", 0), ("valid", 1), ("test", 2)):
        notes = {}
        for n, (family, source, pitch, velocity, quality) in enumerate(NSYNTH_NOTES):
            inst = 10 * offset + n
            note_str = f"{family}_{source}_{inst:03d}-{pitch + offset:03d}-{velocity:03d}"
            notes[note_str] = {
                "note": n, "note_str": note_str, "instrument": inst, "instrument_str": f"{family}_{source}_{inst:03d}",
                "pitch": pitch + offset, "velocity": velocity, "sample_rate": 16000,
                "qualities": [int(q in quality) for q in qualities], "qualities_str": quality,
                "instrument_family": families.index(family), "instrument_family_str": family,
                "instrument_source": ["acoustic", "electronic", "synthetic"].index(source),
                "instrument_source_str": source}
            wav(c, f"nsynth-{split}/audio/{note_str}.wav")
        c.json(f"nsynth-{split}/examples.json", notes)


def fma(c: Corpus) -> None:
    rows = [["", "album", "artist", "set", "set", "track", "track", "track", "track", "track"],
            ["", "title", "name", "split", "subset", "genre_top", "genres", "license", "tags", "title"],
            ["track_id", "", "", "", "", "", "", "", "", ""]]
    splits = ["training"] * 4 + ["validation"] * 2 + ["test"] * 2
    for n, split in enumerate(splits):
        tid = n + 2
        genres = "[21]" if n % 2 else "[21, 76]"
        rows.append([tid, "Album", "Band", split, "large", "Hip-Hop", genres, "CC BY", "[]", f"Song {n}"])
        wav(c, f"fma_large/000/{tid:06d}.mp3", fmt="MP3", subtype="MPEG_LAYER_III")
    c.csv("fma_metadata/tracks.csv", None, rows)
    c.csv("fma_metadata/genres.csv", ["genre_id", "#tracks", "parent", "title", "top_level"],
          [[21, 8389, 0, "Hip-Hop", 21], [76, 100, 21, "Experimental Pop", 10]])


# ----------------------------------------------------------------------------- speech, emotion and sentiment

def cmu_mosi(c: Corpus) -> None:
    rows = []
    for n, (mode, score) in enumerate([("train", -2.4), ("train", 1.0), ("train", 0.0), ("train", 2.2),
                                       ("valid", -1.0), ("valid", 1.5), ("test", 0.5)]):
        rows.append(["03bSnISJMiM", n, CAPTIONS[n % 6], score, score, score, score, "x", mode])
        wav(c, f"Audio/WAV_16000/Segmented/03bSnISJMiM_{n}.wav")
    c.csv("label.csv", ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"],
          rows)


MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]
MELD_ROWS = [("joy", "positive"), ("anger", "negative"), ("neutral", "neutral"), ("sadness", "negative")]


def meld(c: Corpus) -> None:
    for prefix, folder, count in (("train", "train_splits", 4), ("dev", "dev_splits_complete", 2),
                                  ("test", "output_repeated_splits_test", 1)):
        rows = [[n, CAPTIONS[n % 6], "Monica", *MELD_ROWS[n % 4], 0, n, 1, 1, "", ""] for n in range(count)]
        c.csv(f"{prefix}_sent_emo.csv", MELD_HEADER, rows)
        for n in range(count):
            c.video(f"{folder}/dia0_utt{n}.mp4", seconds=0.5)


def _iemocap_session(c: Corpus, session: int, utts: list[tuple[str, str]]) -> None:
    dialog = f"Ses0{session}F_impro01"
    lines, transcript = [], []
    for n, (code, text) in enumerate(utts):
        utt = f"{dialog}_{'FM'[n % 2]}{n:03d}"
        lines += [f"[6.2901 - 8.2357]\t{utt}\t{code}\t[2.5000, {2.0 + n:.4f}, 2.0000]", ""]
        transcript.append(f"{utt} [006.2901-008.2357]: {text}")
        wav(c, f"Session{session}/sentences/wav/{dialog}/{utt}.wav")
    c.text(f"Session{session}/dialog/EmoEvaluation/{dialog}.txt", "\n".join(lines) + "\n")
    c.text(f"Session{session}/dialog/transcriptions/{dialog}.txt", "\n".join(transcript) + "\n")


def iemocap(c: Corpus) -> None:
    _iemocap_session(c, 1, [("ang", "Excuse me."), ("hap", "Great news!"), ("sad", "Oh no."), ("neu", "Okay.")])
    _iemocap_session(c, 5, [("exc", "Wow!")])


def cmu_mosei(c: Corpus) -> None:
    rows, lines = [], []
    for n, split in enumerate([0, 0, 0, 0, 1, 1, 2]):
        start, end = 0.5 * n, 0.5 * n + 0.4
        rows.append([n, "--qXJuDtHPw", n, start, end, 1 if n % 2 else 0, 1 if n % 2 else -1, n % 6, 2 - n % 5, split])
        lines.append(f"--qXJuDtHPw___{n}___{start}___{end}___{CAPTIONS[n % 6]}")
    c.csv("CMU_MOSEI_Labels.csv", ["", "file", "index", "start", "end", "label2a", "label2b", "label6", "label7",
                                   "split"], rows)
    wav(c, "Raw/Audio/Full/WAV_16000/--qXJuDtHPw.wav", seconds=4.0)
    c.text("Raw/Transcript/Segmented/Combined/--qXJuDtHPw.txt", "\n".join(lines) + "\n")


def msp_podcast(c: Corpus) -> None:
    rows = []
    for n, (code, split) in enumerate([("A", "Train"), ("H", "Train"), ("S", "Train"), ("N", "Train"),
                                       ("A", "Development"), ("N", "Development"), ("H", "Test1")]):
        name = f"MSP-PODCAST_0001_{n:04d}.wav"
        rows.append([name, code, 3.0 + n * 0.5, 4.0 - n * 0.25, 4.0, 100 + n, "Male" if n % 2 else "Female", split])
        c.text(f"Transcripts/{name.removesuffix('.wav')}.txt", CAPTIONS[n % 6] + "\n")
        wav(c, f"Audios/{name}")
    c.csv("Labels/labels_consensus.csv",
          ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"], rows)


def ljspeech(c: Corpus) -> None:
    lines = [f"LJ001-{n:04d}|{CAPTIONS[n % 6]}|{CAPTIONS[n % 6]}" for n in range(1, 7)]
    c.text("metadata.csv", "\n".join(lines) + "\n")
    for n in range(1, 7):
        wav(c, f"wavs/LJ001-{n:04d}.wav")


# ----------------------------------------------------------------------------- scenes and video sound tracks

def cochlscene(c: Corpus) -> None:
    for folder, scenes in (("Train", ["Bus", "Cafe", "Park", "Street"]), ("Val", ["Bus", "Park"]), ("Test", ["Cafe"])):
        for n, scene in enumerate(scenes):
            wav(c, f"{folder}/{scene}/{scene}_user{n:04d}_1.wav")


EPIC_HEADER = ["annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_sample",
               "stop_sample", "description", "class", "class_id"]


def epic_sounds(c: Corpus) -> None:
    classes = [("paper rustle", "rustle", 4), ("tap running", "water", 5), ("knife on board", "cut / chop", 2)]
    for split, video, count in (("train", "P01_01", 4), ("validation", "P02_01", 2)):
        rows = []
        for n in range(count):
            description, label, class_id = classes[n % 3]
            rows.append([f"{video}_{n}", video[:3], video, f"00:00:0{n}.00", f"00:00:0{n}.80", 0, 0, description,
                         label, class_id])
        c.csv(f"EPIC_Sounds_{split}.csv", EPIC_HEADER, rows)
        wav(c, f"audio/{video}.wav", seconds=count + 0.5)


def kinetics700(c: Corpus) -> None:
    for split, folder, actions in (("train", "train", ["playing guitar", "abseiling", "playing drums", "abseiling"]),
                                   ("valid", "val", ["playing guitar", "abseiling"]), ("test", "test", ["abseiling"])):
        rows = []
        for n, action in enumerate(actions):
            ytid = f"{folder}vid{n:04d}"[:11].ljust(11, "x")
            rows.append([action, ytid, 0, 10, folder])
            c.video(f"{folder}/{action}/{ytid}_000000_000010.mp4", seconds=0.5)
        c.csv(f"annotations/{folder}.csv", ["label", "youtube_id", "time_start", "time_end", "split"], rows)


PRETRAINING: dict[str, Callable[[Corpus], None]] = {
    "wavcaps": wavcaps, "audioset": audioset, "fsd50k": fsd50k, "clotho": clotho, "audiocaps": audiocaps,
    "macs": macs, "wavtext5k": wavtext5k, "sounddescs": sounddescs, "findsounds": findsounds, "nsynth": nsynth,
    "fma": fma, "cmu_mosi": cmu_mosi, "meld": meld, "iemocap": iemocap, "cmu_mosei": cmu_mosei,
    "msp_podcast": msp_podcast, "ljspeech": ljspeech, "cochlscene": cochlscene, "epic_sounds": epic_sounds,
    "kinetics700": kinetics700,
}
# Recipe options for the miniatures: hold out nothing where a hash split would leave a split empty.
OPTIONS = {"macs": {"test_fraction": "0"}, "wavtext5k": {"test_fraction": "0"}, "findsounds": {"test_fraction": "0"},
           "ljspeech": {"test_fraction": "0"}}


# ----------------------------------------------------------------------------- evaluation-only sets

def eval_set(c: Corpus, source: str, clips_per_class: int = 1, max_classes: int = 6) -> None:
    """The csv table the `csv` recipe builds an evaluation set from: `meta.csv` (audio, labels, fold, split)."""
    specs = [s for s in TASKS.values() if s.source == source]
    spec = specs[0]
    classes = spec.classes[:max_classes]
    rows = []
    for n, label in enumerate(classes * clips_per_class):
        labels = label if not spec.is_multi_label else f"{label};{classes[(n + 1) % len(classes)]}"
        path = f"audio/{source}_{n:03d}.wav"
        wav(c, path)
        rows.append([path, labels, str(n % 5 + 1), "test"])
    c.csv("meta.csv", ["audio", "labels", "fold", "split"], rows)


def eval_options(source: str) -> dict[str, str]:
    """`csv` recipe options for an evaluation set written by `eval_set`."""
    return {"name": source, "file": "meta.csv", "audio_column": "audio", "caption_columns": "",
            "label_columns": "labels", "label_separator": ";", "split_column": "split", "splits": "test",
            "meta_columns": "fold"}


# Task sources with no recipe of their own: built by the generic `csv` recipe from `eval_set`'s table.
EVAL_ONLY = sorted({s.source for s in TASKS.values()} - set(PRETRAINING))
