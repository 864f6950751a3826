"""Train the tiny CLAP for a few steps through Lightning on fixed random batches; write per-step losses as JSON.

Run as a script (Lightning's DDP launcher re-runs this file for the other ranks):

    python tests/distributed/lightning_run.py --out losses.json --tokenizer DIR --devices 2 \\
        [--strategy ddp|deepspeed] [--deepspeed-config configs/deepspeed/zero2.json] [--local-loss] [--gradcache N]

Every rank reads the same in-memory data set; a contiguous batch sampler gives rank r the
rows [r*b, (r+1)*b) of each global batch, so one process with the global batch sees exactly
the union of what the ranks see. The Trainer's strategy comes from `build_strategy`, as in
`clap-lightning fit`. The loss written per step is the global-batch loss: under the local
loss each rank holds its own rows' share, so the shares are averaged over ranks.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from clap_lightning.config import ExperimentConfig, config_from, pretraining_batch_size
from clap_lightning.lit.pretraining import ClapPretraining
from clap_lightning.lit.strategies import build_strategy
from clap_lightning.objectives.collectives import close_process_group

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_BATCH = 8
STEPS = 20


class RandomPairs(Dataset):
    """`steps * global_batch` fixed random waveforms and token rows (lengths vary, right padded)."""

    def __init__(self, num_samples: int, clip_samples: int, max_length: int, vocab_size: int) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.audio = 0.1 * torch.randn(num_samples, clip_samples, generator=generator)
        self.input_ids = torch.randint(0, vocab_size, (num_samples, max_length), generator=generator)
        lengths = torch.randint(3, max_length + 1, (num_samples,), generator=generator)
        self.attention_mask = (torch.arange(max_length) < lengths[:, None]).long()

    def __len__(self) -> int:
        return self.audio.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"audio": self.audio[index], "input_ids": self.input_ids[index],
                "attention_mask": self.attention_mask[index]}


class ContiguousBatchSampler(Sampler[list[int]]):
    """Rank r's share of global batch s: rows s*B + [r*b, (r+1)*b), in order, no shuffling."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int) -> None:
        self.num_steps = num_samples // global_batch
        self.global_batch, self.local_batch, self.rank = global_batch, global_batch // world_size, rank

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        for step in range(self.num_steps):
            start = step * self.global_batch + self.rank * self.local_batch
            yield list(range(start, start + self.local_batch))


class RandomPairsData(L.LightningDataModule):
    def __init__(self, dataset: RandomPairs) -> None:
        super().__init__()
        self.dataset = dataset

    def train_dataloader(self) -> DataLoader:
        sampler = ContiguousBatchSampler(len(self.dataset), GLOBAL_BATCH, self.trainer.global_rank,
                                         self.trainer.world_size)
        return DataLoader(self.dataset, batch_sampler=sampler)


class FixedNormStatistics(ClapPretraining):
    """HTSAT's input BatchNorm kept in eval mode.

    Under DDP BatchNorm normalises each rank's batch (SyncBatchNorm needs GPUs), so the
    losses equal one process on the concatenated batch only with fixed statistics.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.model.audio_encoder.bn0.eval()  # Lightning keeps each submodule's mode through fit


class RecordLosses(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.losses = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = pl_module.all_gather(outputs["loss"].detach()).mean()  # mean of the ranks' shares
        self.losses.append(loss.item())

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.out.write_text(json.dumps({"losses": self.losses, "world_size": trainer.world_size}))


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    model = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "tiny.yaml"))
    model["proj_dropout"] = 0.0  # random masks differ between one process and two ranks
    model["audio_encoder"]["use_spec_augment"] = False
    model["text_encoder"]["tokenizer"] = args.tokenizer
    config = config_from(ExperimentConfig, {
        "model": model,
        "data": {"global_batch_size": GLOBAL_BATCH},
        "trainer": {"accelerator": "cpu", "devices": args.devices, "strategy": args.strategy,
                    "deepspeed_config": args.deepspeed_config, "max_steps": STEPS,
                    "accumulate_grad_batches": args.gradcache or 1},
        "optim": {"lr": 1e-3, "warmup_steps": 5, "weight_decay": 0.1},
        "objective": {"use_local_loss": args.local_loss, "accumulation": "gradcache" if args.gradcache else "plain"},
    })
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--deepspeed-config", default="")
    parser.add_argument("--local-loss", action="store_true")
    parser.add_argument("--gradcache", type=int, default=0, help="micro-batches per step with GradCache (0 = off)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = build_config(args)
    L.seed_everything(0, verbose=False)
    module = FixedNormStatistics(config)
    data = RandomPairsData(
        RandomPairs(
            STEPS * GLOBAL_BATCH,
            config.model.clip_samples,
            config.model.text_encoder["max_length"],
            module.model.build_tokenizer().vocab_size,
        )
    )
    assert pretraining_batch_size(config) == GLOBAL_BATCH // args.devices  # GradCache splits it inside the step
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=build_strategy(config.trainer, pretraining_batch_size(config)),
        max_steps=STEPS,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[RecordLosses(args.out)],
    )
    trainer.fit(module, datamodule=data)
    close_process_group()  # as the CLI does: not left to the interpreter's exit


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
