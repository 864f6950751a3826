"""Cross-rank collectives for the contrastive objective; the one place the project talks to torch.distributed.

Works with any launcher that initialises the default process group: Lightning's DDP,
DeepSpeed (NCCL on GPUs, gloo on CPU), torchrun. Without an initialised process group
every helper behaves as a world of one, so the same code runs in a notebook.

Only gathering *with* gradients is offered. Gathering without gradients through the
other ranks' features (open_clip's ``gather_with_grad=False``) silently scales encoder
gradients by 1/W under the global loss and gives wrong gradients under the local loss
(open_clip issues 616 and 894).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Return whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def close_process_group() -> None:
    """Destroy the default process group, if any, before the interpreter exits.

    Left to the interpreter's teardown, the communication threads of a DeepSpeed run on
    CPU were sometimes destroyed while still joinable; the process then aborted ("terminate
    called without an active exception", exit -6) after the run had finished, and a
    scheduler recorded a failed job.
    """
    if is_distributed():
        dist.destroy_process_group()


def world_size() -> int:
    """Return the number of ranks, or 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Return this process' rank, or 0 when torch.distributed is not initialised."""
    return dist.get_rank() if is_distributed() else 0


def check_equal_local_shapes(x: Tensor) -> None:
    """Raise ValueError unless every rank holds a tensor of the same shape as `x`.

    Costs one all-gather of ``x.ndim`` integers. Every rank receives the same sizes and
    so raises the same error, which avoids one rank hanging in the next collective.
    """
    if not is_distributed():
        return
    shape = torch.tensor(x.shape, dtype=torch.int64, device=x.device)  # [ndim]
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    batch_sizes = [int(s[0]) for s in shapes]
    if len(set(batch_sizes)) > 1:
        raise ValueError(
            f"unequal local batch sizes across ranks: {batch_sizes}; "
            "drop the last partial batch (drop_last=True)"
        )
    feature_shapes = [tuple(s[1:].tolist()) for s in shapes]
    if len(set(feature_shapes)) > 1:
        raise ValueError(f"unequal feature shapes across ranks: {feature_shapes}; expected one shape on every rank")


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over ranks.

    Why a sum over ranks gives the exact single-process gradient. Let x_r be rank r's
    local features and L_s the loss rank s computes from the gathered features; the
    single-process loss on the concatenated batch is L = (1/W) * sum_s L_s (global loss:
    every L_s equals L; local loss: L_s covers rank s's rows, each a mean over b rows, and
    the single-process mean over W*b rows is their average). After this backward, rank r
    holds dx_r = sum_s dL_s/dx_r, so its parameter gradient is sum_s dL_s/dθ restricted
    to the path through x_r. DDP (and DeepSpeed) then *average* parameter gradients over
    ranks: (1/W) * sum_r sum_s dL_s/dx_r · dx_r/dθ = d[(1/W) sum_s L_s]/dθ = dL/dθ, exactly.

    Taking only this rank's slice of its own gradient (no sum) would drop the paths
    through the other ranks' losses: under the global loss each rank holds dL/dx_r and the
    DDP average is dL/dθ / W; under the local loss the negatives' terms are lost. That is
    what ``torch.distributed.nn.functional.all_gather`` avoids too (its backward is a
    reduce-scatter, i.e. the same sum then slice); this Function uses all_reduce so that
    one code path serves gloo and NCCL. The gradient it reduces is [W*b, D], small beside
    the parameter gradients DDP reduces anyway.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # x: [b, ...] -> [W*b, ...]
        ctx.rank = dist.get_rank()
        ctx.local_batch = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_gathered: Tensor) -> Tensor:  # [W*b, ...] -> [b, ...]
        # all_reduce is in place; autograd owns the input
        grad = grad_gathered.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_batch
        return grad[start : start + ctx.local_batch]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather `x` along dim 0 from every rank, keeping gradients to every rank's input.

    Rank r's rows occupy ``[r*b, (r+1)*b)`` of the result. The identity when
    torch.distributed is not initialised or the world has one rank.

    Args:
        x: this rank's local batch, ``[b, ...]``; b must be equal on every rank.

    Returns:
        The global batch, ``[W*b, ...]``.

    Raises:
        ValueError: local batch sizes (or feature shapes) differ across ranks.
    """
    if world_size() == 1:
        return x
    check_equal_local_shapes(x)
    return _GatherWithGrad.apply(x)


def gather_ids(x: Tensor) -> Tensor:
    """All-gather along dim 0 a tensor that takes no gradient (integer group ids, say); identity in a world of one.

    Rank r's rows occupy ``[r*b, (r+1)*b)``, as in `gather_with_grad`; call it after that
    gather, which has already checked that every rank holds the same batch size.
    """
    if world_size() == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Return the mean of a detached tensor over ranks (for metrics, never for the loss)."""
    if world_size() == 1:
        return x.detach()
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)  # gloo has no ReduceOp.AVG
    return x / world_size()
