"""LARC (medssl.larc): one step against a hand-computed layer-wise update, clipping, zero norms, and the plumbing
(schedulers, state dict round trip) that the pre-training configs rely on."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.optimizers import WarmupCosineSchedule

from medssl.larc import LARC


def _params():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    b = torch.nn.Parameter(torch.tensor([0.5]))  # ‖b‖ = 0.5
    w.grad = torch.tensor([[0.6, 0.8]])  # ‖g‖ = 1
    b.grad = torch.tensor([2.0])  # ‖g‖ = 2
    return w, b


def test_one_step_is_the_hand_computed_layer_wise_update():
    """Breaks if the adaptive rate is not per tensor, weight decay is not folded in, or the formula changes."""
    w, b = _params()
    lr, wd, trust = 0.5, 0.1, 0.01
    opt = LARC(torch.optim.SGD([w, b], lr=lr, weight_decay=wd), trust_coefficient=trust, clip=False, eps=0.0)
    opt.step()
    # w: local = 0.01 · 5 / (1 + 0.1 · 5) = 1/30; update = lr · local · (g + wd · w)
    local_w = trust * 5 / (1 + wd * 5)
    expected_w = torch.tensor([[3.0, 4.0]]) - lr * local_w * (
        torch.tensor([[0.6, 0.8]]) + wd * torch.tensor([[3.0, 4.0]])
    )
    # b: local = 0.01 · 0.5 / (2 + 0.1 · 0.5)
    local_b = trust * 0.5 / (2 + wd * 0.5)
    expected_b = torch.tensor([0.5]) - lr * local_b * (torch.tensor([2.0]) + wd * 0.5)
    torch.testing.assert_close(w.detach(), expected_w)
    torch.testing.assert_close(b.detach(), expected_b)
    assert opt.param_groups[0]["weight_decay"] == wd, "the wrapped optimizer's weight decay is restored"


def test_clip_caps_the_rate_at_lr_and_zero_norms_are_left_alone():
    """Breaks if clip=True does not use min(local / lr, 1), or a zero tensor gets an update (apex skips it)."""
    w, b = _params()
    zero = torch.nn.Parameter(torch.zeros(2))
    zero.grad = torch.ones(2)
    opt = LARC(torch.optim.SGD([w, b, zero], lr=1e-4, weight_decay=0.0), trust_coefficient=0.01, clip=True, eps=0.0)
    opt.step()
    # w: local = 0.01 · 5 / 1 = 0.05 > lr → clipped to factor 1: plain SGD step
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 1e-4 * torch.tensor([[0.6, 0.8]]))
    # zero weights: gradient unscaled, plain SGD step (no weight decay either)
    torch.testing.assert_close(zero.detach(), -1e-4 * torch.ones(2))
    w2, b2 = _params()
    opt = LARC(torch.optim.SGD([w2, b2], lr=10.0), trust_coefficient=0.01, clip=True, eps=0.0)
    opt.step()  # local / lr = 0.05 / 10 = 0.005 < 1: effective rate lr · 0.005 = 0.05
    torch.testing.assert_close(w2.detach(), torch.tensor([[3.0, 4.0]]) - 0.05 * torch.tensor([[0.6, 0.8]]))


def test_schedulers_and_state_dict_round_trip_act_on_the_wrapped_optimizer():
    """Breaks if a scheduler's learning rate does not reach the wrapped SGD, or resume loses momentum buffers."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = LARC(torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-4))
    schedule = WarmupCosineSchedule(opt, warmup_steps=2, t_total=10)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        schedule.step()
    assert opt.optim.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == schedule.get_last_lr()[0] != 1.0
    state = copy.deepcopy(opt.state_dict())  # as saved to a file (state_dict() shares the buffers)
    assert len(state["state"]) == 2 and "momentum_buffer" in state["state"][0]

    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(net.state_dict())
    opt2 = LARC(torch.optim.SGD(clone.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-4))
    opt2.load_state_dict(state)
    assert opt2.state is opt2.optim.state and opt2.param_groups is opt2.optim.param_groups
    x = torch.randn(4, 3)
    for model, optimizer in ((net, opt), (clone, opt2)):
        optimizer.zero_grad()
        model(x).square().sum().backward()
        optimizer.step()
    torch.testing.assert_close(clone.weight, net.weight)


def test_wraps_only_optimizers():
    with pytest.raises(TypeError, match="Optimizer"):
        LARC(object())
    with pytest.raises(TypeError, match="not LARC"):
        LARC(LARC(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)))
