"""`clap-lightning caption FILES --checkpoint C`: caption audio files with a trained captioner."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from clap_lightning.errors import CheckpointError, ConfigError, DataError, first_line

if TYPE_CHECKING:
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `caption` verb's arguments."""
    parser.add_argument("files", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--checkpoint", required=True, help="a captioning checkpoint (CaptioningModule)")
    parser.add_argument("--clap-checkpoint", default=None,
                        help="the CLAP checkpoint for the audio embeddings (default: the one stored in --checkpoint)")
    parser.add_argument("--beam-size", type=int, default=None, help="beams per clip; 1 = greedy (default: config)")
    parser.add_argument("--max-length", type=int, default=None, help="generated tokens at most (default: config)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="rank beams by log p / length**this (default: config)")
    parser.add_argument("--temperature", type=float, default=None, help="softmax temperature (default: config)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips captioned together")


def load_audio_files(
    paths: Sequence[str], sample_rate: int, clip_samples: int, pad_mode: str = "repeat"
) -> torch.Tensor:
    """Decode, down-mix, resample and crop (from the start) or pad files to [N, clip_samples]."""
    import torch

    from clap_lightning.audio.io import Resampler, fit_length, read_clip

    resample = Resampler(sample_rate)
    clips = []
    for path in paths:
        try:
            audio, rate, _ = read_clip(Path(path).read_bytes(), None, None)
        except Exception as err:  # missing file, unknown format
            raise DataError(f"cannot read audio file {path}: {first_line(err)}") from None
        if audio.size == 0:
            raise DataError(f"audio file {path} is empty")
        clip, _ = fit_length(resample(torch.from_numpy(audio), rate), clip_samples, pad_mode)
        clips.append(clip)
    return torch.stack(clips)


def caption_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Load the captioner and its CLAP, caption `args.files`; returns (file, caption) pairs."""
    import torch

    from clap_lightning.lit.captioning import load_captioner
    from clap_lightning.lit.run import load_pretraining
    from clap_lightning.models.captioner import caption_audio

    captioner, config = load_captioner(args.checkpoint)
    clap_path = args.clap_checkpoint or config.clap_checkpoint
    if not clap_path:
        raise CheckpointError(f"{args.checkpoint} names no CLAP checkpoint; pass --clap-checkpoint")
    clap = load_pretraining(clap_path).model
    overrides = {k: getattr(args, k) for k in ("beam_size", "max_length", "length_penalty", "temperature")
                 if getattr(args, k) is not None}
    try:
        decoding = dataclasses.replace(config.decoding, **overrides)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    captioner.clap = clap.requires_grad_(False).eval()
    captioner.to(device)
    audio = load_audio_files(args.files, clap.config.sample_rate, clap.config.clip_samples)
    captions = caption_audio(captioner, audio=audio, decoding=decoding, batch_size=args.batch_size)
    return list(zip(args.files, captions))


def run(args: argparse.Namespace) -> int:
    """Print one `file<TAB>caption` line per file."""
    for path, caption in caption_files(args):
        print(f"{path}\t{caption}")
    return 0
