"""A miniature-corpus builder shared by the recipe tests: tiny audio, metadata files, build + validate."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pytest
import soundfile as sf

from clap_lightning.data import schema
from data_recipes import base, checks, writer

RATE = 8000  # fixture audio and build rate: no resampling, fast


class Corpus:
    """Writes a corpus layout under `src`, builds it with the real writer into `out`, validates it."""

    def __init__(self, root: Path) -> None:
        self.src = root / "src"
        self.out = root / "shards"
        self.src.mkdir()

    def path(self, relative: str) -> Path:
        path = self.src / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def wav(self, relative: str, seconds: float = 0.3, channels: int = 1, rate: int = RATE,
            subtype: str = "PCM_16", fmt: str | None = None) -> Path:
        """A short tone (distinct per file) at `rate`; format from the extension unless `fmt`."""
        t = np.arange(int(seconds * rate)) / rate
        freq = 200 + (hash(relative) % 1000)
        tone = 0.3 * np.sin(2 * np.pi * freq * t)
        audio = np.stack([tone] * channels, axis=1) if channels > 1 else tone
        path = self.path(relative)
        sf.write(path, audio, rate, subtype=subtype, format=fmt)
        return path

    def video(self, relative: str, seconds: float = 0.4, audio: bool = True) -> Path:
        """An MP4 made by ffmpeg: an AAC tone track, or (audio=False) a video track only."""
        path = self.path(relative)
        source = (["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:sample_rate={RATE}", "-c:a", "aac"]
                  if audio else ["-f", "lavfi", "-i", f"color=c=black:s=16x16:d={seconds}", "-c:v", "mpeg4"])
        subprocess.run([shutil.which("ffmpeg"), "-v", "error", "-y", *source, str(path)], check=True, timeout=60)
        return path

    def text(self, relative: str, content: str, encoding: str = "utf-8") -> Path:
        path = self.path(relative)
        path.write_text(content, encoding=encoding)
        return path

    def csv(self, relative: str, header: Sequence[str] | None, rows: Iterable[Sequence[Any]], delimiter: str = ",",
            encoding: str = "utf-8") -> Path:
        path = self.path(relative)
        with open(path, "w", newline="", encoding=encoding) as f:
            out = csv.writer(f, delimiter=delimiter)
            if header is not None:
                out.writerow(header)
            out.writerows(rows)
        return path

    def json(self, relative: str, obj: Any) -> Path:
        return self.text(relative, json.dumps(obj))

    def build(self, name: str, options: dict[str, Any] | None = None, splits: list[str] | None = None,
              exclude: Iterable[str] = ()) -> dict[str, dict]:
        """Build with the shared writer, validate every split, return {split: manifest}."""
        recipe = base.build_recipe(name, options or {})
        config = writer.WriterConfig(sample_rate=RATE, samples_per_shard=4, show_progress=False,
                                     exclude=frozenset(exclude))
        manifests = writer.build_corpus(recipe, self.out, self.src, splits, config)
        for split in manifests:
            report = checks.validate_split(schema.split_dir(self.out, recipe.name, split))
            assert report.problems == [], report.problems
            assert report.samples == manifests[split]["num_samples"]
        return manifests

    def samples(self, source: str, split: str) -> dict[str, dict]:
        """{key: json} of a built split."""
        out = {}
        for path in schema.manifest_shard_paths(schema.split_dir(self.out, source, split)):
            for key, parts in checks.iter_samples(path):
                out[key] = json.loads(parts["json"])
        return out

    def audio(self, source: str, split: str, key: str) -> np.ndarray:
        """Decoded int16 samples of one clip."""
        for path in schema.manifest_shard_paths(schema.split_dir(self.out, source, split)):
            with tarfile.open(path) as tar:
                names = tar.getnames()
                if f"{key}.flac" in names:
                    data = tar.extractfile(f"{key}.flac").read()
                    return sf.read(io.BytesIO(data), dtype="int16")[0]
        raise KeyError(key)


@pytest.fixture
def corpus(tmp_path) -> Corpus:
    return Corpus(tmp_path)


# Video corpora need the ffmpeg binary. Their tests check real extraction where it is
# installed and the one-line "needs ffmpeg" error where it is not; neither case is skipped.
HAVE_FFMPEG = shutil.which("ffmpeg") is not None
