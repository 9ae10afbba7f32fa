"""DistributedDataParallel helpers: the end of a multi-process run, and a check that DDP sees the same loss and
gradients as one process.

Every bundle's ``multi_gpu_*.json`` shards each global batch over the processes; DDP averages the gradients. For a
loss that is a mean over the batch this must equal one process on the whole batch (within float tolerance). This
module runs that comparison on CPU with the ``gloo`` backend, so tests need no GPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["ddp_loss_and_grads", "end_process_group", "seeded_model", "single_loss_and_grads"]

# seconds for a whole check, and for the process group to form (a loaded CI machine needs minutes)
TIMEOUT = float(os.environ.get("MEDSSL_DDP_TIMEOUT", 600))
GRACE = 30.0  # seconds a rank may still take to exit once the result is written
ModelFn = Callable[[], torch.nn.Module]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def end_process_group() -> None:
    """Leave the default process group once every rank is done with it (the ``finalize`` of ``multi_gpu_*.json``).

    Rank 0 runs validation and saving after the other ranks finish their last iteration; a rank that destroys the
    group meanwhile can make gloo abort the process (SIGABRT) instead of exiting cleanly.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seeded_model(factory: Callable[..., torch.nn.Module], seed: int = 0, eval_mode: bool = False, **kwargs):
    """Build ``factory(**kwargs)`` with a fixed seed, so every process gets the same weights.

    ``eval_mode`` fixes batch-norm to its running statistics: per-process batch statistics differ from those of
    the whole batch unless batch norm is synchronised (SyncBatchNorm needs GPUs).
    """
    torch.manual_seed(seed)
    model = factory(**kwargs)
    return model.eval() if eval_mode else model


def single_loss_and_grads(
    model_fn: ModelFn,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    forward_kwargs: dict[str, torch.Tensor] | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of one process on the whole batch (``forward_kwargs``: per-sample tensors
    passed to the model's forward, e.g. MAE masking noise)."""
    model = model_fn()
    loss = loss_fn(model(inputs, **(forward_kwargs or {})), targets)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, folder: str, model_fn, loss_fn) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: never depend on how the host name resolves
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT)
    )
    # the batch travels as a file, not as spawn arguments (no shared-memory tensor handles between processes)
    inputs, targets, forward_kwargs = torch.load(os.path.join(folder, "batch.pt"), weights_only=True)
    try:
        model = torch.nn.parallel.DistributedDataParallel(model_fn())
        shard = slice(rank * len(inputs) // world, (rank + 1) * len(inputs) // world)
        loss = loss_fn(model(inputs[shard], **{k: v[shard] for k, v in forward_kwargs.items()}), targets[shard])
        loss.backward()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        if rank == 0:
            grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
            torch.save({"loss": global_loss.item() / world, "grads": grads}, os.path.join(folder, "rank0.tmp"))
            os.replace(os.path.join(folder, "rank0.tmp"), os.path.join(folder, "rank0.pt"))
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def ddp_loss_and_grads(
    model_fn: ModelFn,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    nproc: int = 2,
    forward_kwargs: dict[str, torch.Tensor] | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss (averaged over processes) and rank 0's gradients after DDP on ``nproc`` equal shards of the batch
    (``forward_kwargs`` are sharded the same way).

    ``model_fn`` and ``loss_fn`` must be picklable (module-level functions or ``functools.partial``) and
    ``model_fn`` must build identical models in every process (seed inside it).
    """
    if len(inputs) % nproc:
        raise ValueError(f"a batch of {len(inputs)} does not split into {nproc} equal shards")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save((inputs, targets, forward_kwargs or {}), os.path.join(tmp, "batch.pt"))
        context = mp.spawn(_worker, args=(nproc, tmp, model_fn, loss_fn), nprocs=nproc, join=False)
        result_file = os.path.join(tmp, "rank0.pt")
        deadline = time.monotonic() + TIMEOUT
        while not context.join(timeout=1.0):
            if os.path.isfile(result_file) and any(p.exitcode == 0 for p in context.processes):
                # the result is complete (all ranks took part in it); a rank stuck in teardown must not fail the check
                deadline = min(deadline, time.monotonic() + GRACE)
            if time.monotonic() > deadline:
                codes = [p.exitcode for p in context.processes]
                for process in context.processes:
                    process.kill()
                if os.path.isfile(result_file) and 0 in codes:
                    break
                raise TimeoutError(f"DDP check did not finish in {TIMEOUT} s (process exit codes: {codes})")
        result = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=True)
    return result["loss"], result["grads"]
