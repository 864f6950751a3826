"""One GPU's CLAP 2023 training step (HTSAT + GPT2, 7 s at 44.1 kHz): fp32, bf16 and the speed switches.

The step is what `clap-lightning fit` runs per batch on one device: both encoders forward,
the symmetric InfoNCE over the batch, backward, AdamW (`build_optimizer`, as `fit` builds it:
decay groups, foreach unless fused). Measured in one run, each variant on the same inputs:

- fp32: full precision, no activation checkpointing (the baseline);
- bf16: `torch.autocast(bfloat16)`, as `trainer.precision=bf16-mixed`;
- bf16 + ckpt: also activation checkpointing in both encoders (`use_checkpointing`);
- bf16 + compile: both encoders under `torch.compile` (`model.compile: true`);
- bf16 + flex: HTSAT window attention in FlexAttention (`model.audio_encoder.attention: flex`);
- bf16 + flex + compile: both;
- bf16 + fused AdamW: `optim.fused: true`;
- bf16 + all: flex, compile and fused AdamW.

A variant that fails (e.g. FlexAttention, which has no CPU backward) prints one line and the
others still run; each row is printed (flushed) as it is measured, so a run cut short by a time
limit keeps the rows it finished. Figures before the switches were added (docs/benchmarks.md) used fused AdamW
in every row; now only the fused rows do, as in `fit`.

FLOPs are counted once per eager variant on its real step with `FlopCounterMode`; the compiled,
flex and fused variants compute the same function as bf16, so they are credited with its count
(checkpointing's recompute is counted in its own row). TFLOP/s and MFU are printed against the
device's dense peak for the variant's dtype, looked up from the device name (H100/H200/A100) or
given with `--peak-tflops`: the same accounting as the live monitor of `clap-lightning fit`
(`clap_lightning/flops.py`).

Then the FLOPs per pair by component (audio tower, text tower, loss, optimizer), each counted
on its own forward + backward, beside the whole step's count. Printed first, as checks of the
switches on this device: the bf16 loss against the fp32 loss on the same weights, and the
largest gradient differences that checkpointing and FlexAttention make (the same function, so
they should be at bf16 rounding). `--profile` prints the fastest variant's top-15 CUDA kernels
by self time (torch.profiler; CPU ops on `--device cpu`).

Usage: `python benchmarks/bench_gpu_step.py [--batch 96] [--steps 10] [--peak-tflops T] [--profile]`;
`--device cpu --model-config tiny --batch 2 --steps 1` is a smoke run of the whole script (MFU
needs `--peak-tflops` there). Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from typing import Optional

import torch

from clap_lightning.config import OptimConfig
from clap_lightning.convert.msclap import load_model_config
from clap_lightning.flops import achieved_tflops, count_flops, device_peak_tflops
from clap_lightning.lit.optim import build_optimizer
from clap_lightning.models.clap import CLAP, compile_encoders
from clap_lightning.objectives.contrastive import compute_logits, symmetric_infonce


@dataclass(frozen=True)
class Variant:
    """One row: precision and the switches, as their config options set them."""

    name: str
    bf16: bool = True
    checkpointing: bool = False
    compile: bool = False
    flex: bool = False
    fused: bool = False


VARIANTS = (
    Variant("fp32", bf16=False), Variant("bf16"), Variant("bf16 + ckpt", checkpointing=True),
    Variant("bf16 + compile", compile=True), Variant("bf16 + flex", flex=True),
    Variant("bf16 + flex + compile", flex=True, compile=True), Variant("bf16 + fused AdamW", fused=True),
    Variant("bf16 + all", flex=True, compile=True, fused=True),
)


def build(model_config: str, device: torch.device, checkpointing: bool = False, flex: bool = False) -> CLAP:
    config = load_model_config(model_config).model
    config.audio_encoder["use_checkpointing"] = checkpointing
    config.text_encoder["use_checkpointing"] = checkpointing
    config.audio_encoder["attention"] = "flex" if flex else "sdpa"
    torch.manual_seed(0)
    return CLAP(config).to(device)


def build_variant(variant: Variant, model_config: str, state: dict, device: torch.device) -> CLAP:
    """A fresh model with the shared weights and the variant's switches (compiled in place, as `fit`)."""
    model = build(model_config, device, variant.checkpointing, variant.flex)
    model.load_state_dict(state)
    return compile_encoders(model) if variant.compile else model


def loss_of(model: CLAP, batch: dict, bf16: bool) -> torch.Tensor:
    with torch.autocast(batch["audio"].device.type, dtype=torch.bfloat16, enabled=bf16):
        audio, text, scale = model(batch["audio"], batch["input_ids"], batch["attention_mask"])
        logits = compute_logits(audio, text, scale)
        return symmetric_infonce(logits, torch.arange(len(logits), device=logits.device))


def make_step(model: CLAP, batch: dict, bf16: bool, fused: bool):
    """One optimizer step as `fit` runs it: no `.item()` or other host sync inside."""
    optim = build_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=0, fused=fused), total_steps=10**6)
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch, bf16).backward()
        optimizer.step()
        scheduler.step()
    return step


def time_steps(model: CLAP, batch: dict, variant: Variant, steps: int) -> tuple[float, float, Optional[int], float]:
    """(pairs/s, peak GiB, FLOPs of one step or None, seconds) over `steps` optimizer steps after warm-up.

    Warm-up is two steps (three when compiled: the first compiles, the second may recompile).
    Eager variants run their second under the FLOP counter: the first may build AdamW's moments.
    """
    step = make_step(model, batch, variant.bf16, variant.fused)
    cuda = batch["audio"].is_cuda
    for _ in range(2 if variant.compile else 1):
        step()
    counted = not (variant.compile or variant.flex or variant.fused)
    with count_flops() if counted else _nothing() as flops:
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
    return steps * len(batch["audio"]) / seconds, peak_gib, flops.total if counted else None, seconds / steps


class _nothing:
    """A context manager that counts nothing (compiled or non-counted variants)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def profile_step(model: CLAP, batch: dict, variant: Variant, top: int = 15) -> None:
    """Print the top kernels by self time over two profiled steps, each with its share of the total."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step = make_step(model, batch, variant.bf16, variant.fused)
    for _ in range(3):
        step()
    cuda = batch["audio"].is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        times = {e.key: e.self_device_time_total for e in kernels or events}
    else:
        times = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.self_cpu_time_total > 0}
    total = sum(times.values())
    kind = "CUDA kernels" if cuda else "CPU ops"
    print(f"profile of {variant.name}: top {top} {kind} by self time over 2 steps (total {total / 1e3:.1f} ms)")
    for key, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {us / total:6.1%} {us / 1e3:9.2f} ms  {key[:110]}")


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
    """(loss, gradients) of one eval-mode step: the function without dropout or SpecAugment."""
    model.eval()  # no dropout, no SpecAugment: the two runs must see the same function
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, batch, bf16)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=96, help="pairs per GPU (1536 over 16 GPUs is 96)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=24, help="caption length in tokens")
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu for a smoke run")
    parser.add_argument("--model-config", default="msclap_2023", help="model YAML: a name in configs/model or a path")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="one device's peak TFLOP/s for MFU (default: looked up from the GPU's name)")
    parser.add_argument("--profile", action="store_true", help="top-15 kernels by self time of the fastest variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu for a smoke run")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    model = build(args.model_config, device)
    state = model.state_dict()
    samples = int(model.config.sample_rate * model.config.clip_seconds)
    vocab = next(m for m in model.text_encoder.modules() if isinstance(m, torch.nn.Embedding)).num_embeddings
    batch = {
        "audio": (0.1 * torch.randn(args.batch, samples, generator=generator)).to(device),
        "input_ids": torch.randint(0, vocab, (args.batch, args.tokens), generator=generator).to(device),
        "attention_mask": torch.ones(args.batch, args.tokens, dtype=torch.long).to(device),
    }
    checks = run_checks(model, state, batch, args.model_config, device)

    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"CLAP ({args.model_config}) train step on {where}, batch {args.batch} x "
          f"{model.config.clip_seconds:g} s @ {model.config.sample_rate} Hz, {args.tokens}-token captions, "
          f"AdamW, torch {torch.__version__}; {args.steps} steps after warm-up; "
          f"FLOPs counted by FlopCounterMode, MFU against the dense peak of the variant's dtype", flush=True)
    print(checks, flush=True)
    print_header()
    rows = []
    for variant in VARIANTS:  # each row printed as it is measured: a run cut short keeps its rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            net = model if variant.name == "fp32" else build_variant(variant, args.model_config, state, device)
            peak = device_peak_tflops(device, "bf16-mixed" if variant.bf16 else "32-true", args.peak_tflops)
            rows.append((variant, peak, *time_steps(net, batch, variant, args.steps)))
        except Exception as error:  # one line per failed variant; the others still run
            rows.append((variant, one_line(error)))
        finally:
            net = None
        print_row(rows[-1], rows, args.batch)
    rows = [row for row in rows if len(row) > 2]  # the ones that ran
    split = component_flops(copy.deepcopy(model), batch, bf16=True)
    bf16_row = next((row for row in rows if row[0].name == "bf16"), None)
    if bf16_row is not None:
        step_flops = bf16_row[4]  # the bf16 step, counted whole
        print(f"FLOPs per pair by component (bf16, forward + backward, each counted on its own; the whole step: "
              f"{step_flops / args.batch / 1e9:.2f} GFLOP/pair, the parts sum to "
              f"{sum(split.values()) / step_flops:.1%}):")
        for name, count in split.items():
            print(f"  {name:<28} {count / args.batch / 1e9:9.2f} GFLOP/pair {count / step_flops:7.1%}")
    if args.profile and rows:
        fastest = max(rows, key=lambda row: row[2])[0]
        try:
            profile_step(build_variant(fastest, args.model_config, state, device), batch, fastest)
        except Exception as error:
            print(f"profile of {fastest.name}: failed: {one_line(error)}")


def run_checks(model: CLAP, state: dict, batch: dict, model_config: str, device: torch.device) -> str:
    """The correctness checks as one line, run first (on fresh memory)."""
    fp32_loss, fp32_grads = gradients(model, batch, bf16=False)
    bf16_loss, plain = gradients(model, batch, bf16=True)
    del fp32_grads
    grad_scale = max(g.abs().max().item() for g in plain.values())
    line = (f"checks: loss fp32 {fp32_loss:.5f} vs bf16 {bf16_loss:.5f} (|diff| {abs(fp32_loss - bf16_loss):.2e}); "
            f"largest bf16 gradient {grad_scale:.2e}")
    for name, options in (("checkpointing", dict(checkpointing=True)), ("flex attention", dict(flex=True))):
        try:
            other = build(model_config, device, **options)
            other.load_state_dict(state)
            diff = max_difference(plain, gradients(other, batch, True)[1])
            line += f"; {name} changes bf16 gradients by at most {diff:.2e}"
        except Exception as error:
            line += f"; {name} check failed: {one_line(error)}"
    model.zero_grad(set_to_none=True)
    return line


def ratio(value: float, base: float) -> str:
    """`value / base` in the table's 8 columns; n/a where the base row has not run (fp32 before bf16)."""
    return f"{value / base:7.2f}x" if base == base else f"{'n/a':>8}"


def print_header() -> None:
    print(f"{'variant':<22} {'pairs/s':>9} {'vs fp32':>8} {'vs bf16':>8} {'peak GiB':>9} {'vs fp32':>8} "
          f"{'GFLOP/pair':>11} {'TFLOP/s':>8} {'MFU':>7}", flush=True)


def print_row(row: tuple, rows: list, batch: int) -> None:
    """One variant against fp32 and against bf16 eager (rows measured so far); a failed one as its error."""
    if len(row) == 2:
        print(f"{row[0].name:<22} failed: {row[1]}", flush=True)
        return
    by_name = {r[0].name: r for r in rows if len(r) > 2}
    base_rate, base_mem = (by_name["fp32"][2], by_name["fp32"][3]) if "fp32" in by_name else (float("nan"),) * 2
    bf16_rate = by_name["bf16"][2] if "bf16" in by_name else float("nan")
    bf16_flops = by_name["bf16"][4] if "bf16" in by_name else None
    variant, peak, rate, mem, flops, step_seconds = row
    flops = flops if flops is not None else bf16_flops  # same function as bf16 (see the module docstring)
    tflops = achieved_tflops(flops, step_seconds) if flops else float("nan")
    mfu = f"{tflops / peak:7.1%}" if peak and flops else f"{'n/a':>7}"
    gflop = f"{flops / batch / 1e9:11.2f}" if flops else f"{'n/a':>11}"
    memory = f"{mem:9.2f} {mem / base_mem:7.2f}x" if mem == mem else f"{'n/a':>9} {'n/a':>8}"  # nan on CPU
    print(f"{variant.name:<22} {rate:9.1f} {ratio(rate, base_rate)} {ratio(rate, bf16_rate)} {memory} "
          f"{gflop} {tflops:8.3g} {mfu}", flush=True)

if __name__ == "__main__":
    main()
