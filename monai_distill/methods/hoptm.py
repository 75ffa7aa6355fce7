"""HoP-TM: high-order progressive trajectory matching (Dong, Bian et al., "High-Order Progressive Trajectory Matching
for Medical Image Dataset Distillation", MICCAI 2025; seed ``001``).

Two additions to trajectory matching on flat experts:

- **shape-wise potential**: the geometry of three points of a trajectory, start ``θ_s``, middle ``θ_m`` and end
  ``θ_e`` (for the student: after ``N/2`` and ``N`` steps). With unit difference vectors ``u_ij = (θ_i − θ_j) /
  ‖θ_i − θ_j‖``, the angle relations ``a_ijk = ⟨u_ij, u_ik⟩`` of the student are pulled to the expert's with a
  smooth-L1 loss, weighted by ``potential_weight`` (:func:`shape_potential`);
- **easy-to-complex matching**: a persistent mask ``v`` over parameters admits a parameter once its squared matching
  error ``e_p = (θ^S_N − θ^D_e)_p²`` falls below a threshold that grows by ``growing_factor`` every ``grow_every``
  iterations; the matching loss is ``Σ v·e / Σ v·(θ^D_s − θ^D_e)²`` over the admitted parameters
  (:func:`masked_distance`). Thresholds are in units of the segment's mean squared expert displacement, so one
  setting serves every width and dataset. An empty mask would divide 0 by 0 (NaN in the reference); here the
  ``min_fraction`` easiest parameters are admitted instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import METHODS
from .trajectory import Plan, TrajectoryDistiller, TrajectoryOptions, Unrolled, normalised_distance

__all__ = ["HoPTM", "HoPTMOptions", "masked_distance", "shape_potential"]


def _angles(points: torch.Tensor) -> torch.Tensor:
    """``a_ijk = ⟨u_ij, u_ik⟩`` for ``points`` (3, P); zero differences (i = j) give zero rows, never NaN."""
    diffs = F.normalize(points.unsqueeze(0) - points.unsqueeze(1), p=2, dim=2)  # (3, 3, P): u_ij
    return torch.bmm(diffs, diffs.transpose(1, 2)).reshape(-1)


def shape_potential(student: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """HoP-TM's shape-wise potential: smooth-L1 between the angle relations of two 3-point trajectories (3, P)."""
    return F.smooth_l1_loss(_angles(student), _angles(expert.detach()))


def masked_distance(
    student: torch.Tensor, start: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_fraction: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ v·(θ^S − θ^D_e)² / Σ v·(θ^D_s − θ^D_e)²`` over the admitted parameters ``v``; never 0/0.

    Returns:
        The loss and the mask actually used (``mask``, or the ``min_fraction`` easiest parameters when ``mask`` is
        empty or admits only parameters the expert did not move).
    """
    err = (student - target).pow(2)
    disp = (start - target).pow(2)
    used = mask
    if not bool(mask.any()) or not bool((disp * mask).sum() > 0):
        k = max(1, int(min_fraction * err.numel()))
        moved = torch.where(disp > 0, err.detach(), torch.full_like(err, float("inf")))
        used = torch.zeros_like(mask)
        used[torch.topk(moved, k, largest=False).indices] = True
        if not bool((disp * used).sum() > 0):  # the expert did not move at all: the plain distance names the problem
            return normalised_distance(student, start, target), used
    v = used.to(err.dtype)
    return (v * err).sum() / (v * disp).sum(), used


@dataclass
class HoPTMOptions(TrajectoryOptions):
    """MTT's options plus HoP-TM's.

    Attributes:
        potential_weight: λ of the shape-wise potential.
        base_threshold: initial admission threshold, in units of the segment's mean squared expert displacement.
        growing_factor: the threshold is multiplied by this every ``grow_every`` iterations.
        grow_every: default ``num_iterations // 5``.
        min_fraction: share of parameters admitted when the mask would be empty.
        easy_to_complex: use the mask (off: plain normalised matching, for ablation).
    """

    potential_weight: float = 1.0
    base_threshold: float = 1.0
    growing_factor: float = 2.0
    grow_every: int | None = None
    min_fraction: float = 0.01
    easy_to_complex: bool = True


@METHODS.register("hoptm")
class HoPTM(TrajectoryDistiller):
    """Trajectory matching with the shape-wise potential and easy-to-complex parameter masking (flat experts)."""

    name = "hoptm"
    options_cls = HoPTMOptions
    flat_experts = True

    def setup(self) -> None:
        self.mask = torch.zeros(self.fnet.num_params, dtype=torch.bool, device=self.device)

    def threshold(self, iteration: int) -> float:
        every = self.opts.grow_every or max(1, self.num_iterations // 5)
        return self.opts.base_threshold * self.opts.growing_factor ** (iteration // every)

    def loss_terms(self, iteration: int, plan: Plan, trajectory: torch.Tensor, student: Unrolled) -> dict[str, Any]:
        o = self.opts
        start = trajectory[plan.start].to(self.device)
        target = trajectory[plan.end].to(self.device)
        final = student.params[-1]
        if o.easy_to_complex:
            with torch.no_grad():
                err = (final - target).pow(2)
                self.mask |= err < self.threshold(iteration) * (start - target).pow(2).mean()
            match, used = masked_distance(final, start, target, self.mask, o.min_fraction)
        else:
            match, used = normalised_distance(final, start, target), self.mask
        terms = {"match": (1.0, match), "utilization": (0.0, used.float().mean())}
        if o.potential_weight:
            mid = trajectory[(plan.start + plan.end) // 2].to(self.device)
            expert_pts = torch.stack([start, mid, target])
            student_pts = torch.stack([student.params[0], student.params[len(student.params) // 2], final])
            terms["potential"] = (o.potential_weight, shape_potential(student_pts, expert_pts))
        return terms

    def extra_state(self) -> dict[str, Any]:
        return {"mask": self.mask.cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.mask.copy_(state["mask"].to(self.device))
