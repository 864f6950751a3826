"""FLOP counting and device peaks (flops.py) and the live training monitor (lit/monitor.py)."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from clap_lightning.flops import compute_dtype, count_flops, device_peak_tflops, lookup_peak_tflops
from clap_lightning.lit.monitor import FETCH_ACTION, LoaderWaitTimer, TrainingMonitor, count_batch_samples


# --- flops.py ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H200", "bf16-mixed", 989.4),
    ("NVIDIA H200 NVL", "bf16-mixed", 835.5),
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4),
    ("NVIDIA H100 PCIe", "16-mixed", 756.0),
    ("NVIDIA H100 NVL", "bf16-true", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312.0),
    ("NVIDIA A100 80GB PCIe", "32-true", 19.5),
    ("Tesla T4", "bf16-mixed", None),
    ("NVIDIA H200", "64-true", None),
])
def test_peak_is_looked_up_by_device_name_and_compute_dtype(name, precision, peak):
    assert lookup_peak_tflops(name, compute_dtype(precision)) == peak


def test_fp32_matmuls_count_against_the_tf32_peak_when_tf32_is_allowed():
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert compute_dtype("32-true") == "tf32"
        assert lookup_peak_tflops("NVIDIA H200", "tf32") == 494.7
    finally:
        torch.set_float32_matmul_precision(previous)
    assert compute_dtype("32-true") == ("fp32" if previous == "highest" else "tf32")


def test_cpu_has_no_peak_unless_one_is_configured():
    assert device_peak_tflops(torch.device("cpu"), "32-true") is None
    assert device_peak_tflops(torch.device("cpu"), "32-true", configured=2.5) == 2.5


def test_count_flops_counts_forward_backward_and_per_module():
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16, requires_grad=True)
    with count_flops() as forward:
        layer(x)
    assert forward.total == 2 * 4 * 16 * 8
    with count_flops() as step:
        layer(x).sum().backward()
    assert step.total == 3 * forward.total  # forward + gradient of the input + gradient of the weight
    assert step.per_module["Global"] == step.total


# --- monitor -----------------------------------------------------------------------------------------------------

def test_loader_wait_timer_adds_up_only_batch_fetches():
    timer = LoaderWaitTimer()
    timer.start("[Callback]x.on_train_batch_start")
    timer.stop("[Callback]x.on_train_batch_start")
    assert timer.take() == 0.0
    timer.start(f"[_TrainingEpochLoop].{FETCH_ACTION}")
    timer.stop(f"[_TrainingEpochLoop].{FETCH_ACTION}")
    waited = timer.take()
    assert waited > 0 and timer.take() == 0.0


def test_batch_samples_come_from_the_audio_tensor():
    assert count_batch_samples({"input_ids": torch.zeros(3, 5), "audio": torch.zeros(7, 100)}) == 7
    assert count_batch_samples({"audio_emb": torch.zeros(4, 8), "tokens": torch.zeros(4, 2)}) == 4
    assert count_batch_samples([torch.zeros(6, 2), torch.zeros(6)]) == 6


class LinearModule(L.LightningModule):
    """A linear regression whose step is the same every time, so its FLOPs are known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 16)
        self.norms: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.flatten() for p in self.parameters()]
        self.norms[self.trainer.global_step] = torch.cat(grads).norm().item()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_monitor_logs_rates_flops_and_grad_norm_once_per_logging_interval(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(96, 32), torch.randn(96, 16))
    module = LinearModule()
    monitor = TrainingMonitor(peak_tflops=1.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=12, accumulate_grad_batches=2, log_every_n_steps=4,
                        logger=CSVLogger(tmp_path, name="logs"), callbacks=[monitor], profiler=monitor.loader_wait,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=4))

    reference = LinearModule()
    with count_flops() as step:  # one micro-batch: forward, loss, backward (SGD's update is not a counted op)
        torch.nn.functional.mse_loss(reference.layer(data.tensors[0][:4]), data.tensors[1][:4]).backward()
    assert monitor.flops_per_batch == step.total

    rows = list(csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")))
    logged = [row for row in rows if row.get("perf/pairs_per_s")]
    assert [int(row["step"]) for row in logged] == [3, 7, 11]  # every 4th optimizer step, not per micro-batch
    for row in logged:
        pairs, step_ms = float(row["perf/pairs_per_s"]), float(row["perf/step_ms"])
        assert pairs == float(row["perf/pairs_per_s_per_device"])  # one device
        assert pairs * step_ms / 1000 == pytest.approx(8, rel=1e-4)  # 2 micro-batches of 4 pairs a step
        assert 0 <= float(row["perf/data_wait_ms"]) < step_ms
        tflops = float(row["perf/tflops_per_device"])
        assert tflops == pytest.approx(2 * step.total / (step_ms / 1000) / 1e12, rel=1e-4)
        assert float(row["perf/mfu"]) == pytest.approx(tflops / 1.0)
        assert float(row["train/lr"]) == pytest.approx(0.01)
        # the norm the optimizer saw at that step (the module's hook runs after the callback's, same gradients)
        assert float(row["train/grad_norm"]) == pytest.approx(module.norms[int(row["step"])], rel=1e-5)
