"""Run a function on several CPU processes joined by a gloo process group, with a deadline.

Kept outside conftest.py so spawned children can import it by a unique module name.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def find_free_port() -> int:
    """Return a TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0) -> None:
    """Call ``fn(rank, world_size, *args)`` in `world_size` spawned processes over gloo.

    `fn` must be a module-level function (spawn pickles it by name). Results travel back
    through files the function writes. A child's exception is re-raised here; a run past
    `timeout_s` is terminated and raises TimeoutError.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the children; 2 shared cores
    context = mp.start_processes(
        _entry, args=(fn, world_size, find_free_port(), args), nprocs=world_size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=0.5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            raise TimeoutError(f"{world_size} ranks running {fn.__name__} did not finish within {timeout_s:.0f} s")
