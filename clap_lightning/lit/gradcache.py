"""Embedding-cache gradient accumulation (GradCache; Gao et al., 2021) for the contrastive loss.

Plain gradient accumulation computes the loss per micro-batch, so each pair's negatives
shrink to one micro-batch. GradCache keeps the whole batch as negatives at the memory of
one micro-batch:

1. embed every micro-batch without gradients (no activations kept);
2. compute the full-batch loss on the cached embeddings and its gradient with respect to
   them (and to the logit scale) only;
3. re-embed each micro-batch with gradients and backpropagate the cached embedding
   gradient, a surrogate `sum(emb * grad)` whose parameter gradient is the micro-batch's
   share of the full-batch gradient; the shares add up to the big-batch gradient.

The re-forward replays each micro-batch's random state so dropout draws the same masks
as in step 1 (GradCache's `RandContext`). BatchNorm is the exception that no replay fixes:
its statistics are per micro-batch (as they are per rank under DDP) and its running
statistics are updated twice. Costs one extra forward per micro-batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from clap_lightning.objectives import ContrastiveObjective, ContrastiveOutput

Encode = Callable[[dict[str, Any]], tuple[Tensor, Tensor, Tensor]]  # chunk -> (audio [b, D], text [b, D], scale [1])


class RandomState:
    """The CPU and current CUDA random states, captured now and restorable later."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


def split_batch(batch: dict[str, Any], chunks: int) -> list[dict[str, Tensor]]:
    """Split the tensors of a batch into `chunks` equal micro-batches along dim 0 (other entries are dropped).

    Raises:
        ValueError: the batch size is not divisible by `chunks`.
    """
    tensors = {key: value for key, value in batch.items() if isinstance(value, Tensor)}
    size = next(iter(tensors.values())).shape[0]
    if size % chunks:
        raise ValueError(f"gradcache: batch of {size} cannot be split into {chunks} equal micro-batches")
    parts = {key: value.chunk(chunks) for key, value in tensors.items()}
    return [{key: parts[key][i] for key in tensors} for i in range(chunks)]


def gradcache_backward(
    encode: Encode,
    chunks: list[dict[str, Tensor]],
    objective: ContrastiveObjective,
    backward: Callable[[Tensor], None],
    no_sync: Callable[[], ContextManager] = contextlib.nullcontext,
) -> tuple[ContrastiveOutput, Tensor]:
    """Accumulate into `.grad` the gradient of the contrastive loss over all `chunks` together.

    Args:
        encode: embeds one micro-batch; returns the raw logit scale parameter as its third item.
        chunks: the micro-batches of this rank, equal in size.
        objective: the loss, gathered over ranks as usual.
        backward: backpropagates a scalar (e.g. `LightningModule.manual_backward`).
        no_sync: context that suspends DDP's gradient all-reduce; entered for every
            re-forward but the last, so DDP reduces the accumulated gradient once.

    Returns:
        The loss output over the full batch (detached) and the logit scale value used.
    """
    device = chunks[0]["input_ids"].device
    states, audio_parts, text_parts = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState(device))
            audio_emb, text_emb, logit_scale = encode(chunk)
            audio_parts.append(audio_emb.float())
            text_parts.append(text_emb.float())
    audio = torch.cat(audio_parts).requires_grad_()  # [n*b, D]
    text = torch.cat(text_parts).requires_grad_()
    scale = logit_scale.detach().float().requires_grad_()  # a leaf, so no parameter gradient accumulates here
    group_ids = torch.cat([chunk["group_ids"] for chunk in chunks]) if "group_ids" in chunks[0] else None
    out = objective(audio, text, scale, group_ids)
    audio_grads, text_grads, scale_grad = torch.autograd.grad(out.loss, [audio, text, scale])
    sizes = [part.shape[0] for part in audio_parts]
    final_state = RandomState(device)
    for i, (chunk, state, audio_grad, text_grad) in enumerate(
            zip(chunks, states, audio_grads.split(sizes), text_grads.split(sizes))):
        is_last = i == len(chunks) - 1
        state.restore()
        with contextlib.nullcontext() if is_last else no_sync():
            audio_emb, text_emb, logit_scale = encode(chunk)
            surrogate = (audio_emb.float() * audio_grad).sum() + (text_emb.float() * text_grad).sum()
            if is_last:  # the logit scale's gradient is added once, through the synchronised backward
                surrogate = surrogate + (logit_scale.float() * scale_grad).sum()
            backward(surrogate)
    final_state.restore()  # the step consumes random numbers once, as a plain step would
    out.loss = out.loss.detach()
    return out, scale.detach()
