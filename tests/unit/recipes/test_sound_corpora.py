"""Recipes of the captioned / labelled sound corpora, each on a miniature of its real layout."""

from __future__ import annotations

import pickle

import pytest

from data_recipes import audioset


def test_wavcaps_all_four_sources(corpus):
    corpus.json("json_files/FreeSound/fsd_final.json", {"num_captions_per_audio": 1, "data": [
        {"id": "180913", "caption": "A dog barks twice.", "audio": "wav_path", "duration": 0.3,
         "description": "my dog <b>barking</b>", "tags": ["dog"]},
        {"id": "99", "caption": "", "audio": "wav_path", "duration": 1.0},  # no caption
        {"id": "100", "caption": "Wind blows.", "audio": "wav_path", "duration": 1.0}]})  # audio missing
    corpus.json("json_files/BBC_Sound_Effects/bbc_final.json", {"num_captions_per_audio": 1, "data": [
        {"id": "07067016", "caption": "A car engine starts.", "audio": "wav_path", "duration": 0.3}]})
    corpus.json("json_files/SoundBible/sb_final.json", {"num_captions_per_audio": 1, "data": [
        {"id": "1", "caption": "A bell rings.", "audio": "wav_path", "duration": 0.3, "title": "Bell",
         "description": "church bell", "author": "Mike", "href": "bell.html", "download_link": "x"}]})
    corpus.json("json_files/AudioSet_SL/as_final.json", {"num_captions_per_audio": 1, "data": [
        {"id": "Y--PJHxphWEs.wav", "caption": "People talk.", "audio": "wav_path", "duration": 0.3}]})
    for name in ("FreeSound/180913", "BBC_Sound_Effects/07067016", "SoundBible/1", "AudioSet_SL/Y--PJHxphWEs"):
        corpus.wav(f"audio/{name}.flac")
    manifest = corpus.build("wavcaps")["train"]
    samples = corpus.samples("wavcaps", "train")
    assert sorted(samples) == ["wavcaps-audioset_sl-Y--PJHxphWEs", "wavcaps-bbc-07067016",
                               "wavcaps-freesound-180913", "wavcaps-soundbible-1"]
    dog = samples["wavcaps-freesound-180913"]
    assert dog["text"] == ["A dog barks twice."] and dog["description"] == "my dog <b>barking</b>"
    assert samples["wavcaps-soundbible-1"]["author"] == "Mike"
    assert manifest["skipped"] == {"missing_audio": 1, "no_caption": 1}
    with pytest.raises(ValueError, match="unknown WavCaps source 'Freesound'"):
        corpus.build("wavcaps", {"sources": "Freesound"})


def test_wavcaps_exclusion_by_cross_corpus_ids(corpus):
    corpus.json("json_files/FreeSound/fsd_final.json", {"data": [
        {"id": str(i), "caption": f"sound {i}", "duration": 0.3} for i in (1, 2, 3)]})
    for i in (1, 2, 3):
        corpus.wav(f"audio/FreeSound/{i}.flac")
    manifest = corpus.build("wavcaps", {"sources": "FreeSound"}, exclude=["freesound:2", "wavcaps-freesound-3"])[
        "train"
    ]
    assert manifest["excluded"] == 2 and manifest["num_samples"] == 1
    assert list(corpus.samples("wavcaps", "train")) == ["wavcaps-freesound-1"]


AUDIOSET_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                   "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
                   "# YTID, start_seconds, end_seconds, positive_labels\n")


def test_audioset_mids_to_names_and_templates(corpus):
    corpus.csv("class_labels_indices.csv", ["index", "mid", "display_name"],
               [[0, "/m/09x0r", "Speech"], [1, "/m/0bt9lr", "Dog"], [2, "/m/05tny_", "Bark"]])
    corpus.text("balanced_train_segments.csv", AUDIOSET_HEADER +
                '--PJHxphWEs, 30.000, 40.000, "/m/09x0r"\n'
                '-0RWZT-miFs, 420.000, 430.000, "/m/0bt9lr,/m/05tny_"\n'
                'badrow, x, 10.000, "/m/09x0r"\n'
                'unknownmid, 0.000, 10.000, "/m/zzz"\n')
    corpus.text("unbalanced_train_segments.csv", AUDIOSET_HEADER + 'abcdefghijk, 0.000, 10.000, "/m/0bt9lr"\n')
    corpus.text("eval_segments.csv", AUDIOSET_HEADER + 'evalclip001, 10.000, 20.000, "/m/05tny_"\n')
    for name in ("balanced_train_segments/Y--PJHxphWEs", "balanced_train_segments/Y-0RWZT-miFs",
                 "unbalanced_train_segments/Yabcdefghijk", "eval_segments/Yevalclip001"):
        corpus.wav(f"audios/{name}.wav")
    manifests = corpus.build("audioset")
    train = corpus.samples("audioset", "train")
    assert sorted(train) == ["audioset---PJHxphWEs_30", "audioset--0RWZT-miFs_420", "audioset-abcdefghijk_0"]
    dog = train["audioset--0RWZT-miFs_420"]
    assert dog["labels"] == ["Dog", "Bark"] and dog["mids"] == ["/m/0bt9lr", "/m/05tny_"]
    assert len(dog["text"]) == 2 and all("Dog and Bark" in t for t in dog["text"])
    assert all(any(t.format(labels="Dog and Bark") == c for t in audioset.TEMPLATES) for c in dog["text"])
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "unknown_label": 1}
    assert list(corpus.samples("audioset", "test")) == ["audioset-evalclip001_10"]


def test_fsd50k_descriptions_not_labels(corpus):
    corpus.csv("FSD50K.ground_truth/dev.csv", ["fname", "labels", "mids", "split"],
               [["64760", "Bark,Dog,Animal", "/m/05tny_,/m/0bt9lr,/m/0jbk", "train"],
                ["17", "Rain", "/m/06mb1", "val"], ["18", "Rain", "/m/06mb1", "train"], ["", "", "", "train"]])
    corpus.csv("FSD50K.ground_truth/eval.csv", ["fname", "labels", "mids"], [["37199", "Music", "/m/04rlf"]])
    corpus.json("FSD50K.metadata/dev_clips_info_FSD50K.json", {
        "64760": {"title": "dog.wav", "description": "My dog <br/>barking  at the mailman", "tags": ["dog"],
                  "license": "http://creativecommons.org/licenses/by/3.0/", "uploader": "someone"},
        "17": {"title": "rain on roof", "description": "", "tags": [], "license": "cc0", "uploader": "x"},
        "18": {"title": "", "description": "", "tags": [], "license": "cc0", "uploader": "x"}})
    corpus.json("FSD50K.metadata/eval_clips_info_FSD50K.json", {
        "37199": {"title": "song", "description": "a short song", "tags": [], "license": "cc0", "uploader": "y"}})
    for path in ("dev_audio/64760", "dev_audio/17", "dev_audio/18", "eval_audio/37199"):
        corpus.wav(f"FSD50K.{path}.wav")
    manifests = corpus.build("fsd50k")
    dog = corpus.samples("fsd50k", "train")["fsd50k-64760"]
    assert dog["text"] == ["My dog barking at the mailman"] and dog["labels"] == ["Bark", "Dog", "Animal"]
    assert dog["license"].startswith("http://creativecommons") and dog["mids"][0] == "/m/05tny_"
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "no_caption": 1}
    assert corpus.samples("fsd50k", "valid")["fsd50k-17"]["text"] == ["rain on roof"]  # title when no description
    assert list(corpus.samples("fsd50k", "test")) == ["fsd50k-37199"]


def test_clotho_split_mapping_and_five_captions(corpus):
    captions = ["caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
    for folder, name, sound_id in (("development", "Birds at dawn.wav", "1234"),
                                   ("validation", "Rain, heavy.wav", "5678"),
                                   ("evaluation", "Radio Garble.wav", "80399")):
        corpus.csv(f"clotho_captions_{folder}.csv", ["file_name", *captions],
                   [[name, *[f"{folder} caption {i}" for i in range(5)]], ["", "", "", "", "", ""]])
        corpus.csv(f"clotho_metadata_{folder}.csv",
                   ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"],
                   [[name, "birds;dawn;é", sound_id, f"https://freesound.org/s/{sound_id}", "", "someone",
                     "http://creativecommons.org/licenses/by/3.0/"]], encoding="latin-1")
        corpus.wav(f"{folder}/{name}")
    manifests = corpus.build("clotho")
    assert corpus.samples("clotho", "train")["clotho-Birds_at_dawn"]["clotho_split"] == "development"
    valid = corpus.samples("clotho", "valid")
    assert list(valid) == ["clotho-Rain,_heavy"] and valid["clotho-Rain,_heavy"]["clotho_split"] == "validation"
    test = corpus.samples("clotho", "test")["clotho-Radio_Garble"]
    assert test["clotho_split"] == "evaluation" and test["text"] == [f"evaluation caption {i}" for i in range(5)]
    assert (
        test["sound_id"] == "80399"
        and test["tags"] == ["birds", "dawn", "é"]
        and test["file_name"] == "Radio Garble.wav"
    )
    assert all(m["skipped"] == {"malformed_row": 1} for m in manifests.values())
    # Excluding the one test clip by Freesound id (a WavCaps-style blacklist) leaves only the bad row: an error.
    corpus.out = corpus.out.with_name("excluded")
    with pytest.raises(ValueError, match="no usable clips among 1 items"):
        corpus.build("clotho", splits=["test"], exclude=["freesound:80399"])


def test_audiocaps_groups_captions_per_segment(corpus):
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    corpus.csv("dataset/train.csv", header, [[91139, "r1nicOVtvkQ", 130, "A woman talks"],
                                             [58146, "UDGBjjwyaqE", 20, "Water flows"],
                                             [1, "", 0, "no youtube id"]])
    corpus.csv("dataset/val.csv", header, [[i, "rqfQRErjfk8", 170, f"caption {i}"] for i in range(5)])
    corpus.csv("dataset/test.csv", header, [[100 + i, "--0w1YA1Hm4", 30, f"test caption {i}"] for i in range(5)])
    for split, ytid in (("train", "r1nicOVtvkQ"), ("val", "rqfQRErjfk8"), ("test", "--0w1YA1Hm4")):
        corpus.wav(f"audio/{split}/{ytid}.wav")
    manifests = corpus.build("audiocaps")
    assert manifests["train"]["skipped"] == {"malformed_row": 1, "missing_audio": 1}
    assert corpus.samples("audiocaps", "train")["audiocaps-r1nicOVtvkQ_130"]["text"] == ["A woman talks"]
    valid = corpus.samples("audiocaps", "valid")["audiocaps-rqfQRErjfk8_170"]
    assert valid["text"] == [f"caption {i}" for i in range(5)] and valid["audiocap_ids"] == ["0", "1", "2", "3", "4"]
    assert len(corpus.samples("audiocaps", "test")["audiocaps---0w1YA1Hm4_30"]["text"]) == 5


def test_audiocaps_cut_segment_and_exclusion(corpus):
    corpus.csv("dataset/test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"],
               [[1, "vid", 0, "a"], [2, "other", 0, "b"]])
    corpus.wav("full/vid.wav", seconds=12.5)
    corpus.wav("full/other.wav", seconds=12.5)
    manifest = corpus.build("audiocaps", {"audio_pattern": "full/{youtube_id}.wav", "cut_segment": True},
                            splits=["test"], exclude=["youtube:other"])["test"]
    sample = corpus.samples("audiocaps", "test")["audiocaps-vid_0"]
    assert sample["duration"] == pytest.approx(10.0) and sample["segment"] == [0.0, 10.0]
    assert manifest["excluded"] == 1 and manifest["num_samples"] == 1


def test_macs_annotator_sentences_and_tags(corpus):
    corpus.text("MACS.yaml", """files:
- filename: airport-lisbon-1000-40000-a.wav
  annotations:
  - annotator_id: 133
    sentence: adults talking and footsteps in a hall
    tags: [adults_talking, footsteps]
  - annotator_id: 20
    sentence: people walk while an announcement plays
    tags: [announcement_jingle, adults_talking]
- filename: park-helsinki-241-7214-a.wav
  annotations:
  - annotator_id: 5
    sentence: birds singing in a park
    tags: [birds_singing]
- annotations: []
""")
    corpus.wav("TAU-urban-acoustic-scenes-2019-development/audio/airport-lisbon-1000-40000-a.wav", channels=2)
    corpus.wav("TAU-urban-acoustic-scenes-2019-development/audio/park-helsinki-241-7214-a.wav", channels=2)
    manifest = corpus.build("macs", {"test_fraction": 0.0}, splits=["train"])["train"]
    samples = corpus.samples("macs", "train")
    airport = samples["macs-airport-lisbon-1000-40000-a"]
    assert airport["text"] == ["adults talking and footsteps in a hall", "people walk while an announcement plays"]
    assert airport["labels"] == ["adults talking", "footsteps", "announcement jingle"] and airport["scene"] == "airport"
    assert airport["annotator_ids"] == [133, 20] and manifest["skipped"] == {"malformed_row": 1}


def test_wavtext5k_description_then_title(corpus):
    corpus.csv("WavText5K.csv", ["view_link", "download_link", "title", "description", "fname", "tags"],
               [["https://bigsoundbank.com/a", "https://x/a.wav", "Door slam", "A heavy wooden door slams shut.",
                 "0001.wav", ""],
                ["https://soundbible.com/b", "https://x/b.wav", "Cat Meow", "", "cat_meow.wav", "cat,meow"],
                ["https://x/c", "https://x/c.wav", "", "", "empty.wav", ""]])
    corpus.wav("Webcrawl/44100/audios/0001.wav")
    corpus.wav("Webcrawl/44100/audios/cat_meow.wav")
    manifest = corpus.build("wavtext5k", {"test_fraction": 0.0}, splits=["train"])["train"]
    samples = corpus.samples("wavtext5k", "train")
    assert samples["wavtext5k-0001"]["text"] == ["A heavy wooden door slams shut.", "Door slam"]
    assert samples["wavtext5k-cat_meow"]["text"] == ["Cat Meow"] and samples["wavtext5k-cat_meow"]["tags"] == [
        "cat",
        "meow",
    ]
    assert manifest["skipped"] == {"malformed_row": 1}


def test_sounddescs_pickles_and_split_lists(corpus):
    data = corpus.path("sounddescs_data/descriptions.pkl")
    data.write_bytes(pickle.dumps({"nhu05050065": "Waves breaking on a shingle beach.", "07010101": "Car door."}))
    corpus.path("sounddescs_data/categories.pkl").write_bytes(pickle.dumps({"nhu05050065": ["Nature"]}))
    corpus.path("sounddescs_data/extra_info.pkl").write_bytes(
        pickle.dumps({"nhu05050065": "File info: MP3, 128kbps • WAV, 44.1KHz, 16bit"}))
    corpus.text("data/SoundDescs/train_list.txt", "nhu05050065\nunknownid\n")
    corpus.text("data/SoundDescs/val_list.txt", "07010101\n")
    corpus.text("data/SoundDescs/test_list.txt", "07010101\n")
    corpus.wav("audio/nhu05050065.wav")
    corpus.wav("audio/07010101.wav")
    manifests = corpus.build("sounddescs")
    waves = corpus.samples("sounddescs", "train")["sounddescs-nhu05050065"]
    assert waves["text"] == ["Waves breaking on a shingle beach."] and waves["labels"] == ["Nature"]
    assert waves["file_info"].startswith("File info") and manifests["train"]["skipped"] == {"no_caption": 1}
    assert "labels" not in corpus.samples("sounddescs", "valid")["sounddescs-07010101"]
