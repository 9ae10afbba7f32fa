"""DDP on CPU (gloo, 2 processes): an MAE step on the same global batch and masks gives the same loss and
gradients as one process (the masked-patch mean is over equally many patches in every process)."""

from __future__ import annotations

from functools import partial

import torch

from medssl.distributed import ddp_loss_and_grads, seeded_model, single_loss_and_grads

TINY = {
    "img_size": 32,
    "patch_size": 8,
    "in_channels": 1,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "mlp_dim": 64,
}
DECODER = {"decoder_hidden_size": 32, "decoder_num_layers": 1, "decoder_num_heads": 2, "decoder_mlp_dim": 64}


def test_ddp_mae_step_matches_one_process():
    # imported here: spawned processes pickle the classes by name, so they must come from ``scripts`` as it is now
    from scripts.networks import MaskedAutoencoderViT, MaskedPatchLoss

    model_fn = partial(seeded_model, MaskedAutoencoderViT, seed=5, **TINY, **DECODER)
    loss_fn = MaskedPatchLoss(patch_size=8, norm_pix_loss=True)
    torch.manual_seed(0)
    images = torch.rand(4, 1, 32, 32)
    noise = {"noise": torch.rand(4, 16)}  # the masks of the whole batch, split with it
    loss_one, grads_one = single_loss_and_grads(model_fn, loss_fn, images, images, forward_kwargs=noise)
    loss_ddp, grads_ddp = ddp_loss_and_grads(model_fn, loss_fn, images, images, nproc=2, forward_kwargs=noise)
    assert abs(loss_one - loss_ddp) < 1e-6
    assert grads_one.keys() == grads_ddp.keys() and len(grads_one) > 20
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)
