"""DDP on CPU (gloo, 2 processes): the same global batch gives the same loss and gradients as one process."""

from __future__ import annotations

from functools import partial

import torch

from medssl.distributed import ddp_loss_and_grads, seeded_model, single_loss_and_grads


def test_ddp_restoration_step_matches_one_process():
    # imported here: spawned processes pickle the class by name, so it must be the module ``scripts`` is now
    from scripts.networks import GenesisUNet

    model_fn = partial(seeded_model, GenesisUNet, seed=3, eval_mode=True, base_filters=4)
    torch.manual_seed(0)
    inputs, targets = torch.rand(4, 1, 16, 16, 8), torch.rand(4, 1, 16, 16, 8)
    loss_fn = torch.nn.MSELoss()
    loss_one, grads_one = single_loss_and_grads(model_fn, loss_fn, inputs, targets)
    loss_ddp, grads_ddp = ddp_loss_and_grads(model_fn, loss_fn, inputs, targets, nproc=2)
    assert abs(loss_one - loss_ddp) < 1e-6
    assert grads_one.keys() == grads_ddp.keys() and len(grads_one) > 10
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)
