"""DDP on CPU (gloo, 2 processes): stage 1's clustering loss and gradients equal one process on the global batch.

SwAV's Sinkhorn codes span the batch; the shared ``sinkhorn_knopp`` all-reduces its per-prototype sums, so a shard
of the batch gets exactly its part of the global codes.
"""

from __future__ import annotations

from functools import partial

import torch

from medssl.distributed import ddp_loss_and_grads, seeded_model, single_loss_and_grads


def _check(model_fn, loss_fn, inputs, targets):
    loss_one, grads_one = single_loss_and_grads(model_fn, loss_fn, inputs, targets)
    loss_ddp, grads_ddp = ddp_loss_and_grads(model_fn, loss_fn, inputs, targets, nproc=2)
    assert abs(loss_one - loss_ddp) < 1e-5
    assert grads_one.keys() == grads_ddp.keys() and len(grads_one) > 10
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_stage1_swav_step_matches_one_process():
    # imported here: spawned processes pickle the classes by name, so they must come from the active ``scripts``
    from scripts.networks import IntraEncoder, SliceClusteringNet
    from scripts.objectives import ClusteringLoss

    torch.manual_seed(0)
    intra = IntraEncoder(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 16), block="basic", embed_dim=16)
    model_fn = partial(
        seeded_model,
        SliceClusteringNet,
        seed=3,
        eval_mode=True,
        intra=intra,
        hidden_dim=16,
        out_dim=8,
        num_prototypes=12,
        freeze_iterations=0,
    )
    inputs, index = torch.rand(4, 2, 32, 32), torch.arange(4)
    loss_fn = ClusteringLoss("swav", num_crops=2)
    _check(model_fn, loss_fn, inputs, index)
