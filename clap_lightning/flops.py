"""FLOPs of a training step and the device peak they are measured against (MFU).

One accounting for the live monitor of every fit (`lit/monitor.py`) and for
`benchmarks/bench_gpu_step.py`: the FLOPs are counted by torch's `FlopCounterMode` on the
real step (matrix multiplies, convolutions and attention; the STFT and element-wise ops are
not counted, as usual for MFU), and the peak is the device's dense tensor-core figure for the
step's compute dtype, looked up from the device name, or given.

MFU = achieved FLOP/s per device / peak FLOP/s per device. The counted step includes
whatever the step runs, so activation checkpointing's recomputed forward counts too.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peak TFLOP/s of one device by compute dtype: half the "with sparsity" figures of NVIDIA's
# datasheets (H200: 1,979 bf16 with sparsity -> 989.4 dense; H100 NVL and H200 NVL: 1,671 -> 835.5;
# A100 datasheet: 312 bf16, 156 tf32, 19.5 fp32). Checked in order: the first name part found in the
# device name wins, so the NVL and PCIe variants come before the plain name.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h200 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("h200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("h100 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("h100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


@dataclass
class FlopCount:
    """FLOPs counted while a `count_flops()` block ran."""

    total: int = 0  # every counted op
    per_module: dict[str, int] = field(default_factory=dict)  # module path (as FlopCounterMode names it) -> FLOPs


@contextmanager
def count_flops() -> Iterator[FlopCount]:
    """Count the FLOPs of everything run inside the block (forward, backward, optimizer step).

    The returned `FlopCount` is filled when the block exits.
    """
    result = FlopCount()
    counter = FlopCounterMode(display=False)
    with counter:
        yield result
    result.total = counter.get_total_flops()
    result.per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}


def compute_dtype(precision: str) -> Optional[str]:
    """The matmul dtype of a Lightning precision setting: bf16, fp16, tf32 or fp32 (None: unknown)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    if precision.startswith("32"):
        # torch.backends.cuda.matmul.allow_tf32 is the same switch as a matmul precision below "highest".
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return None


def lookup_peak_tflops(device_name: str, dtype: Optional[str]) -> Optional[float]:
    """Dense peak TFLOP/s of a device named like `torch.cuda.get_device_name()`, or None if not in the table."""
    name = " ".join(device_name.lower().replace("-", " ").split())
    for part, peaks in PEAK_TFLOPS:
        if part in name:
            return peaks.get(dtype) if dtype else None
    return None


def device_peak_tflops(device: torch.device, precision: str, configured: float = 0.0) -> Optional[float]:
    """The peak to compute MFU against: `configured` if > 0, else the GPU's from its name; None on CPU."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    return lookup_peak_tflops(torch.cuda.get_device_name(device), compute_dtype(precision))


def achieved_tflops(flops: float, seconds: float) -> float:
    """TFLOP/s of `flops` done in `seconds`."""
    return flops / seconds / 1e12
