"""CLAP: an audio encoder and a text encoder projected into one space, with a learned temperature."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from clap_lightning.audio.io import Resampler, cut_windows, fit_length, read_clip
from clap_lightning.config import ExperimentConfig, ModelConfig, config_from
from clap_lightning.encoders.projection import build_projection
from clap_lightning.encoders.registry import build_audio_encoder, build_caption_tokenizer, build_text_encoder
from clap_lightning.checkpoint import load_state_or_refuse, read_lightning_checkpoint
from clap_lightning.errors import CheckpointError

AudioInput = Union[str, Path, np.ndarray, torch.Tensor]
MAX_CHANNELS = 8  # a 2-D waveform whose last axis is this small (and the first longer) is [T, channels]


def split_name(section: dict) -> tuple[str, dict]:
    """Split a registry section `{name: x, **options}` into its name and options."""
    options = dict(section)
    return options.pop("name"), options


class CLAP(nn.Module):
    """Contrastive language-audio model (Elizalde et al., 2023).

    `encode_*` return projected, unnormalised embeddings [B, d_proj]; the loss normalises.
    `logit_scale` is a shape-(1,) log-temperature (DeepSpeed cannot broadcast a 0-dim
    parameter) and `forward` returns it, because under ZeRO-3 a parameter read outside
    `forward` is a partitioned, empty shard.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = build_audio_encoder(*split_name(config.audio_encoder))
        self.text_encoder = build_text_encoder(*split_name(config.text_encoder))
        self.audio_projection = build_projection(config.projection, self.audio_encoder.out_dim, config.d_proj,
                                                 config.proj_dropout)
        self.text_projection = build_projection(config.projection, self.text_encoder.out_dim, config.d_proj,
                                                config.proj_dropout)
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale_init)))
        if config.text_logit_scale:
            # LAION-CLAP learns logit_scale_a and logit_scale_t; its loss (without the MLP loss) and its
            # zero-shot use only _a, which is `logit_scale` here. _t is kept so its weights round-trip.
            self.logit_scale_t = nn.Parameter(torch.full((1,), float(config.logit_scale_init)), requires_grad=False)

    def encode_audio(self, audio: torch.Tensor, audio_length: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embed waveforms [B, T] at `config.sample_rate` into [B, d_proj].

        `audio_length` [B] (samples that are not padding) masks the padding when the audio
        encoder's `mask_padding` is on; it is ignored otherwise.
        """
        return self.audio_projection(self.audio_encoder(audio, audio_length))

    @property
    def masks_padding(self) -> bool:
        """Whether the audio encoder keeps padded frames out of its statistics and pooling."""
        return bool(getattr(self.audio_encoder.cfg, "mask_padding", False))

    def encode_audio_features(self, logmel: torch.Tensor, longer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embed log-mel features [B, frames, n_mels] made outside the model into [B, d_proj].

        For inputs prepared by another front end (Hugging Face's `ClapFeatureExtractor`, LAION's);
        the audio encoder must take features (HTSAT does: `embed_logmel`).
        """
        if not hasattr(self.audio_encoder, "embed_logmel"):
            raise ValueError(f"{type(self.audio_encoder).__name__} does not take log-mel features")
        return self.audio_projection(self.audio_encoder.embed_logmel(logmel, longer))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token ids and attention mask [B, L] into [B, d_proj]."""
        return self.text_projection(self.text_encoder(input_ids, attention_mask))

    def forward(
        self, audio: Optional[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor,
        audio_length: Optional[torch.Tensor] = None, logmel: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (audio_emb [B, D], text_emb [B, D], logit_scale [1]).

        With `logmel` [B, frames, n_mels] (a batch from log-mel training shards) the audio embedding
        comes from those features (`encode_audio_features`) and `audio` is not used.
        """
        audio_emb = self.encode_audio(audio, audio_length) if logmel is None else self.encode_audio_features(logmel)
        return audio_emb, self.encode_text(input_ids, attention_mask), self.logit_scale

    def build_tokenizer(self):
        """The caption tokenizer that matches this model's text encoder."""
        return build_caption_tokenizer(*split_name(self.config.text_encoder))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu",
                        tokenizer: Optional[str] = None) -> "CLAP":
        """Load a clap-lightning checkpoint (trained, or converted from msclap) for inference.

        Reads with `safe_load` (never arbitrary pickles); the model config comes from the checkpoint.

        Args:
            path: a `.ckpt` written by training or by `clap-lightning convert`.
            map_location: where to put the weights.
            tokenizer: a local tokenizer directory overriding the stored one (e.g. offline).

        Raises:
            CheckpointError: missing, unreadable, foreign or mismatching checkpoint.
        """
        state, stored = read_checkpoint(path, map_location)
        config = config_from(ExperimentConfig, stored, "stored config").model
        if tokenizer:
            config.text_encoder["tokenizer"] = tokenizer
        model = cls(config)
        load_state_or_refuse(model, state, path)
        return model.to(map_location).eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu",
                        tokenizer: Optional[str] = None) -> "CLAP":
        """Load an exported model folder: clap-lightning's own (`export safetensors`: model.safetensors +
        config.yaml) or a Hugging Face `ClapModel` one (config.json + model.safetensors / pytorch_model.bin).

        Raises:
            CheckpointError: the folder is neither, or its weights do not fit its config.
        """
        directory = Path(directory)
        if (directory / "config.json").is_file():
            from clap_lightning.convert.hf import build_from_hf  # convert imports this module

            return build_from_hf(directory, tokenizer)[0].to(map_location)
        if not ((directory / "config.yaml").is_file() and (directory / "model.safetensors").is_file()):
            raise CheckpointError(f"{directory} holds neither config.yaml + model.safetensors (clap-lightning) "
                                  "nor config.json (Hugging Face ClapModel)")
        config = config_from(ExperimentConfig, OmegaConf.to_container(OmegaConf.load(directory / "config.yaml")),
                             str(directory / "config.yaml")).model
        if tokenizer:
            config.text_encoder["tokenizer"] = tokenizer
        model = load_state_or_refuse(cls(config), load_file(str(directory / "model.safetensors")), directory)
        return model.to(map_location).eval()

    @torch.no_grad()
    def embed_audio(self, audio: AudioInput | Sequence[AudioInput], sample_rate: Optional[int] = None,
                    batch_size: int = 32, long_audio: str = "first", hop_seconds: Optional[float] = None,
                    return_windows: bool = False) -> torch.Tensor | WindowedEmbeddings:
        """L2-normalised audio embeddings [N, d_proj], deterministic (eval mode, crop from the start).

        Channels are averaged, the rate is converted to the model's, and clips are cut from
        their start or tiled to `config.clip_seconds` (as msclap and the evaluation loader).
        With the audio encoder's `mask_padding` on, short clips are zero-padded instead and the
        padding, trailing digital silence included, is masked: appending silence to a clip
        does not change its embedding.

        Shapes. A file path or a 1-D waveform [T] is one clip. A 2-D array or tensor with at
        most `MAX_CHANNELS` (8) columns and more rows than columns is one clip in soundfile's
        layout [T, channels]; any other 2-D array passed on its own is a batch [N, T] of mono
        clips. In a list, each item is one clip: a path, [T], [channels, T] or [T, channels]
        (the same rule). An empty list gives an empty [0, d_proj] result.

        Samples. Floating-point samples are taken as they are (full scale is [-1, 1]); PCM
        integers are scaled to it: int8, int16 and int32 divided by 2^(bits - 1), uint8 (8-bit
        WAV) as (x - 128) / 128. Other dtypes (int64, bool, ...) are refused as ambiguous.

        Args:
            audio: a file path, a waveform, a batch, or a list of paths and waveforms.
            sample_rate: rate of the waveforms in Hz, a positive integer (None = the model's
                rate); files carry their own.
            batch_size: clips (windows) per forward pass; the result does not depend on it.
            long_audio: "first" embeds the first `clip_seconds`; "windows" embeds overlapping
                windows over the whole recording (`prepare_windows`) and pools them (the
                normalised mean of their normalised embeddings); "fusion" is LAION's fusion of
                a whole-clip view and three crops, for audio encoders built with it (`embed_fused`).
            hop_seconds: window hop for "windows" (default half a window).
            return_windows: with "windows", also return every window's embedding and times.

        Raises:
            ValueError: a shape or dtype outside these rules, a sample rate that is not a
                positive integer, or NaN/Inf among the samples a clip contributes.
        """
        if long_audio == "first":
            clips, lengths = prepare_audio(audio, sample_rate, self.config.sample_rate, self.config.clip_samples,
                                           self.pad_mode)
            return embed_clips(self, clips, lengths, batch_size) if len(clips) else torch.empty(0, self.config.d_proj)
        if long_audio == "fusion":
            return self.embed_fused(audio, sample_rate, batch_size)
        if long_audio != "windows":
            raise ValueError(f"long_audio must be 'first', 'windows' or 'fusion', got {long_audio!r}")
        hop = hop_seconds if hop_seconds is not None else self.config.clip_seconds / 2
        prepared = [prepare_windows(wave, rate or self.config.sample_rate, self.config.sample_rate,
                                    self.config.clip_samples, hop, self.pad_mode)
                    for wave, rate in iter_recordings(audio, sample_rate)]
        if not prepared:
            empty = torch.empty(0, self.config.d_proj)
            return WindowedEmbeddings(empty, [], []) if return_windows else empty
        embs = embed_clips(self, torch.cat([p[0] for p in prepared]), torch.cat([p[1] for p in prepared]), batch_size)
        windows = list(torch.split(embs, [len(p[0]) for p in prepared]))
        pooled = torch.stack([pool_windows(w) for w in windows])
        if not return_windows:
            return pooled
        starts = [p[2] for p in prepared]
        return WindowedEmbeddings(pooled, windows, [torch.stack([s, s + self.config.clip_seconds], 1) for s in starts])

    @property
    def pad_mode(self) -> str:
        """How inference pads a short clip: zeros when the encoder masks padding, else tiling (msclap)."""
        if self.config.pad_mode:
            return self.config.pad_mode
        return "zero" if self.masks_padding else "repeat"

    @torch.no_grad()
    def embed_fused(self, audio: AudioInput | Sequence[AudioInput], sample_rate: Optional[int] = None,
                    batch_size: int = 32) -> torch.Tensor:
        """`embed_audio(long_audio="fusion")`: LAION's fusion of a whole-clip view and three crops
        (`HTSATEncoder.fusion_logmel`) for audio encoders built with `enable_fusion`."""
        from clap_lightning.audio.io import Resampler

        if not getattr(getattr(self.audio_encoder, "cfg", None), "enable_fusion", False):
            raise ValueError("long_audio='fusion' needs an audio encoder with LAION's fusion (enable_fusion); "
                             "use 'windows' for this model")
        resample = Resampler(self.config.sample_rate)
        views, longer = [], []
        with eval_mode(self):
            for wave, rate in iter_recordings(audio, sample_rate):
                wave = resample(to_mono(wave), rate or self.config.sample_rate)
                if not torch.isfinite(wave).all():
                    raise ValueError("audio holds NaN or Inf samples")
                mel, is_longer = self.audio_encoder.fusion_logmel(
                    wave.to(self.logit_scale.device), self.config.clip_samples, self.pad_mode
                )
                views.append(mel)
                longer.append(is_longer)
            mels, flags = torch.stack(views), torch.tensor(longer, device=self.logit_scale.device)
            embs = [self.encode_audio_features(mels[i:i + batch_size], flags[i:i + batch_size])
                    for i in range(0, len(mels), batch_size)]
        return F.normalize(torch.cat(embs).float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, captions: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings [N, d_proj] of captions (tokenized with the model's tokenizer).

        An empty list gives an empty [0, d_proj] result.

        Raises:
            ValueError: a caption is not a string.
        """
        captions = [captions] if isinstance(captions, str) else list(captions)
        wrong = next((i for i, c in enumerate(captions) if not isinstance(c, str)), None)
        if wrong is not None:
            raise ValueError(f"embed_text takes strings; caption {wrong} is a {type(captions[wrong]).__name__}")
        if not captions:
            return torch.empty(0, self.config.d_proj)
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = self.build_tokenizer()  # a plain attribute: not a module, not saved
        device = self.logit_scale.device
        embs = []
        with eval_mode(self):
            for i in range(0, len(captions), batch_size):
                batch = self._tokenizer(captions[i:i + batch_size])
                embs.append(self.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)))
        return F.normalize(torch.cat(embs).float(), dim=-1)


def compile_encoders(model: CLAP) -> CLAP:
    """`torch.compile` the audio and text encoders in place (`model.compile: true`); returns `model`.

    `nn.Module.compile` keeps the modules and their state-dict keys, so checkpoints of a compiled
    run load into an eager model and the reverse. The first step pays the compilation.
    """
    model.audio_encoder.compile()
    model.text_encoder.compile()
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode, then restore every submodule's own mode.

    `model.train(was_training)` would not do: it would also switch frozen towers (kept in eval
    mode by `ClapPretraining`) back to train mode, so an embedding call during training (the
    validation callback) would turn a frozen tower's dropout on.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


@torch.no_grad()
def embed_clips(model: nn.Module, clips: torch.Tensor, lengths: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """L2-normalised float32 embeddings [N, D] of prepared clips [N, T] (samples that are not padding [N]).

    The one audio embedding path: `CLAP.embed_audio`, the evaluation suite (so `eval`, `zeroshot`
    and the validation callback) and the embedding index end here. `model` is anything with
    `encode_audio(audio [B, T], lengths [B])` (a `CLAP`); it runs in `eval_mode`, in batches of
    `batch_size` clips on the device of its parameters, where the result stays.
    """
    if not len(clips):
        raise ValueError("no clips to embed")
    device = next(model.parameters()).device
    with eval_mode(model):
        embs = [model.encode_audio(clips[i:i + batch_size].to(device), lengths[i:i + batch_size].to(device))
                for i in range(0, len(clips), batch_size)]
    return F.normalize(torch.cat(embs).float(), dim=-1)


def read_checkpoint(path: str | Path, map_location="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Return (CLAP state dict, stored experiment config) of a clap-lightning checkpoint."""
    checkpoint, stored = read_lightning_checkpoint(path, map_location)
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}, stored


def prepare_audio(audio: AudioInput | Sequence[AudioInput], sample_rate: Optional[int], target_rate: int,
                  num_samples: int, pad_mode: str = "repeat") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode, down-mix, resample and crop/pad inputs into a batch [N, num_samples] at `target_rate`.

    Shapes, dtypes and errors as `CLAP.embed_audio` documents them.

    Returns:
        (clips [N, num_samples], samples that are not padding [N]). With `pad_mode` "zero",
        trailing digital silence (exact zeros) counts as padding too.
    """
    wave_rate = check_sample_rate(sample_rate) or target_rate
    items = split_clips(audio)
    resample = Resampler(target_rate)
    clips, lengths = [], []
    for index, item in enumerate(items):
        if isinstance(item, (str, Path)):
            wave, rate = read_audio_file(item, num_samples, target_rate)
        else:  # cut what the clip needs before resampling, as a file is read: same result either way
            rate = wave_rate
            wave = to_mono(item)[:frames_needed(num_samples, rate, target_rate)]
        if not torch.isfinite(wave).all():
            where = str(item) if isinstance(item, (str, Path)) else f"clip {index}"
            raise ValueError(f"audio {where} holds NaN or Inf samples")
        wave = resample(wave, rate)
        if pad_mode == "zero":
            wave = trim_trailing_silence(wave)
        clip, length = fit_length(wave, num_samples, pad_mode)
        clips.append(clip)
        lengths.append(length)
    if not clips:
        return torch.empty(0, num_samples), torch.empty(0, dtype=torch.long)
    return torch.stack(clips), torch.tensor(lengths)


def check_sample_rate(sample_rate: Optional[int]) -> Optional[int]:
    """Return `sample_rate` as an int (None stays None); ValueError unless it is a positive integer."""
    if sample_rate is None:
        return None
    number = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(sample_rate, bool)
    if not (number and math.isfinite(sample_rate) and sample_rate > 0 and sample_rate == int(sample_rate)):
        raise ValueError(f"sample_rate must be a positive whole number of Hz (or None: the model's rate), "
                         f"got {sample_rate!r}")
    return int(sample_rate)


def split_clips(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    """The clips of an `embed_audio` input: one path or waveform, the rows of a batch, or a list's items."""
    if isinstance(audio, (str, Path)):
        return [audio]
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        if audio.ndim == 2 and not is_frames_by_channels(audio.shape):
            return list(audio)  # a batch [N, T]
        return [audio]
    return list(audio)


def is_frames_by_channels(shape: Sequence[int]) -> bool:
    """Whether a 2-D waveform shape is [T, channels] (soundfile's layout) rather than [channels, T] or [N, T]."""
    return shape[1] <= MAX_CHANNELS and shape[0] > shape[1]


def pool_windows(window_emb: torch.Tensor) -> torch.Tensor:
    """A recording's embedding [D] from its windows' L2-normalised embeddings [W, D]: their normalised mean."""
    return F.normalize(window_emb.mean(dim=0), dim=-1)


@dataclass
class WindowedEmbeddings:
    """`embed_audio(long_audio="windows", return_windows=True)`: pooled and per-window embeddings."""

    embedding: torch.Tensor  # [N, D] one per recording, L2-normalised
    windows: list[torch.Tensor]  # per recording [W, D], L2-normalised
    times: list[torch.Tensor]  # per recording [W, 2]: each window's start and end in seconds


def iter_recordings(audio: AudioInput | Sequence[AudioInput], sample_rate: Optional[int]):
    """(mono waveform, its rate) of each recording in an `embed_audio` input, files decoded whole."""
    rate = check_sample_rate(sample_rate)
    for item in split_clips(audio):
        if isinstance(item, (str, Path)):
            if not Path(item).is_file():
                raise FileNotFoundError(f"audio file not found: {item}")
            wave, rate, _ = read_clip(Path(item).read_bytes(), None, None)
            yield wave, rate
        else:
            yield item, rate


def prepare_windows(wave: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int, num_samples: int,
                    hop_seconds: float, pad_mode: str = "repeat") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut a whole recording into overlapping clips of `num_samples` at `target_rate`.

    Windows start every `hop_seconds`; the last one is placed to end with the recording, so every
    window is full audio and the whole recording is covered. A recording no longer than one
    window gives one clip, padded as `prepare_audio` pads.

    Returns:
        (clips [W, num_samples], samples that are not padding [W], window starts in seconds [W]).
    """
    if hop_seconds <= 0:
        raise ValueError(f"window hop must be positive, got {hop_seconds} s")
    wave = Resampler(target_rate)(to_mono(wave), sample_rate)
    if not torch.isfinite(wave).all():
        raise ValueError("audio holds NaN or Inf samples")
    clips, lengths, starts = cut_windows(wave, num_samples, max(1, round(hop_seconds * target_rate)), pad_mode)
    return clips, lengths, starts.double() / target_rate


def trim_trailing_silence(wave: torch.Tensor) -> torch.Tensor:
    """`wave` [T] without its trailing exact zeros (one sample kept if all are zero)."""
    nonzero = torch.nonzero(wave).flatten()
    return wave[:int(nonzero[-1]) + 1 if len(nonzero) else 1]


def frames_needed(num_samples: int, rate: int, target_rate: int) -> int:
    """Frames at `rate` that resample to at least `num_samples` at `target_rate` (as the eval loader)."""
    return -(-num_samples * rate // target_rate) + 1


def to_mono(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 waveform [T] in [-1, 1] from [T], [channels, T] or [T, channels] (`is_frames_by_channels`)."""
    wave = to_float(wave)
    if wave.ndim == 2:
        wave = wave.mean(dim=1 if is_frames_by_channels(wave.shape) else 0)
    if wave.ndim != 1 or wave.numel() == 0:
        raise ValueError(f"expected a waveform [T], [channels, T] or [T, channels], got shape {list(wave.shape)}")
    return wave


def to_float(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 samples: floats as they are, PCM integers scaled to [-1, 1] (int8/16/32, uint8 as 8-bit WAV)."""
    wave = torch.as_tensor(wave)
    if wave.is_floating_point():
        return wave.float()
    if wave.dtype == torch.uint8:  # 8-bit WAV: unsigned, silence at 128
        return (wave.float() - 128.0) / 128.0
    bits = {torch.int8: 8, torch.int16: 16, torch.int32: 32}.get(wave.dtype)
    if bits is None:
        raise ValueError(
            f"audio samples of dtype {str(wave.dtype).replace('torch.', '')} are ambiguous: pass floats in "
            f"[-1, 1] or PCM int8, int16, int32 or uint8"
        )
    return (wave.double() / 2.0 ** (bits - 1)).float()


def read_audio_file(path: str | Path, num_samples: int, target_rate: int) -> tuple[torch.Tensor, int]:
    """Decode from the start of a file what `num_samples` at `target_rate` need (mono, its own rate)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    frames = frames_needed(num_samples, sf.info(str(path)).samplerate, target_rate)
    audio, rate, _ = read_clip(path.read_bytes(), frames, None)
    return torch.from_numpy(audio), rate
