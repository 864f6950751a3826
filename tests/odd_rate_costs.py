"""Time and peak memory of each path that resamples, for 3 s of audio at odd rates (a subprocess
of tests/unit/test_clap_inference.py, so the peak is this work's alone): prints a json dict."""

import json
import re
import resource
import sys
import time

import numpy as np
import soundfile as sf
import torch
from omegaconf import OmegaConf

from clap_lightning.audio.io import Resampler
from clap_lightning.config import ExperimentConfig, config_from
from clap_lightning.data.pipeline import ClipDecoder
from clap_lightning.models.clap import CLAP
from data_recipes.writer import prepare_audio


def status(key: str) -> int:
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


def measure(fn) -> tuple[float, int]:
    """(seconds, bytes of peak RSS above the RSS before) of fn()."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
    except OSError:
        pass  # the peak then includes earlier work: the figure can only come out too high
    before, start = status("VmRSS"), time.perf_counter()
    fn()
    return time.perf_counter() - start, status("VmHWM") - before


config_path, tmp = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = CLAP(config_from(ExperimentConfig, {"model": OmegaConf.to_container(OmegaConf.load(config_path))}).model).eval()
model.embed_audio(np.zeros(16000, np.float32))  # warm up: one-off allocations are not the resampler's
# Fail fast rather than take the machine's memory if a dense kernel is built.
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (1 << 30),) * 2)


def measure_paths(rate: int) -> dict[str, tuple[float, int]]:
    """3 s of a tone at `rate` through every path that resamples."""
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate)).astype(np.float32)
    path = f"{tmp}/tone{rate}.flac"
    sf.write(path, wave, rate)
    meta = {"text": ["a tone"], "source": "t", "id": "1", "split": "test", "sample_rate": rate, "duration": 3.0}
    with open(path, "rb") as f:
        sample = {"__key__": "t-1", "flac": f.read(), "json": json.dumps(meta).encode()}
    decoder = ClipDecoder(model.config.sample_rate, model.config.clip_samples, "repeat", is_train=False)
    return {
        f"embed_audio waveform {rate}": measure(lambda: model.embed_audio(wave, sample_rate=rate)),
        f"embed_audio file {rate}": measure(lambda: model.embed_audio(path)),
        f"loader {rate}": measure(lambda: decoder(sample)),
        f"shard writer {rate}": measure(lambda: prepare_audio(wave, rate, 44100)),
        f"resample to 44100 {rate}": measure(lambda: Resampler(44100)(torch.from_numpy(wave), rate)),
    }


figures = {**measure_paths(16001), **measure_paths(48001)}
print(json.dumps(figures))
