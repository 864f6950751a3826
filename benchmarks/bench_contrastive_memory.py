"""Per-rank peak memory and time of the contrastive loss: global against local loss, W = 2, 4, 8.

Runs W gloo processes on this machine (one thread each), each holding b = 192 pairs of
D = 1024 embeddings (W = 8 is the paper's global batch of 1536), and measures one
forward + backward of `ContrastiveObjective` per mode, gather included:

- peak memory: the PyTorch profiler's allocator events (profile_memory=True), summed in
  time order; the peak is the most bytes of tensors alive at once above what existed
  before the step (gathered features, logits, softmax buffers, gradients). tracemalloc
  would miss these: it sees only Python's allocator, not ATen's. Exact, but CPU-only;
  a GPU rank would read torch.cuda.max_memory_allocated instead and see the same tensors.
- analytic logits: the fp32 logits one rank builds, (W*b)^2 in global mode and
  2 * b * W*b in local mode (both directions), which dominate as W grows.
- time: median wall and CPU (process) time of forward + backward. With W processes on
  few cores the wall time includes waiting for the others; CPU time is each rank's own
  work and is the figure to compare across W.

World sizes above --max-processes are not run; their row is computed from the analytic
formula and marked so. Asserts nothing.

    python benchmarks/bench_contrastive_memory.py [--world-sizes 2 4 8] [--local-batch 192]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.profiler import ProfilerActivity, profile

from clap_lightning.objectives import ContrastiveObjective

MODES = {"global": False, "local": True}


def measure_peak_bytes(step) -> int:
    """Return the most tensor bytes alive at once during `step()`, above those alive before it."""
    warnings.filterwarnings("ignore", message="Warning: Profiler clears events")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for frees
        peak = max(peak, live)
    return peak


def run_rank(rank: int, world_size: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(minutes=5)
    )
    generator = torch.Generator().manual_seed(rank)
    audio = torch.randn(args.local_batch, args.dim, generator=generator, requires_grad=True)
    text = torch.randn(args.local_batch, args.dim, generator=generator, requires_grad=True)
    logit_scale = torch.full((1,), 2.659, requires_grad=True)
    results = {}
    for mode, use_local_loss in MODES.items():
        objective = ContrastiveObjective(use_local_loss=use_local_loss)

        def step() -> None:
            objective(audio, text, logit_scale).loss.backward()
            audio.grad = text.grad = logit_scale.grad = None

        step()  # warm-up
        walls, cpus = [], []
        for _ in range(args.iters):
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        dist.barrier()
        results[mode] = {
            "peak_bytes": measure_peak_bytes(step),
            "wall_s": statistics.median(walls),
            "cpu_s": statistics.median(cpus),
        }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_world(world_size: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Spawn `world_size` ranks; return per mode the worst rank's figures."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(run_rank, args=(world_size, port, args, out_dir), nprocs=world_size, join=True)
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world_size)]
    return {mode: {key: max(r[mode][key] for r in ranks) for key in ranks[0][mode]} for mode in MODES}


def analytic_logits_bytes(world_size: int, local_batch: int, use_local_loss: bool) -> int:
    """Bytes of the fp32 logits one rank builds."""
    global_batch = world_size * local_batch
    return 4 * (2 * local_batch * global_batch if use_local_loss else global_batch**2)


def print_table(rows: list[tuple[int, str, dict | None]], args: argparse.Namespace) -> None:
    mib = 2**20
    print(f"per-rank contrastive loss, b={args.local_batch} pairs/rank, D={args.dim}, fp32, gloo, 1 thread/rank, "
          f"{os.cpu_count()} cores")
    header = f"{'W':>2} {'W*b':>5} {'mode':>6} {'logits MiB':>10} {'peak MiB':>9} {'wall ms':>8} {'cpu ms':>7}"
    print(header)
    print("-" * len(header))
    for world_size, mode, measured in rows:
        logits = analytic_logits_bytes(world_size, args.local_batch, MODES[mode]) / mib
        if measured is None:
            print(f"{world_size:>2} {world_size * args.local_batch:>5} {mode:>6} {logits:>10.1f} "
                  f"{'analytic':>9} {'-':>8} {'-':>7}")
            continue
        print(f"{world_size:>2} {world_size * args.local_batch:>5} {mode:>6} {logits:>10.1f} "
              f"{measured['peak_bytes'] / mib:>9.1f} {measured['wall_s'] * 1e3:>8.1f} {measured['cpu_s'] * 1e3:>7.1f}")
        if mode == "local":
            base = next(m for w, md, m in rows if w == world_size and md == "global")
            print(
                f"{'':>2} {'':>5} {'ratio':>6} "
                f"{logits / (analytic_logits_bytes(world_size, args.local_batch, False) / mib):>10.2f} "
                f"{measured['peak_bytes'] / base['peak_bytes']:>9.2f} {measured['wall_s'] / base['wall_s']:>8.2f} "
                f"{measured['cpu_s'] / base['cpu_s']:>7.2f}   (local / global)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--local-batch", type=int, default=192, help="pairs per rank")
    parser.add_argument("--dim", type=int, default=1024, help="embedding size")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per mode (median reported)")
    parser.add_argument("--max-processes", type=int, default=8, help="larger worlds are computed analytically")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for world_size in args.world_sizes:
        measured = run_world(world_size, args) if world_size <= args.max_processes else None
        for mode in MODES:
            rows.append((world_size, mode, measured[mode] if measured else None))
    print_table(rows, args)


if __name__ == "__main__":
    main()
