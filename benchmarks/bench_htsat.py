"""Time our HTSAT against msclap 1.3.4's at the CLAP 2023 config: batch 8, 7-s clips, CPU.

msclap pins transformers<5, so it is not installed with this project. Give the benchmark a
folder holding the `msclap` and `torchlibrosa` packages, e.g.

    pip install --no-deps --target /tmp/msclap-lib msclap==1.3.4 torchlibrosa==0.1.0
    python benchmarks/bench_htsat.py --msclap-dir /tmp/msclap-lib

Only `msclap/models/htsat.py` (and its `config`, `pytorch_utils`) is loaded, without the
package's `__init__` (which needs transformers). torchlibrosa needs librosa only to build its
Hann window and mel matrix at construction; if librosa is not importable a stand-in supplies
those two from our front end (identical values; the timed forward is torchlibrosa's own).
Without the folder only our figures are printed. Nothing is asserted about speed.

`--malloc reuse` reruns the comparison with glibc's malloc told to keep freed memory
(`MALLOC_MMAP_MAX_=0`, `MALLOC_TRIM_THRESHOLD_` huge) instead of returning every large block to
the kernel. By default each tensor over 32 MB is a fresh mmap, and touching it page-faults
(about 15 ms per 50 MB on the 2-core development VM), so part of any speed-up is allocating
fewer large tensors; the `reuse` figures show what is left once allocation is cheap (as with
jemalloc, tcmalloc or a caching allocator). The setting is per process: both sides get it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from clap_lightning.encoders.htsat import MSCLAP_DERIVED_PREFIXES, HTSATConfig, HTSATEncoder


def install_librosa_stand_in() -> None:
    """Register a minimal `librosa` giving torchlibrosa its window and mel matrix."""
    from clap_lightning.audio.frontend import compute_mel_filters

    def get_window(window, n, fftbins=True):
        assert window == "hann" and fftbins
        return torch.hann_window(n, periodic=True, dtype=torch.float64).numpy()

    def mel(sr, n_fft, n_mels, fmin, fmax):
        return compute_mel_filters(sr, n_fft, n_mels, fmin, fmax).T.numpy()

    def pad_center(data, size):
        assert len(data) == size
        return data

    librosa = types.ModuleType("librosa")
    librosa.filters = types.SimpleNamespace(get_window=get_window, mel=mel)
    librosa.util = types.SimpleNamespace(pad_center=pad_center)
    sys.modules["librosa"] = librosa


def load_msclap_htsat(folder: Path) -> torch.nn.Module:
    """Build msclap's HTSAT_Swin_Transformer with its packaged config."""
    sys.path.append(str(folder))
    try:
        importlib.import_module("librosa")
    except ImportError:
        install_librosa_stand_in()
    # A stand-in parent package so the relative imports of msclap/models/htsat.py resolve
    # without running msclap/__init__.py.
    package = types.ModuleType("_msclap_models")
    package.__path__ = [str(folder / "msclap" / "models")]
    sys.modules["_msclap_models"] = package
    htsat = importlib.import_module("_msclap_models.htsat")
    return htsat.HTSAT_Swin_Transformer(config=htsat.config)


def make_steps(model: torch.nn.Module, embed, wave: torch.Tensor) -> dict:
    """The two timed steps: eval forward without grad, train forward + backward."""

    def forward():
        model.eval()
        with torch.no_grad():
            embed(model, wave)

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        embed(model, wave).square().mean().backward()

    return {"forward": forward, "fwd+bwd": forward_backward}


def synchronized(step, device: torch.device):
    """`step` that waits for the device's queued kernels before returning (timing on CUDA)."""
    if device.type != "cuda":
        return step

    def run():
        step()
        torch.cuda.synchronize(device)

    return run


def time_interleaved(implementations: dict, repeats: int) -> dict:
    """Seconds per step, {impl: {step: (min, median)}}; implementations alternate each repeat.

    Alternating keeps a load change on a shared machine from favouring one side.
    """
    times = {name: {step: [] for step in steps} for name, steps in implementations.items()}
    for step in ("forward", "fwd+bwd"):
        for steps in implementations.values():
            steps[step]()  # warm-up
        for _ in range(repeats):
            for name, steps in implementations.items():
                start = time.perf_counter()
                steps[step]()
                times[name][step].append(time.perf_counter() - start)
    return {
        name: {step: (min(t), statistics.median(t)) for step, t in by_step.items()}
        for name, by_step in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msclap-dir", type=Path, default=Path("/tmp/msclap-lib"),
                        help="folder holding the msclap and torchlibrosa packages")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=7.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu (the issue's target), or cuda")
    parser.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa",
                        help="our window attention: sdpa, or flex (FlexAttention; GPU for training)")
    parser.add_argument("--malloc", choices=("default", "reuse"), default="default",
                        help="reuse: keep freed memory in the process (see the module docstring)")
    args = parser.parse_args()
    if args.malloc == "reuse" and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        # glibc reads these once, at start-up: run this script again with them set.
        env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**46))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = HTSATConfig(attention=args.attention)
    wave = (0.1 * torch.randn(args.batch, int(args.seconds * cfg.sample_rate))).to(device)
    ours = HTSATEncoder(cfg)
    implementations = {}
    if (args.msclap_dir / "msclap" / "models" / "htsat.py").is_file():
        reference = load_msclap_htsat(args.msclap_dir)
        state = {k: v for k, v in reference.state_dict().items() if not k.startswith(MSCLAP_DERIVED_PREFIXES)}
        ours.load_state_dict(state)  # same weights, so both do the same work
        implementations["msclap 1.3.4"] = make_steps(reference.to(device), lambda m, x: m(x)["latent_output"], wave)
    else:
        print(f"note: no msclap under {args.msclap_dir}; printing ours only (see the module docstring)")
    implementations["clap-lightning"] = make_steps(ours.to(device), lambda m, x: m(x), wave)
    implementations = {name: {step: synchronized(fn, device) for step, fn in steps.items()}
                       for name, steps in implementations.items()}
    results = time_interleaved(implementations, args.repeats)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU threads"
    where += ", malloc keeping freed memory" if args.malloc == "reuse" else ""
    where += f", our attention {args.attention}"
    print(f"HTSAT msclap-2023 config, batch {args.batch} x {args.seconds:g} s @ {cfg.sample_rate} Hz, "
          f"{where}, torch {torch.__version__}; seconds per batch, min / median of {args.repeats}")

    def cell(pair: tuple[float, float], unit: str = "") -> str:
        return f"{pair[0]:.3f}{unit} / {pair[1]:.3f}{unit}"

    print(f"{'implementation':<16} {'forward (eval, no grad)':>24} {'fwd+bwd (train)':>24}")
    for name, res in results.items():
        print(f"{name:<16} {cell(res['forward']):>24} {cell(res['fwd+bwd']):>24}")
    if len(results) == 2:
        ref, our = results.values()
        speed = {step: (ref[step][0] / our[step][0], ref[step][1] / our[step][1]) for step in ("forward", "fwd+bwd")}
        print(f"{'speed-up':<16} {cell(speed['forward'], 'x'):>24} {cell(speed['fwd+bwd'], 'x'):>24}")


if __name__ == "__main__":
    main()
