"""LARC (layer-wise adaptive rate clipping/scaling) as a wrapper around any ``torch.optim`` optimizer.

Semantics of NVIDIA apex's ``apex.parallel.LARC`` (used by SwAV/DeepCluster-v2 and by the joint 2D/3D clustering
paper's code, which wraps SGD in ``LARC(trust_coefficient=0.001, clip=False)``). Before every step, for each
parameter tensor ``w`` with gradient ``g`` (one "layer") of a group with learning rate ``lr`` and weight decay
``wd``::

    local = trust_coefficient · ‖w‖ / (‖g‖ + wd · ‖w‖ + eps)
    local = min(local / lr, 1)                  (clip=True: the effective rate lr · local never exceeds lr)
    g ← (g + wd · w) · local                    (weight decay folded into the gradient, then scaled)

and the wrapped optimizer steps with ``weight_decay = 0`` (restored after the step). A tensor whose norm or
gradient norm is zero keeps its gradient and gets no weight decay in that step (apex). With SGD the update is
therefore ``lr · local · (g + wd · w)`` (plus momentum): ``trust_coefficient · lr · ‖w‖ / ‖g‖`` per layer when
``clip=False``.

:class:`LARC` is a ``torch.optim.Optimizer`` sharing the wrapped optimizer's parameter groups and state, so learning
rate schedulers (which set ``param_groups[i]["lr"]``), ``state_dict``/``load_state_dict`` (the wrapped optimizer's,
round trip included), gradient scalers and DDP (gradients are already all-reduced when ``step`` runs, so every
process computes the same norms) work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LARC"]


class LARC(Optimizer):
    """Wrap ``optimizer`` in LARC (see the module docstring for the update).

    Args:
        optimizer: the optimizer to wrap (e.g. ``torch.optim.SGD``); its groups' ``weight_decay`` is applied by LARC.
        trust_coefficient: ``η``, the trust ratio factor (0.001: SwAV and the paper's code; apex's default 0.02).
        clip: clip the adaptive rate at the group's ``lr`` (LARC proper) instead of scaling by it (LARS-like,
            ``False`` in SwAV and the paper's code).
        eps: added to the denominator (1e-8, apex).
    """

    def __init__(
        self, optimizer: Optimizer, trust_coefficient: float = 0.001, clip: bool = False, eps: float = 1e-8
    ) -> None:
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, LARC):
            raise TypeError(f"LARC wraps a torch.optim.Optimizer (not LARC), got {type(optimizer).__name__}.")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be positive, got {trust_coefficient}.")
        # registers the wrapped optimizer's group dicts themselves (hooks and step patching of torch.optim)
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.optim = optimizer
        self._share()
        self.trust_coefficient = trust_coefficient
        self.clip = clip
        self.eps = eps

    def _share(self) -> None:
        """Point this optimizer's groups and state at the wrapped optimizer's (the same objects)."""
        self.param_groups = self.optim.param_groups
        self.state = self.optim.state

    def __repr__(self) -> str:
        return f"LARC(trust_coefficient={self.trust_coefficient}, clip={self.clip}, eps={self.eps}, {self.optim!r})"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "optim" not in self.__dict__:  # during Optimizer.__init__
            super().add_param_group(param_group)
            return
        self.optim.add_param_group(param_group)
        self._share()

    def state_dict(self) -> dict[str, Any]:
        return self.optim.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optim.load_state_dict(state_dict)
        self._share()  # torch.optim replaces the state and group objects when loading

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def _scale_gradients(self) -> list[float]:
        """Fold weight decay into the gradients and scale them; return the groups' weight decays (now 0)."""
        decays = []
        for group in self.param_groups:
            decay = group.get("weight_decay", 0.0)
            decays.append(decay)
            group["weight_decay"] = 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                param_norm = torch.linalg.vector_norm(p)
                grad_norm = torch.linalg.vector_norm(p.grad)
                if param_norm == 0 or grad_norm == 0:
                    continue
                local = self.trust_coefficient * param_norm / (grad_norm + param_norm * decay + self.eps)
                if self.clip:
                    local = torch.clamp(local / group["lr"], max=1.0)
                p.grad.add_(p, alpha=decay).mul_(local)
        return decays

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:  # gradients first, then LARC, then the wrapped step
            with torch.enable_grad():
                loss = closure()
        decays = self._scale_gradients()
        try:
            self.optim.step()
        finally:
            for group, decay in zip(self.param_groups, decays):
                group["weight_decay"] = decay
        return loss
