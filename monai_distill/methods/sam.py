"""Surrogate-gap guided sharpness-aware minimisation (GSAM), the optimizer of FTD's flat expert trajectories.

Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", ICLR 2022, Algorithm 1; used by FTD (Du et al.,
"Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation", CVPR 2023, Sec. 4.2) to train experts
whose trajectories are flat, so that the accumulated matching error of the student stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["GSAM"]


class GSAM(torch.optim.Optimizer):
    """GSAM around a base SGD step.

    One step (GSAM Alg. 1) given the gradient ``g`` of the loss at ``w`` (already in ``.grad``):

    1. ascend: ``e = rho * g / ||g||`` (adaptive: ``e = rho * w**2 * g / ||w * g||``, ASAM), ``w' = w + e``;
    2. ``g_p`` = gradient at ``w'`` (the closure recomputes it on the same batch);
    3. decompose ``g = g_par + g_perp`` with ``g_par`` parallel to ``g_p``;
    4. descend from ``w`` along ``g_p - alpha * g_perp`` with the base optimizer (SGD).

    Args:
        params: parameters to optimise.
        lr: learning rate of the base SGD.
        rho: radius of the ascent step (FTD: 0.01).
        alpha: weight of the surrogate-gap term (FTD: 0.3).
        adaptive: scale the ascent per parameter by ``|w|`` (ASAM), as FTD's experts do.
        momentum: SGD momentum of the base step.
        weight_decay: SGD weight decay of the base step.
    """

    needs_closure = True  # read by monai_distill.evaluation.train_network

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        rho: float = 0.01,
        alpha: float = 0.3,
        adaptive: bool = True,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        if rho < 0:
            raise ValueError(f"GSAM rho must be >= 0, got {rho}.")
        defaults = {"lr": lr, "rho": rho, "alpha": alpha, "adaptive": adaptive}
        super().__init__(params, defaults)
        self.base = torch.optim.SGD(self.param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.param_groups = self.base.param_groups  # one lr seen by schedulers and by the base step
        self.state = self.base.state

    @torch.no_grad()
    def _grad_norm(self, adaptive: bool) -> torch.Tensor:
        norms = [
            ((p.abs() if adaptive else 1.0) * p.grad).norm(2)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        return torch.stack(norms).norm(2) if norms else torch.zeros(())

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        if closure is None:
            raise ValueError("GSAM needs a closure that recomputes the loss and its gradients on the same batch.")
        group0 = self.param_groups[0]
        rho, alpha, adaptive = group0["rho"], group0["alpha"], group0["adaptive"]
        scale = rho / (self._grad_norm(adaptive) + 1e-12)
        saved: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = (p.pow(2) if adaptive else 1.0) * p.grad * scale
                saved.append((p, e, p.grad.detach().clone()))
                p.add_(e)
        with torch.enable_grad():
            loss = closure()
        # Decompose the first gradient against the perturbed one and descend from the original weights.
        g_dot_gp = sum((g * p.grad).sum() for p, _, g in saved if p.grad is not None)
        gp_sq = sum((p.grad * p.grad).sum() for p, _, _ in saved if p.grad is not None)
        coef = g_dot_gp / (gp_sq + 1e-12)
        for p, e, g in saved:
            p.sub_(e)
            if p.grad is None:
                continue
            g_perp = g - coef * p.grad
            p.grad.sub_(alpha * g_perp)
        self.base.step()
        return loss
