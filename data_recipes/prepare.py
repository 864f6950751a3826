"""`python -m data_recipes prepare`: archival FLAC shards -> a training format that is fast to decode.

Formats (`schema.TRAINING_FORMATS`):

- `logmel`: the model's log-mel features, fp16 [frames, n_mels] per clip as `<key>.logmel.npy`,
  computed once by `LogMelFrontEnd` over the whole recording at the model rate. The loader
  crops frames instead of decoding FLAC and the model skips its front end; bn0 and SpecAugment
  still run in the model. The manifest records the front end (`build.frontend`) and the loader
  refuses features made by another one.
- `pcm16`: 16-bit WAV at the model rate (`<key>.wav`): no FLAC decode, no resampling.

Each sample keeps its json. Shard i of the archival split becomes shard i of the prepared one
(same name) under `OUT/<source>/<split>/`, through the one shard writer (`writer.write_shard`):
written to a temporary name and renamed when complete, skipped when already there (a rerun
resumes), in parallel with `--workers`, by `--part i/n` for job arrays (then `merge`).
A clip that cannot be converted is skipped and counted by reason in the manifest.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import yaml

from clap_lightning.audio.frontend import frontend_params
from clap_lightning.data import schema
from data_recipes.base import RecipeError, SkipSample
from data_recipes.checks import find_split_dirs, iter_samples
from data_recipes.writer import (ShardTask, _resample, check_previous_build, load_shard_stats, make_manifest,
                                 run_tasks, write_manifest)

FORMATS = tuple(schema.TRAINING_FORMATS)
_AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")  # what an archival sample may hold (the loader's list)


def read_frontend(model_config: str | Path) -> dict[str, Any]:
    """The front-end parameters (`frontend.FRONTEND_FIELDS`) of a model config's audio encoder.

    Raises:
        RecipeError: the file is missing, not YAML, or its `audio_encoder` lacks a field (named).
    """
    path = Path(model_config)
    if not path.is_file():
        raise FileNotFoundError(f"--model-config {path} not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"--model-config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    section = config.get("model", config) if isinstance(config, dict) else None  # a model file or an experiment
    encoder = section.get("audio_encoder") if isinstance(section, dict) else None
    if not isinstance(encoder, dict):
        raise RecipeError(f"--model-config {path} has no audio_encoder section")
    try:
        return frontend_params(encoder)
    except ValueError as err:
        raise RecipeError(f"--model-config {path}: {err}") from None


@dataclasses.dataclass
class Damage:
    """A stand-in item for the rest of a damaged archival shard (one skip under `reason`)."""

    reason: str


class ShardSamples:
    """The raw samples of one archival shard, read lazily in the worker (`len`: the manifest's count).

    Damage (a truncated or corrupt tar) ends the shard with one `Damage` item.
    """

    def __init__(self, path: Path, count: int) -> None:
        self.path, self.count = path, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        try:
            for key, parts in iter_samples(self.path):
                yield dict(parts, __key__=key)
        except (tarfile.TarError, OSError, EOFError):  # a truncated or damaged shard ends there
            yield Damage("bad_tar")

    def __repr__(self) -> str:
        return f"ShardSamples({self.path.name})"


@dataclasses.dataclass
class SampleConverter:
    """One archival sample -> (key, [(ext, bytes)], seconds, False) in `format`; picklable for workers."""

    format: str
    frontend: dict[str, Any]
    _module: Any = dataclasses.field(default=None, repr=False)  # LogMelFrontEnd, built once per process

    def __call__(self, raw: Any) -> tuple[str, list[tuple[str, bytes]], float, bool]:
        if isinstance(raw, Damage):
            raise SkipSample(raw.reason, "the archival shard is damaged")
        key = raw["__key__"]
        if "json" not in raw:
            raise SkipSample("missing_json", key)
        data = next((raw[ext] for ext in _AUDIO_EXTENSIONS if ext in raw), None)
        if data is None:
            raise SkipSample("missing_audio", key)
        try:
            audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (RuntimeError, ValueError, EOFError, TypeError) as err:
            raise SkipSample("bad_audio", f"{key}: {err}") from None
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        if audio.size == 0:
            raise SkipSample("empty_audio", key)
        if not np.isfinite(audio).all():
            raise SkipSample("nan_audio", key)
        model_rate = self.frontend["sample_rate"]
        if rate != model_rate:
            audio = _resample(np.ascontiguousarray(audio), rate, model_rate)
        meta, seconds = raw["json"], audio.size / model_rate
        if rate != model_rate:  # the json states the rate and length of the audio it travels with
            meta = json.dumps(dict(json.loads(meta), sample_rate=model_rate, duration=round(seconds, 6)),
                              ensure_ascii=False, sort_keys=True).encode()
        return (
            key,
            [(schema.TRAINING_FORMATS[self.format], self._encode(audio)), (schema.JSON_EXT, meta)],
            seconds,
            False,
        )

    def _encode(self, audio: np.ndarray) -> bytes:
        if self.format == "pcm16":
            out = io.BytesIO()
            sf.write(out, audio, self.frontend["sample_rate"], format="WAV", subtype="PCM_16")
            return out.getvalue()
        return encode_logmel(self.logmel(audio))

    def logmel(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel [frames, n_mels] float32 of a mono recording at the model rate."""
        import torch

        from clap_lightning.audio.frontend import LogMelFrontEnd

        if self._module is None:
            f = self.frontend
            self._module = LogMelFrontEnd(f["n_fft"], f["hop_length"], f["n_mels"], f["fmin"], f["fmax"],
                                          f["mel_sample_rate"], f.get("mel_scale", "slaney"),
                                          f.get("quantize_int16", False))
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if wave.numel() <= self.frontend["n_fft"] // 2:  # reflect padding needs more samples than half a window
            wave = torch.nn.functional.pad(wave, (0, self.frontend["n_fft"] // 2 + 1 - wave.numel()))
        with torch.inference_mode():
            return self._module(wave[None])[0].numpy()


def encode_logmel(feats: np.ndarray) -> bytes:
    """fp16 .npy bytes of log-mel [frames, n_mels] (the `logmel.npy` member)."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(feats, dtype=np.float16), allow_pickle=False)
    return out.getvalue()


def prepare_split(src_dir: Path, out: str | Path, fmt: str, frontend: dict[str, Any], part: tuple[int, int] | None,
                  workers: int = 1, show_progress: bool = True) -> dict[str, Any]:
    """Convert one archival split into `fmt` under `out`; return its manifest (a part manifest with `part`)."""
    if fmt not in FORMATS:
        raise RecipeError(f"unknown format '{fmt}'; known: {', '.join(FORMATS)}")
    source = schema.read_manifest(src_dir)
    if "format" in source["build"] and "frontend" in source["build"]:
        raise RecipeError(f"{src_dir} holds prepared shards ({source['build']['format']}), not archival ones")
    if source.get("part"):
        raise RecipeError(f"{src_dir} has only a part manifest: run `python -m data_recipes merge` first")
    shards = sorted(source["shards"] + source.get("empty_shards", []), key=lambda s: s["index"])
    directory = schema.split_dir(out, source["source"], source["split"])
    if directory.resolve() == Path(src_dir).resolve():
        raise RecipeError(f"--out {out} would overwrite the archival shards in {src_dir}: give another directory")
    directory.mkdir(parents=True, exist_ok=True)
    # The archival build's parameters (the exclusion list's digest among them) stay: the leakage check reads them.
    build = dict(
        source["build"],
        src=str(Path(src_dir).resolve()),
        format=fmt,
        dtype="float16" if fmt == "logmel" else "int16",
        frontend=frontend if fmt == "logmel" else {"sample_rate": frontend["sample_rate"]},
        sample_rate=frontend["sample_rate"],
        planned_shards=len(shards),
    )
    check_previous_build(directory, {"build": build, "recipe": source["recipe"]})
    converter = SampleConverter(fmt, frontend)
    stats, tasks = [], []
    for shard in shards:
        index = shard["index"]
        if part is not None and index % part[1] != part[0]:
            continue
        path = directory / shard["name"]
        if path.is_file():
            stats.append(load_shard_stats(path, index, shard["samples"]))
        else:
            tasks.append(
                ShardTask(
                    None,
                    source["split"],
                    index,
                    ShardSamples(Path(src_dir) / shard["name"], shard["samples"]),
                    path,
                    frontend["sample_rate"],
                    0,
                    encode=converter,
                )
            )
    stats += run_tasks(tasks, workers, f"{source['source']}/{source['split']} -> {fmt}", show_progress)
    manifest = make_manifest((source["source"], source["recipe"]), source["split"], build, stats, part,
                             source.get("excluded", 0))
    write_manifest(directory, manifest, part)
    return manifest


def prepare(src: str | Path, out: str | Path, fmt: str, model_config: str | Path, part: tuple[int, int] | None = None,
            workers: int = 1, show_progress: bool = True) -> list[dict[str, Any]]:
    """Convert every archival split under `src` (a split directory or a root of them); return the manifests."""
    frontend = read_frontend(model_config)
    return [prepare_split(d, out, fmt, frontend, part, workers, show_progress) for d in find_split_dirs(src)]
