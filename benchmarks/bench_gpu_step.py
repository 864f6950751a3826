"""One GPU's CLAP 2023 training step (HTSAT + GPT2, 7 s at 44.1 kHz): fp32 against bf16 and checkpointing.

The step is what `clap-lightning fit` runs per batch on one device: both encoders forward,
the symmetric InfoNCE over the batch, backward, AdamW. Measured in one run, each variant
against the fp32 baseline on the same inputs:

- fp32: full precision, no activation checkpointing (the baseline);
- bf16: `torch.autocast(bfloat16)`, as `trainer.precision=bf16-mixed`;
- bf16 + ckpt: also activation checkpointing in both encoders (`use_checkpointing`).

Each variant's FLOPs are counted once on its real step with `FlopCounterMode`, and TFLOP/s and
MFU are printed against the device's dense peak for the variant's dtype, looked up from the
device name (H100/H200/A100) or given with `--peak-tflops`: the same accounting as the live
monitor of `clap-lightning fit` (`clap_lightning/flops.py`).

Then the FLOPs per pair by component (audio tower, text tower, loss, optimizer), each counted
on its own forward + backward, beside the whole step's count. Also printed, as checks of the
switches on this device: the bf16 loss against the fp32
loss on the same weights, and the largest gradient difference that checkpointing makes
(it recomputes the same kernels, so it should be at float rounding).

Usage: `python benchmarks/bench_gpu_step.py [--batch 96] [--steps 10] [--peak-tflops T]` (`--device cpu` for a
smoke run; MFU needs `--peak-tflops` there).
Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from clap_lightning.convert.msclap import load_model_config
from clap_lightning.flops import achieved_tflops, count_flops, device_peak_tflops
from clap_lightning.models.clap import CLAP
from clap_lightning.objectives.contrastive import compute_logits, symmetric_infonce


def build(checkpointing: bool, device: torch.device) -> CLAP:
    config = load_model_config("msclap_2023").model
    config.audio_encoder["use_checkpointing"] = checkpointing
    config.text_encoder["use_checkpointing"] = checkpointing
    torch.manual_seed(0)
    return CLAP(config).to(device)


def loss_of(model: CLAP, batch: dict, bf16: bool) -> torch.Tensor:
    with torch.autocast(batch["audio"].device.type, dtype=torch.bfloat16, enabled=bf16):
        audio, text, scale = model(batch["audio"], batch["input_ids"], batch["attention_mask"])
        logits = compute_logits(audio, text, scale)
        return symmetric_infonce(logits, torch.arange(len(logits), device=logits.device))


def time_steps(model: CLAP, batch: dict, bf16: bool, steps: int) -> tuple[float, float, int, float]:
    """(pairs/s, peak GiB, FLOPs of one step, seconds) over `steps` optimizer steps after two warm-up steps.

    The second warm-up step runs under the FLOP counter: the first may build state (AdamW's moments).
    """
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    model.train()

    def step():
        optim.zero_grad(set_to_none=True)
        loss_of(model, batch, bf16).backward()
        optim.step()

    cuda = batch["audio"].is_cuda
    step()
    with count_flops() as flops:
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return steps * len(batch["audio"]) / seconds, peak_gib, flops.total, seconds / steps


def component_flops(model: CLAP, batch: dict, bf16: bool) -> dict[str, int]:
    """FLOPs of one training step by component, each forward + backward counted on its own.

    FlopCounterMode's per-module attribution of backward FLOPs is unreliable (it charges them to
    whichever module hook fired last), so each component runs separately on the real batch: the
    audio tower (encoder + projection), the text tower, the loss (from leaf embeddings) and the
    optimizer step (AdamW is element-wise: 0 counted FLOPs, as usual for MFU).
    """
    model.train()
    counts = {}
    with torch.autocast(batch["audio"].device.type, dtype=torch.bfloat16, enabled=bf16):
        with count_flops() as flops:
            audio = model.encode_audio(batch["audio"])
            audio.backward(torch.ones_like(audio))
        counts["audio encoder + projection"] = flops.total
        with count_flops() as flops:
            text = model.encode_text(batch["input_ids"], batch["attention_mask"])
            text.backward(torch.ones_like(text))
        counts["text encoder + projection"] = flops.total
        audio, text = audio.detach().requires_grad_(), text.detach().requires_grad_()
        with count_flops() as flops:
            logits = compute_logits(audio, text, model.logit_scale)
            symmetric_infonce(logits, torch.arange(len(logits), device=logits.device)).backward()
        counts["contrastive loss"] = flops.total
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5)
    with count_flops() as flops:
        optim.step()
    counts["optimizer (AdamW)"] = flops.total
    model.zero_grad(set_to_none=True)
    return counts


def gradients(model: CLAP, batch: dict, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.eval()  # no dropout, no SpecAugment: the two runs must see the same function
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, batch, bf16)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=96, help="pairs per GPU (1536 over 16 GPUs is 96)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=24, help="caption length in tokens")
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu for a smoke run")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="one device's peak TFLOP/s for MFU (default: looked up from the GPU's name)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu for a smoke run")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    model = build(False, device)
    samples = int(model.config.sample_rate * model.config.clip_seconds)
    batch = {
        "audio": (0.1 * torch.randn(args.batch, samples, generator=generator)).to(device),
        "input_ids": torch.randint(0, 50000, (args.batch, args.tokens), generator=generator).to(device),
        "attention_mask": torch.ones(args.batch, args.tokens, dtype=torch.long).to(device),
    }

    fp32_loss, fp32_grads = gradients(model, batch, bf16=False)
    bf16_loss, _ = gradients(model, batch, bf16=True)
    _, plain = gradients(model, batch, bf16=True)
    checkpointed = build(True, device)
    checkpointed.load_state_dict(model.state_dict())
    _, ckpt = gradients(checkpointed, batch, bf16=True)
    ckpt_diff = max((plain[n] - ckpt[n]).abs().max().item() for n in plain)
    grad_scale = max(g.abs().max().item() for g in plain.values())
    del fp32_grads, plain, ckpt

    rows = []
    for name, net, bf16 in (("fp32", model, False), ("bf16", copy.deepcopy(model), True),
                            ("bf16 + ckpt", checkpointed, True)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        peak = device_peak_tflops(device, "bf16-mixed" if bf16 else "32-true", args.peak_tflops)
        rows.append((name, peak, *time_steps(net, batch, bf16, args.steps)))
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"CLAP 2023 (HTSAT + GPT2) train step on {where}, batch {args.batch} x "
          f"{model.config.clip_seconds:g} s @ {model.config.sample_rate} Hz, {args.tokens}-token captions, "
          f"AdamW, torch {torch.__version__}; {args.steps} steps after 2 warm-up; "
          f"FLOPs counted by FlopCounterMode, MFU against the dense peak of the variant's dtype")
    print(f"{'variant':<12} {'pairs/s':>9} {'vs fp32':>8} {'peak GiB':>9} {'vs fp32':>8} {'GFLOP/pair':>11} "
          f"{'TFLOP/s':>8} {'MFU':>7}")
    base_rate, base_mem = rows[0][2], rows[0][3]
    for name, peak, rate, mem, flops, step_seconds in rows:
        tflops = achieved_tflops(flops, step_seconds)
        mfu = f"{tflops / peak:7.1%}" if peak else f"{'n/a':>7}"
        print(f"{name:<12} {rate:9.1f} {rate / base_rate:7.2f}x {mem:9.2f} {mem / base_mem:7.2f}x "
              f"{flops / args.batch / 1e9:11.2f} {tflops:8.3g} {mfu}")
    split = component_flops(copy.deepcopy(model), batch, bf16=True)
    step_flops = rows[1][4]  # the bf16 step, counted whole
    print(f"FLOPs per pair by component (bf16, forward + backward, each counted on its own; the whole step: "
          f"{step_flops / args.batch / 1e9:.2f} GFLOP/pair, the parts sum to {sum(split.values()) / step_flops:.1%}):")
    for name, count in split.items():
        print(f"  {name:<28} {count / args.batch / 1e9:9.2f} GFLOP/pair {count / step_flops:7.1%}")
    print(f"checks: loss fp32 {fp32_loss:.5f} vs bf16 {bf16_loss:.5f} (|diff| {abs(fp32_loss - bf16_loss):.2e}); "
          f"checkpointing changes bf16 gradients by at most {ckpt_diff:.2e} (largest gradient {grad_scale:.2e})")


if __name__ == "__main__":
    main()
