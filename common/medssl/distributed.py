"""Check that a model trained with DistributedDataParallel sees the same loss and gradients as on one process.

Every bundle's ``multi_gpu_*.json`` shards each global batch over the processes; DDP averages the gradients. For a
loss that is a mean over the batch this must equal one process on the whole batch (within float tolerance). This
module runs that comparison on CPU with the ``gloo`` backend, so tests need no GPU.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["ddp_loss_and_grads", "seeded_model", "single_loss_and_grads"]

ModelFn = Callable[[], torch.nn.Module]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seeded_model(factory: Callable[..., torch.nn.Module], seed: int = 0, eval_mode: bool = False, **kwargs):
    """Build ``factory(**kwargs)`` with a fixed seed, so every process gets the same weights.

    ``eval_mode`` fixes batch-norm to its running statistics: per-process batch statistics differ from those of
    the whole batch unless batch norm is synchronised (SyncBatchNorm needs GPUs).
    """
    torch.manual_seed(seed)
    model = factory(**kwargs)
    return model.eval() if eval_mode else model


def single_loss_and_grads(
    model_fn: ModelFn, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of one process on the whole batch."""
    model = model_fn()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, model_fn, loss_fn, inputs, targets, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(model_fn())
        shard = slice(rank * len(inputs) // world, (rank + 1) * len(inputs) // world)
        loss = loss_fn(model(inputs[shard]), targets[shard])
        loss.backward()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        if rank == 0:
            grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
            torch.save({"loss": global_loss.item() / world, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_loss_and_grads(
    model_fn: ModelFn, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, nproc: int = 2
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss (averaged over processes) and rank 0's gradients after DDP on ``nproc`` equal shards of the batch.

    ``model_fn`` and ``loss_fn`` must be picklable (module-level functions or ``functools.partial``) and
    ``model_fn`` must build identical models in every process (seed inside it).
    """
    if len(inputs) % nproc:
        raise ValueError(f"a batch of {len(inputs)} does not split into {nproc} equal shards")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        args = (nproc, _free_port(), model_fn, loss_fn, inputs, targets, out)
        mp.spawn(_worker, args=args, nprocs=nproc, join=True)
        result = torch.load(out, weights_only=True)
    return result["loss"], result["grads"]
