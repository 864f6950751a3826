"""Measure what each padding mode does to HTSAT's `bn0` (BatchNorm over mel bins) on short clips.

Reads the first batch of clips of a shard split (deterministic crops, as evaluation), pads
them to the model's clip length with each `data.pad_mode`, computes the log-mel features of
the model's front end and passes them through a freshly initialised `bn0` in training mode
(statistics of this batch, as in the first training steps). `zero+mask` is zero padding with
the encoder's `mask_padding` on: padded frames out of bn0's statistics (and set to its mean)
and out of the pooling. Per mel bin, then averaged over bins, it prints:

- bn0 input: the mean and standard deviation over batch x time that BatchNorm normalises
  with, and the share of frames that are padding (frames centred past the clip's length);
- bn0 output on the sound frames: their mean and standard deviation (1 is the intended
  spread), and on the padding frames: their mean;
- the pooled embedding of the whole (randomly initialised) encoder: how much it varies from
  clip to clip, as the per-dimension standard deviation over the batch divided by the
  embedding's root mean square (what is common to every clip carries no information).

    python -m data_recipes build demo --out /tmp/short --sample-rate 16000 --workers 2 \\
        -o min_duration=0.3 -o max_duration=0.8
    python benchmarks/measure_bn0_padding.py --data /tmp/short/demo/train

Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from clap_lightning.audio.frontend import compute_valid_frames, masked_batch_norm
from clap_lightning.config import ExperimentConfig, load_config
from clap_lightning.eval.embed import ClipSettings, build_eval_loader, split_urls
from clap_lightning.models.clap import CLAP

REPO = Path(__file__).resolve().parents[1]


def first_batch(split: Path, clip: ClipSettings, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio [B, T], real samples per clip [B]) of the first `batch_size` clips of a split."""
    loader = build_eval_loader(split_urls(split), clip, batch_size, num_workers=0)
    batch = next(iter(loader))
    return batch["audio"], batch["audio_length"]


def per_bin(values: torch.Tensor, where: torch.Tensor) -> tuple[float, float]:
    """Per-bin mean and standard deviation of values [B, frames, bins] at `where` [B, frames], averaged over bins."""
    picked = values[where]  # [N, bins]
    if picked.shape[0] < 2:
        return float("nan"), float("nan")
    return picked.mean(0).mean().item(), picked.std(0).mean().item()


def measure(encoder: torch.nn.Module, audio: torch.Tensor, lengths: torch.Tensor, mask: bool) -> dict[str, float]:
    """bn0 input and output statistics of one batch through a fresh bn0 in training mode."""
    feats = encoder.frontend(audio)  # [B, frames, bins], dB
    valid = compute_valid_frames(lengths, feats.shape[1], encoder.cfg.hop_length, audio.shape[1])
    bn0 = torch.nn.BatchNorm2d(feats.shape[2]).train()
    with torch.no_grad():
        if mask:
            out = masked_batch_norm(feats, valid, bn0)
        else:
            out = bn0(feats.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    everywhere = torch.ones_like(valid)
    in_mean, in_std = per_bin(feats, everywhere)
    sound_mean, sound_std = per_bin(out, valid)
    pad_mean, _ = per_bin(out, ~valid)
    encoder.cfg.mask_padding = mask
    with torch.no_grad():
        emb = encoder.train()(audio, lengths)  # [B, D]; batch statistics in bn0, as in training
    spread = (emb.std(0).mean() / emb.square().mean().sqrt()).item()
    return {"pad_share": 1 - valid.float().mean().item(), "in_mean": in_mean, "in_std": in_std,
            "sound_in_std": per_bin(feats, valid)[1], "sound_mean": sound_mean, "sound_std": sound_std,
            "pad_mean": pad_mean, "spread": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a shard split directory")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "experiment" / "demo.yaml")
    parser.add_argument("--batch", type=int, default=64, help="clips in the batch")
    args = parser.parse_args()
    config = load_config(ExperimentConfig, args.config)
    torch.manual_seed(0)
    encoder = CLAP(config.model).audio_encoder
    print(f"{args.batch} clips of {args.data}, padded to {config.model.clip_seconds} s; bn0 freshly initialised, "
          "training mode; per mel bin, averaged over bins")
    print(f"{'mode':9} {'pad frames':>10} | {'bn0 in: mean':>12} {'std':>6} {'sound std':>9} | "
          f"{'bn0 out: sound mean':>19} {'sound std':>9} {'pad mean':>8} | {'embedding spread':>16}")
    for mode in ("repeat", "zero", "zero+mask"):
        clip = ClipSettings(config.model.sample_rate, config.model.clip_samples, mode.split("+")[0])
        audio, lengths = first_batch(args.data, clip, args.batch)  # a tiled clip has no padding
        s = measure(encoder, audio, lengths, mask=mode.endswith("+mask"))
        print(f"{mode:9} {s['pad_share']:>10.2f} | "
              f"{s['in_mean']:>12.1f} {s['in_std']:>6.1f} {s['sound_in_std']:>9.1f} | "
              f"{s['sound_mean']:>19.2f} {s['sound_std']:>9.2f} {s['pad_mean']:>8.2f} | {s['spread']:>16.3f}")


if __name__ == "__main__":
    main()
