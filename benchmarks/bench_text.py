"""Time a GPT2 text-encoder training step: per-batch padding (ours) against fixed 77-token padding (msclap).

msclap pads every caption to text_len = 77; we pad to the longest caption in the batch. On
captions of ~20 tokens the step (text encoder + projection, forward and backward) does ~4x less
work. Both variants run in the same process, interleaved, on the same weights and captions;
the embeddings are checked to agree (padding must not change them). Nothing is asserted
about speed.

    python benchmarks/bench_text.py                # GPT2 small (768 x 12), batch 32, 2 threads
    python benchmarks/bench_text.py --layers 2     # a quick run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clap_lightning.encoders.projection import Projection
from clap_lightning.encoders.registry import build_text_encoder
from clap_lightning.encoders.tokenizer import CaptionTokenizer, pad_batch

WORDS = ("a loud quiet high low pitched sine tone square wave bell chord noise white rising falling chirp pulse "
         "tremolo vibrato dog barks rain over hum soft short long someone plays beep clicks fast slow buzzing "
         "ringing sweep hiss rumble").split()


def make_captions(batch: int, tokenizer: CaptionTokenizer, target: int = 20) -> list[str]:
    """Captions of about `target` tokens (eos included), lengths varying by a few tokens."""
    gen = torch.Generator().manual_seed(0)
    captions = []
    for i in range(batch):
        want = target + (i % 7) - 3
        words = []
        while len(tokenizer([" ".join(words)])["input_ids"][0]) < want:
            words.append(WORDS[int(torch.randint(len(WORDS), (1,), generator=gen))])
        captions.append(" ".join(words))
    return captions


def pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Re-pad a per-batch-padded batch to a fixed length (msclap's padding='max_length')."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    padded = pad_batch(rows + [[pad_id] * length], pad_id)  # a dummy full-length row sets the width
    return {k: v[:-1] for k, v in padded.items()}


def step(encoder, projection, batch) -> torch.Tensor:
    emb = projection(encoder(batch["input_ids"], batch["attention_mask"]))
    emb.pow(2).mean().backward()
    return emb.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = CaptionTokenizer("builtin:tiny-bpe", max_length=77)
    encoder = build_text_encoder("gpt2", {"tokenizer": "builtin:tiny-bpe", "vocab_size": 50257, "n_layer": args.layers,
                                          "n_head": args.width // 64, "n_embd": args.width, "dropout": 0.0}).train()
    projection = Projection(args.width, 1024, dropout=0.0)
    dynamic = tokenizer(make_captions(args.batch, tokenizer))
    fixed = pad_to(dynamic, 77, tokenizer.pad_id)
    lengths = dynamic["attention_mask"].sum(1).float()
    print(f"GPT2 {args.layers} x {args.width}, batch {args.batch}, {args.threads} threads; caption tokens "
          f"mean {lengths.mean():.1f} (min {int(lengths.min())}, max {int(lengths.max())}); "
          f"widths: per-batch {dynamic['input_ids'].shape[1]}, fixed {fixed['input_ids'].shape[1]}")
    torch.testing.assert_close(step(encoder, projection, dynamic), step(encoder, projection, fixed),
                               atol=1e-4, rtol=1e-4)  # also the warm-up
    times = {"per-batch": [], "fixed-77": []}
    for _ in range(args.steps):  # interleaved, so load on the machine hits both alike
        for name, batch in (("per-batch", dynamic), ("fixed-77", fixed)):
            encoder.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step(encoder, projection, batch)
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    for name, value in median.items():
        print(f"{name:>10}: {value * 1000:8.1f} ms/step (median of {args.steps})")
    print(f"speed-up of per-batch padding: {median['fixed-77'] / median['per-batch']:.2f}x")


if __name__ == "__main__":
    main()
