"""DDP on CPU (gloo, 2 processes): the multi-task pretext step and the fine-tuning step give the same loss and
gradients as one process on the same global batch."""

from __future__ import annotations

from functools import partial

import torch

from medssl.distributed import ddp_loss_and_grads, seeded_model, single_loss_and_grads


def _compare(model_fn, loss_fn, inputs, targets) -> None:
    loss_one, grads_one = single_loss_and_grads(model_fn, loss_fn, inputs, targets)
    loss_ddp, grads_ddp = ddp_loss_and_grads(model_fn, loss_fn, inputs, targets, nproc=2)
    assert abs(loss_one - loss_ddp) < 1e-6
    assert grads_one.keys() == grads_ddp.keys() and len(grads_one) > 10
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_multitask_pretext_step_matches_one_process():
    # imported here: spawned processes pickle by name, so these must be the modules ``scripts`` is now
    from anatomy_planes.ddp_helpers import packed_pretext_loss

    from scripts.networks import PlanesPretextNet

    # eval mode: batch norm on running statistics (SyncBatchNorm needs GPUs) and no dropout
    model_fn = partial(seeded_model, PlanesPretextNet, seed=3, eval_mode=True, features=(4, 8, 16), location_hidden=8)
    torch.manual_seed(0)
    inputs, packed = torch.rand(4, 1, 16, 16), torch.rand(4, 3, 16, 16)
    _compare(model_fn, packed_pretext_loss, inputs, packed)


def test_ddp_segmentation_step_matches_one_process():
    from scripts.networks import PlanesUNet

    model_fn = partial(seeded_model, PlanesUNet, seed=1, eval_mode=True, out_channels=4, features=(4, 8, 16))
    torch.manual_seed(0)
    inputs, labels = torch.rand(4, 1, 16, 16), torch.randint(0, 4, (4, 16, 16))
    _compare(model_fn, torch.nn.CrossEntropyLoss(), inputs, labels)
