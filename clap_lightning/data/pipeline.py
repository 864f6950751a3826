"""Shards -> decoded, cropped clips with captions -> tokenized batches, inside loader workers.

`ClapStream` is the IterableDataset every loader worker runs: it reads raw samples
(`data/stream.py`), decodes them with `ClipDecoder`, batches them with `Collate` and tags
each training batch with where it ended in the stream, so the DataModule can checkpoint
the position and a resumed run can skip what it already saw. Every per-sample step is a
small picklable class.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections import Counter
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clap_lightning.audio.frontend import SILENCE_DB
from clap_lightning.audio.io import cut_windows, Resampler, fit_length, read_clip
from clap_lightning.data.schema import LOGMEL_EXT, read_captions, read_labels
from clap_lightning.data.stream import (FailureGuard, format_skipped, mixed_stream, pass_share, shuffle_buffered,
                                        single_pass)
from clap_lightning.errors import DataError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
MAX_REPORTED_KEYS = 5  # bad samples named in a warning, per reason and worker
AUGMENT_STREAM = 1  # appended to a sample's seed: its augmentation draws are independent of its crop and caption
MIXUP_STREAM = 2  # appended to a batch's seed for its mixup draws
BUCKET_STREAM = 3  # appended to a pool's seed for the order of its duration-bucketed batches


class ClipDecoder:
    """Turn a raw tar sample into {audio [T], length, texts, caption, key, meta}, or None when it is bad.

    Bad samples are counted in `skipped` by reason: missing_json, bad_json, empty_text,
    missing_audio, bad_audio (corrupt or truncated), empty_audio, nan_audio.

    Args:
        sample_rate: model rate; clips at another rate are resampled (after the crop).
        clip_samples: samples per clip at `sample_rate`.
        pad_mode: "repeat" or "zero" for short clips ("none" pads with zeros too; `Collate` then cuts the batch).
        is_train: random crop and caption (train) or the start and the first caption (evaluation).
    """

    def __init__(self, sample_rate: int, clip_samples: int, pad_mode: str, is_train: bool) -> None:
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.pad_mode = pad_mode
        self.is_train = is_train
        self.skipped: Counter = Counter()
        self._resampler: Optional[Resampler] = None

    def _skip(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        if self.skipped[reason] <= MAX_REPORTED_KEYS:
            log.warning("skipping sample %s: %s", key, reason)

    def __call__(self, sample: dict[str, Any], rng: Optional[np.random.Generator] = None) -> Optional[dict[str, Any]]:
        """Decode one sample on its own (the clip gets a tensor of its own); see `decode_into`."""
        return self._decode(sample, rng, None)

    def decode_into(self, row: torch.Tensor, sample: dict[str, Any],
                    rng: Optional[np.random.Generator] = None) -> Optional[dict[str, Any]]:
        """Decode raw sample `sample` straight into `row`, a row of the batch being built.

        The contract, which is all a caller needs of the zero-copy path:
        - `row` is a 1-D float32 tensor of `clip_samples`, normally row i of the batch buffer
          (`transfer_buffer((batch, clip_samples))`, in shared memory inside a loader worker).
        - On success the whole row is written (clip, then padding) and the returned sample's
          `audio` is `row` itself, so the rows of a batch are the batch: `stack_for_transfer`
          (in `Collate`) returns the buffer's leading rows as they are, with no stack and no copy
          to the main process. (`WindowDecoder` returns its own [W, T] windows instead and leaves
          `row` alone; its batch is then stacked by copy.)
        - On a skip (None, counted in `skipped`) the row's content is undefined: decode the next
          sample into the same row.
        - `rng` draws the crop and caption; it is required in training (one per sample, seeded
          by the stream position, so a resumed run repeats them).
        How it avoids copies, for the curious: the file is decoded from the crop's first frame
        into an array that already holds the resampler's zero margins (`read_clip(margins=)`),
        which the resampler reads in place (`padded=True`) and multiplies straight into the row
        (`out=`); only a clip shorter than the row is padded first and then copied in.
        """
        return self._decode(sample, rng, row)

    def _decode(self, sample: dict[str, Any], rng: Optional[np.random.Generator],
                out: Optional[torch.Tensor]) -> Optional[dict[str, Any]]:
        if self.is_train and rng is None:  # a fixed fallback would give every clip the same crop
            raise ValueError("a training ClipDecoder needs a generator for its crops and captions "
                             "(one per worker, seeded from the run's seed)")
        key = sample.get("__key__", "?")
        if "json" not in sample:
            return self._skip("missing_json", key)
        try:
            meta = json.loads(sample["json"])
            texts = read_captions(meta)  # "text": a list of strings, or one string
        except (ValueError, RecursionError):  # not json (or not utf-8), not an object, a "text" of another type
            return self._skip("bad_json", key)
        if not texts:
            return self._skip("empty_text", key)
        decoded = self._decode_clip(sample, key, rng, out)
        if decoded is None:
            return None
        clip, length = decoded
        caption = texts[int(rng.integers(len(texts)))] if self.is_train else texts[0]
        return {self.output_key: clip, "length": length, "texts": texts, "caption": caption, "key": key, "meta": meta,
                "source_index": sample.get("__source__", 0)}

    output_key = "audio"  # the sample's (and batch's) key of what `_decode_clip` returns
    pad_value = 0.0  # what fills a row past `length` when the clip is not tiled (pad_mode zero or none)

    @property
    def clip_shape(self) -> tuple[int, ...]:
        """Shape of one decoded clip: [clip_samples] (the rows of a batch's buffer)."""
        return (self.clip_samples,)

    def _decode_clip(self, sample: dict[str, Any], key: str, rng: Optional[np.random.Generator],
                     out: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, Any]]:
        """(clip, samples that are not padding) of a sample's audio, or None (counted) when it is bad."""
        if self._resampler is None:  # built lazily, once per worker process
            self._resampler = Resampler(self.sample_rate)
        data = next((sample[ext] for ext in AUDIO_EXTENSIONS if ext in sample), None)
        if data is None:
            return self._skip("missing_audio", key)
        if len(data) == 0:
            return self._skip("empty_audio", key)
        try:
            # Decoded between the resampler's zero margins: it then needs no padded copy. The
            # frames to read follow the rate in the audio header, not the json's `sample_rate`.
            audio, rate, _ = read_clip(data, self._frames_at, rng if self.is_train else None, self._resampler.margins)
        except (RuntimeError, ValueError, EOFError, TypeError):  # soundfile raises LibsndfileError (a RuntimeError)
            return self._skip("bad_audio", key)
        if audio.size == sum(self._resampler.margins(rate)):
            return self._skip("empty_audio", key)
        if not np.isfinite(audio).all():
            return self._skip("nan_audio", key)
        return self._fit(torch.from_numpy(audio), rate, out)

    def _fit(self, audio: torch.Tensor, rate: int, out: Optional[torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Resample decoded audio (between the resampler's margins) into one clip: (clip, samples not padding)."""
        frames = audio.shape[0] - sum(self._resampler.margins(rate))
        if out is not None and -(-frames * self.sample_rate // rate) >= self.clip_samples:
            return self._resampler(audio, rate, padded=True, out=out), self.clip_samples
        # a short clip is padded after resampling
        clip, length = fit_length(self._resampler(audio, rate, padded=True), self.clip_samples, self.pad_mode)
        return (clip if out is None else out.copy_(clip)), length

    def _frames_at(self, rate: int) -> int:
        """Frames to read at the file's rate for one clip at the model rate."""
        return -(-self.clip_samples * rate // self.sample_rate) + 1


class WindowDecoder(ClipDecoder):
    """An evaluation decoder that keeps a whole recording as overlapping windows (`cut_windows`).

    Each sample's `audio` is [W, clip_samples] and `length` [W]: `EvalCollate` concatenates the
    windows and the evaluation pools each clip's window embeddings, so a task is scored on every
    second of a long file rather than its first `clip_samples`.
    """

    def __init__(self, sample_rate: int, clip_samples: int, pad_mode: str, hop_samples: int) -> None:
        super().__init__(sample_rate, clip_samples, pad_mode, is_train=False)
        self.hop_samples = hop_samples

    def _fit(self, audio: torch.Tensor, rate: int, out: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        clips, lengths, _ = cut_windows(self._resampler(audio, rate, padded=True), self.clip_samples,
                                        self.hop_samples, self.pad_mode)
        return clips, lengths

    def _frames_at(self, rate: int) -> None:
        return None  # the whole recording


class LogMelDecoder(ClipDecoder):
    """Decode a training-format sample of log-mel features (`<key>.logmel.npy`, fp16 [frames, n_mels]).

    The clip is `frames` frames ([frames, n_mels] float32, under the sample's `logmel` key): a
    random crop in frames in training, the first frames otherwise; shorter features are tiled
    ("repeat") or padded with the dB of silence ("zero"/"none", as zero-padded audio gives), and
    `length` counts the frames that are not padding. Bad samples are counted as by `ClipDecoder`
    (a member that is not a float [frames, n_mels] array is bad_audio). `decode_into` takes a
    [frames, n_mels] row (`clip_shape`) and writes the features into it, fp16 to fp32 on the way.
    """

    output_key = "logmel"
    pad_value = SILENCE_DB

    def __init__(self, frames: int, n_mels: int, pad_mode: str, is_train: bool) -> None:
        super().__init__(0, 0, pad_mode, is_train)
        self.frames, self.n_mels = frames, n_mels

    @property
    def clip_shape(self) -> tuple[int, ...]:
        return (self.frames, self.n_mels)

    def _decode_clip(self, sample: dict[str, Any], key: str, rng: Optional[np.random.Generator],
                     out: Optional[torch.Tensor]) -> Optional[tuple[torch.Tensor, int]]:
        data = sample.get(LOGMEL_EXT)
        if data is None:
            return self._skip("missing_audio", key)
        try:
            feats = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return self._skip("bad_audio", key)
        if feats.ndim != 2 or feats.shape[1] != self.n_mels or feats.dtype.kind != "f":
            return self._skip("bad_audio", key)
        if feats.shape[0] == 0:
            return self._skip("empty_audio", key)
        start = 0
        if self.is_train and feats.shape[0] > self.frames:
            start = int(rng.integers(0, feats.shape[0] - self.frames + 1))
        crop = feats[start:start + self.frames]  # a read-only view of the member's bytes
        if not np.isfinite(crop).all():
            return self._skip("nan_audio", key)
        clip = out if out is not None else torch.empty(self.frames, self.n_mels)
        rows, length = clip.numpy(), crop.shape[0]  # numpy writes the fp16 -> fp32 conversion into the buffer
        if length == self.frames:
            rows[:] = crop
            return clip, length
        if self.pad_mode == "repeat":  # tiled features are features the encoder is meant to see (as tiled audio)
            rows[:] = np.tile(crop, (-(-self.frames // length), 1))[:self.frames]
            return clip, self.frames
        rows[:length] = crop
        rows[length:] = self.pad_value
        return clip, length


def transfer_buffer(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An empty tensor, in shared memory when made in a loader worker.

    A worker's batch travels to the main process through shared memory; building it there
    (as torch's default_collate stacks into it) saves copying every batch a second time.
    """
    if get_worker_info() is None:
        return torch.empty(*shape, dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(*shape)


def stack_for_transfer(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, into shared memory when called in a loader worker.

    When the tensors already are the leading rows of one buffer, in order (the rows
    `ClipDecoder.decode_into` filled in a `transfer_buffer`), those rows are returned: no copy.
    """
    first = tensors[0]
    if first.is_contiguous() and all(
            t.shape == first.shape and t.dtype == first.dtype and t.is_contiguous()
            and t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            and t.storage_offset() == first.storage_offset() + i * first.numel() for i, t in enumerate(tensors)):
        return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (len(tensors), *first.shape))
    return torch.stack(tensors, out=transfer_buffer((len(tensors), *first.shape), first.dtype))


def hash_to_int64(text: str) -> int:
    """A signed 64-bit hash of `text`, the same in every process and run (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def compute_group_ids(caption: str, labels: Sequence[str]) -> tuple[int, int]:
    """Return the pair's (caption key, label-set key) for label-aware negatives.

    Two pairs share a key when their captions are identical or their label sets are; a pair
    without labels uses its caption key twice, so it only ever matches on the caption.
    """
    caption_key = hash_to_int64("caption\0" + caption)
    if not labels:
        return caption_key, caption_key
    return caption_key, hash_to_int64("labels\0" + json.dumps(sorted(set(labels))))


class Collate:
    """Stack clips and tokenize the caption ClipDecoder picked for each, padded per batch.

    With `cut_to_longest` (`data.pad_mode: none`) the audio is cut to the batch's longest clip:
    a view of the stacked rows, no copy.
    """

    def __init__(self, tokenizer, label_field: str = "labels", cut_to_longest: bool = False) -> None:
        self.tokenizer = tokenizer
        self.label_field = label_field
        self.cut_to_longest = cut_to_longest

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        captions = [s.get("caption") or s["texts"][0] for s in samples]
        labels = [read_labels(s["meta"], self.label_field) for s in samples]
        tokens = self.tokenizer(captions)
        if "logmel" in samples[0]:  # log-mel training shards: features [B, frames, n_mels], frames not padding
            clips = {"logmel": stack_for_transfer([s["logmel"] for s in samples]),
                     "logmel_length": torch.tensor([s["length"] for s in samples])}
        else:
            audio = stack_for_transfer([s["audio"] for s in samples])  # [B, T]
            lengths = torch.tensor([s["length"] for s in samples])  # [B] samples that are not padding
            clips = {"audio": audio[:, :int(lengths.max())] if self.cut_to_longest else audio, "audio_length": lengths}
        return {
            **clips,
            "input_ids": tokens["input_ids"],  # [B, L]
            "attention_mask": tokens["attention_mask"],  # [B, L]
            "key": [s["key"] for s in samples],
            "source": [s["meta"].get("source", "") for s in samples],
            "source_index": [s.get("source_index", 0) for s in samples],
            "labels": labels,
            "captions": captions,
            # [B, 2] int64 keys: pairs sharing one are not each other's negatives (objective.false_negatives)
            "group_ids": torch.tensor([compute_group_ids(c, labs) for c, labs in zip(captions, labels)],
                                      dtype=torch.int64),
        }


class ClapStream(IterableDataset):
    """Batches for one rank; each loader worker runs its own copy.

    Training draws from `sources` (lists of shard URLs) in proportion to `weights`, resampling
    shards, with a stream seeded by (seed, epoch, rank, worker); every worker yields exactly
    `batches_per_worker` full batches per epoch. The epoch advances with every `iter()` in
    the worker (workers must be persistent). `resume` = {"epoch", "workers": [[batches,
    position], ...]} makes the worker skip, in that epoch, the first `position` raw samples
    of its stream without decoding them, and yield only its remaining batches.
    `augment` (a `data.augment.WaveAugment`) augments each training clip with draws seeded
    by its position and mixes each batch with draws seeded by the batch's last position, so a
    resumed run repeats them.
    `bucket_batches` > 1 (with `data.pad_mode: none`) decodes that many batches' worth of
    samples as a pool, sorts it by clip length, cuts it into batches of similar lengths and
    yields them in an order drawn from (seed, epoch, rank, worker, the pool's first position):
    a batch cut to its longest clip then holds little padding. A resume inside a pool decodes
    the pool again and yields only its batches not yet consumed (the third resume number).

    Otherwise (`is_train=False`) each `iter()` is one pass over every sample, split over ranks
    and workers by `pass_share`, keeping the last partial batch unless `drop_last`. This is the
    evaluation stream; with `shuffle_buffer` > 1 the pass is shuffled (shard order per epoch,
    then a buffer), which is how fine-tuning runs its epochs. A decoder in training mode gets
    a generator per sample seeded by (seed, epoch, rank, worker, position) in either mode.
    `select`, when given, keeps the raw samples it returns True for (before decoding; a filter,
    not a skip: nothing is counted). Damage is counted in `decoder.skipped` by reason in both
    modes, and each batch carries the increments since the previous one as `skipped`.
    """

    def __init__(self, sources: Sequence[Sequence[str]], decoder: ClipDecoder, collate: Collate, batch_size: int, *,
                 is_train: bool, weights: Optional[Sequence[float]] = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 0, batches_per_worker: int = 0, num_workers: int = 0,
                 start_epoch: int = 0, resume: Optional[dict] = None, name: str = "the shards",
                 augment: Optional[Any] = None, select: Optional[Callable[[dict[str, Any]], bool]] = None,
                 drop_last: bool = False, bucket_batches: int = 0) -> None:
        self.sources = [list(urls) for urls in sources]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.sources)
        self.decoder, self.collate, self.batch_size = decoder, collate, batch_size
        self.is_train, self.seed, self.rank, self.world_size = is_train, seed, rank, world_size
        self.shuffle_buffer, self.batches_per_worker = shuffle_buffer, batches_per_worker
        self.num_workers, self.epoch, self.resume, self.name = max(1, num_workers), start_epoch, resume, name
        self.augment = augment if augment is not None and augment.is_active else None  # a WaveAugment (training)
        self.select, self.drop_last, self.bucket_batches = select, drop_last, bucket_batches

    def __len__(self) -> int:
        if not self.is_train:
            raise TypeError("an evaluation stream has no length known in advance")
        return self.batches_per_worker * self.num_workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.epoch += 1
        if self.is_train:
            return self._train_batches(self.epoch - 1, worker)
        return self._pass_batches(self.epoch - 1, worker, workers)

    def _train_batches(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        if self.bucket_batches > 1:
            return self._bucketed_batches(epoch, worker)
        return self._plain_batches(epoch, worker)

    def _resume_at(self, epoch: int, worker: int) -> tuple[int, int, int]:
        """(batches done, first stream position to decode, batches of that position's pool done)."""
        if self.resume is not None and self.resume["epoch"] == epoch and worker < len(self.resume["workers"]):
            done, start, *in_pool = self.resume["workers"][worker]
            return done, start, (in_pool[0] if in_pool else 0)
        return 0, 0, 0

    def _plain_batches(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        done, start, _ = self._resume_at(epoch, worker)
        seed = (self.seed, epoch, self.rank, worker)
        skipped = self.decoder.skipped
        guard = FailureGuard(self.name)
        reported, samples = Counter(skipped), []
        if done >= self.batches_per_worker:
            return
        audio = self._audio_buffer()
        for position, raw in mixed_stream(self.sources, self.weights, seed, self.shuffle_buffer, skipped, guard):
            if position < start:  # fast-forward on resume: seen before the checkpoint, not decoded again
                continue
            sample = self.decoder.decode_into(audio[len(samples)], raw, np.random.default_rng([*seed, position]))
            if sample is None:
                guard.fail(skipped)
                continue
            guard.ok()
            if self.augment is not None:  # seeded by the position, as the crop: a resumed run repeats it
                self.augment.augment_clip(sample["audio"], np.random.default_rng([*seed, position, AUGMENT_STREAM]),
                                          sample["length"])
            samples.append(sample)
            if len(samples) == self.batch_size:
                done += 1
                if self.augment is not None:
                    self.augment.mix_batch(samples, np.random.default_rng([*seed, position, MIXUP_STREAM]))
                batch = self.collate(samples)
                batch["stream"] = {"epoch": epoch, "worker": worker, "batches": done, "position": position + 1}
                batch["skipped"], reported, samples = dict(skipped - reported), Counter(skipped), []
                yield batch
                if done >= self.batches_per_worker:
                    return
                audio = self._audio_buffer()  # the batch yielded keeps its own

    def _bucketed_batches(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        """Training batches cut from pools of `bucket_batches` batches sorted by clip length."""
        done, start, in_pool = self._resume_at(epoch, worker)
        seed = (self.seed, epoch, self.rank, worker)
        skipped = self.decoder.skipped
        guard = FailureGuard(self.name)
        reported = Counter(skipped)
        stream = mixed_stream(self.sources, self.weights, seed, self.shuffle_buffer, skipped, guard)
        while done < self.batches_per_worker:
            pool_batches = min(self.bucket_batches, self.batches_per_worker - done + in_pool)
            pool_start, end, samples = self._decode_pool(stream, seed, start, pool_batches * self.batch_size, guard)
            if in_pool:  # a resume inside this pool: its skips were reported before the checkpoint
                reported = Counter(skipped)
            order = sorted(range(len(samples)), key=lambda i: samples[i]["length"])  # stable: ties by position
            cuts = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(pool_batches)]
            for index in np.random.default_rng([*seed, pool_start, BUCKET_STREAM]).permutation(pool_batches)[in_pool:]:
                in_pool += 1
                done += 1
                batch_samples = self._into_batch_buffer([samples[i] for i in cuts[index]])
                if self.augment is not None:
                    self.augment.mix_batch(batch_samples,
                                           np.random.default_rng([*seed, pool_start, int(index), MIXUP_STREAM]))
                batch = self.collate(batch_samples)
                last = in_pool == pool_batches  # a checkpoint after the pool's last batch resumes after the pool
                batch["stream"] = {"epoch": epoch, "worker": worker, "batches": done,
                                   "position": end if last else pool_start, "pool": 0 if last else in_pool}
                batch["skipped"], reported = dict(skipped - reported), Counter(skipped)
                yield batch
            start, in_pool = end, 0

    def _decode_pool(self, stream: Iterator[tuple[int, dict]], seed: tuple, start: int, size: int,
                     guard: FailureGuard) -> tuple[int, int, list[dict[str, Any]]]:
        """(first position, position after the last, `size` decoded samples) from `stream`, skipping
        positions before `start`.

        Each clip is decoded (and augmented) in one full-length scratch row, then only its `length`
        real samples are kept: the pool then holds the audio it was given, not `size` rows of
        `clip_samples` (a pool of 8 batches of 96 10-s 48-kHz rows would be 1.5 GB per worker).
        """
        scratch = torch.empty(self.decoder.clip_shape)
        samples: list[dict[str, Any]] = []
        first = None
        for position, raw in stream:
            if position < start:
                continue
            first = position if first is None else first
            sample = self.decoder.decode_into(scratch, raw, np.random.default_rng([*seed, position]))
            if sample is None:
                guard.fail(self.decoder.skipped)
                continue
            guard.ok()
            if self.augment is not None:  # on the full row: its draws depend on the row's length
                self.augment.augment_clip(sample["audio"], np.random.default_rng([*seed, position, AUGMENT_STREAM]),
                                          sample["length"])
            key = self.decoder.output_key
            samples.append({**sample, key: sample[key][:sample["length"]].clone()})
            if len(samples) == size:
                return first, position + 1, samples
        raise DataError(f"{self.name}: the training stream ended inside a pool of {size} samples")

    def _into_batch_buffer(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The samples with their clips copied into consecutive rows of a fresh transfer buffer,
        each row's tail past the clip filled with the decoder's padding."""
        key = self.decoder.output_key
        rows = transfer_buffer((len(samples), *self.decoder.clip_shape))
        for row, sample in zip(rows, samples):
            clip = sample[key]
            row[:len(clip)].copy_(clip)
            row[len(clip):].fill_(self.decoder.pad_value)
        return [{**sample, key: row} for row, sample in zip(rows, samples)]

    def _audio_buffer(self) -> torch.Tensor:
        """The next batch's clips [batch, *clip shape]: each clip is decoded into its row
        (`ClipDecoder.decode_into`), and the collate's `stack_for_transfer` finds them stacked already."""
        return transfer_buffer((self.batch_size, *self.decoder.clip_shape))

    def _pass_batches(self, epoch: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        urls = [u for urls in self.sources for u in urls]
        seed = (self.seed, epoch, self.rank, worker)
        if self.shuffle_buffer > 1:  # the same shard order in every worker, so the shares stay a partition
            urls = [urls[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(urls))]
        urls, rank, world_size = pass_share(urls, self.rank, self.world_size, worker, workers)
        skipped = self.decoder.skipped
        raws: Iterator[dict[str, Any]] = single_pass(urls, skipped, rank, world_size)
        if self.select is not None:
            raws = (raw for raw in raws if self.select(raw))
        raws = shuffle_buffered(raws, self.shuffle_buffer, np.random.default_rng(seed))  # crops: [*seed, position]
        reported, samples, audio = Counter(skipped), [], self._audio_buffer()
        for position, raw in enumerate(raws):
            rng = np.random.default_rng([*seed, position]) if self.decoder.is_train else None
            sample = self.decoder.decode_into(audio[len(samples)], raw, rng)
            if sample is not None:
                samples.append(sample)
            if len(samples) == self.batch_size:
                batch = self.collate(samples)
                batch["skipped"], reported, samples = dict(skipped - reported), Counter(skipped), []
                yield batch
                audio = self._audio_buffer()
        if samples and not self.drop_last:
            batch = self.collate(samples)
            batch["skipped"], reported = dict(skipped - reported), Counter(skipped)
            yield batch
        if skipped - reported:  # damage met after the last batch (or with none): a tally for ClapLoader
            yield {TALLY: True, "skipped": dict(skipped - reported)}


TALLY = "skip_tally"  # marks a pass's last item when it holds only skip counts, no clips


class ClapLoader(DataLoader):
    """A DataLoader over a `ClapStream` that turns an empty pass into a one-line DataError.

    A DataError raised inside a worker comes back wrapped in a traceback; it is re-raised
    here with its own message only. In a single pass, a worker's skip counts made after its
    last batch come as a tally; they are added to a batch still held back (one batch of
    lookahead), so every skip reaches the consumer and no tally does.
    """

    def state_dict(self) -> dict[str, Any]:
        """Lightning's stateful-loader protocol: marks the loader as resumable mid-epoch.

        It is: the stream positions are saved by `ClapDataModule.state_dict` (which gathers
        every rank's) and replayed by its next `train_dataloader`. Without this method Lightning
        warns at every mid-epoch resume that the loader is "not resumable", which is wrong here.
        """
        return {"resumed_by": "ClapDataModule.state_dict"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore here: `ClapDataModule.load_state_dict` holds the positions."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.dataset
        count, held, tally = 0, None, Counter()
        try:
            for batch in super().__iter__():
                if batch.get(TALLY):
                    tally.update(batch["skipped"])
                    continue
                if stream.is_train:
                    count += 1
                    yield batch
                    continue
                if held is not None:
                    count += 1
                    yield held
                held, tally = _add_skips(batch, tally), Counter()
        except DataError as err:
            raise DataError(_own_message(str(err))) from None
        if held is not None:
            count += 1
            yield _add_skips(held, tally)
        if count == 0 and (not stream.is_train or stream.resume is None):
            why = "every sample or shard was skipped" + (" or filtered out" if stream.select is not None else "")
            raise DataError(f"no valid sample in {stream.name}: {why} ({format_skipped(tally)})")


def _add_skips(batch: dict[str, Any], skips: Counter) -> dict[str, Any]:
    batch["skipped"] = dict(Counter(batch.get("skipped", {})) + skips)
    return batch


def _own_message(text: str) -> str:
    """The original message of an exception re-raised from a loader worker."""
    marker = "DataError: "
    last = text.strip().splitlines()[-1] if text.strip() else text
    return last.split(marker, 1)[1] if marker in last else last
