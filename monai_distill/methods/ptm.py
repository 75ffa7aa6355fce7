"""PTM: progressive trajectory matching with dynamic overlap mitigation (Yu, Liu & Chen, "Progressive trajectory
matching for medical dataset distillation", arXiv:2403.13469; seed ``000``).

Each part can be switched off (``progressive``, ``overlap``, ``retrain``, ``ce_weight = 0``) for the ablation:

- **progressive matching** (Sec. 3.2, Eqs. 1-3): every matching starts at the experts' initialisation,
  ``θ^S_0 := θ^D_0``; the target epoch ("end step") grows from 1 to ``T = max_end_epoch`` over the first
  ``grow_fraction`` of the iterations (:func:`end_step`), the student takes ``⌈syn_steps·t/T⌉`` steps for end step
  ``t`` (at ``t = T`` as many as MTT's ``syn_steps``: "even if trained to the last T step, our cost is also
  comparable to random matching", Sec. 3.2), and ``L_match = ‖θ^S_t − θ^D_t‖² / ‖θ^D_t − θ^D_0‖²`` (Eq. 3);
- **overlap mitigation** (Sec. 3.3, Eq. 4): each class's synthetic images are split into a foundation half S^f and a
  complement half S^c, and ``L_overlap = Σ_i Σ_j 2k(S^f_i, S^c_j) − k(S^c_i, S^c_j) − k(S^f_i, S^f_j)`` with an RBF
  kernel ``k(a, b) = exp(−‖a − b‖² / 2σ²)·𝕀(same class)`` on the student's features (:func:`overlap_loss`);
- **dynamic retraining** (Sec. 3.3): at the retraining points ``m_i = T − T/(k+1)·i`` (:func:`retraining_points`)
  the complement half is reset to its snapshot from the middle of the previous interval,
  ``S^c_t := S^c_{(m_i + m_{i+1})/2}`` (:func:`retraining_schedule`);
- the total is ``L = L_c + β1·L_match + β2·L_overlap`` (Eq. 5), ``L_c`` being the student's cross-entropy on the
  synthetic batches along the unrolled steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .base import METHODS
from .trajectory import Plan, TrajectoryDistiller, TrajectoryOptions, Unrolled, normalised_distance

__all__ = ["PTM", "PTMOptions", "end_step", "overlap_loss", "retraining_points", "retraining_schedule"]


def end_step(iteration: int, max_end: int, grow_iterations: int) -> int:
    """PTM's progressive end step at ``iteration``: ``min(T, 1 + ⌊T·it / n_grow⌋)``, from 1 up to ``T``."""
    return min(max_end, 1 + (max_end * iteration) // max(1, grow_iterations))


def retraining_points(max_end: int | float, k: int) -> list[float]:
    """``m_i = T − T/(k+1)·i`` for ``i = 1..k`` (PTM Sec. 3.3), in the units of the end step."""
    return [max_end - max_end / (k + 1) * i for i in range(1, k + 1)]


def retraining_schedule(k: int, grow_iterations: int) -> list[tuple[int, int]]:
    """``(snapshot_iteration, retrain_iteration)`` pairs, earliest first.

    The distillation's progress ``τ = T·it / n_grow`` runs from 0 to ``T`` like the end step; retraining point
    ``m_i`` is reached at the first iteration with ``τ ≥ m_i``, and its snapshot is taken where
    ``τ ≥ (m_i + m_{i+1}) / 2`` (``m_{k+1} = 0``): the middle of the previous interval. Exact integer arithmetic
    (``m_i·n/T = n·(k+1−i)/(k+1)``), so the schedule does not depend on ``T``.
    """
    n, pairs = max(1, grow_iterations), []
    for i in range(k, 0, -1):
        retrain = -(-n * (k + 1 - i) // (k + 1))
        snapshot = -(-n * (2 * k + 1 - 2 * i) // (2 * (k + 1)))
        pairs.append((snapshot, retrain))
    return pairs


def _rbf(a: torch.Tensor, b: torch.Tensor, two_sigma_sq: torch.Tensor) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b).pow(2) / two_sigma_sq)


def overlap_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    foundation: torch.Tensor,
    complement: torch.Tensor,
    sigma: float | None = None,
) -> torch.Tensor:
    """PTM Eq. 4: ``Σ 2k(f, c) − k(c, c') − k(f, f')`` over same-class pairs, averaged per class.

    The sums of Eq. 4 are divided by the number of same-class pairs (so the weight β2 does not depend on ipc); the
    value is ``−MMD²`` between the halves and is 0 when they are identical.

    Args:
        features: (N, F) features of all synthetic images.
        labels: (N,) class of each image.
        foundation: indices of S^f.
        complement: indices of S^c.
        sigma: RBF bandwidth; ``None`` takes the median heuristic ``2σ² = median ‖f − c‖²`` (detached).
    """
    if complement.numel() == 0:
        return features.sum() * 0.0
    lab_f, lab_c = labels[foundation], labels[complement]
    f, c = features[foundation], features[complement]
    if sigma is None:
        d2 = torch.cdist(f.detach(), c.detach()).pow(2)
        same = lab_f[:, None] == lab_c[None, :]
        med = d2[same].median() if bool(same.any()) else d2.median()
        two_sigma_sq = med.clamp_min(1e-12)
    else:
        two_sigma_sq = torch.tensor(2.0 * sigma**2, device=features.device)
    terms = []
    for cls in torch.unique(lab_f):
        fi, ci = f[lab_f == cls], c[lab_c == cls]
        if len(ci) == 0:
            continue
        k_fc, k_cc, k_ff = (_rbf(a, b, two_sigma_sq).mean() for a, b in ((fi, ci), (ci, ci), (fi, fi)))
        terms.append(2 * k_fc - k_cc - k_ff)
    return torch.stack(terms).mean() if terms else features.sum() * 0.0


@dataclass
class PTMOptions(TrajectoryOptions):
    """MTT's options plus PTM's.

    Attributes:
        max_end_epoch: ``T``, the last expert epoch matched; the student takes ``⌈syn_steps·t/T⌉`` steps at end
            step ``t``.
        grow_fraction: the end step reaches ``T`` after this fraction of ``num_iterations``.
        progressive: progressive matching from ``θ^D_0``; off = MTT's random window and ``syn_steps``.
        overlap: the overlap-mitigation term.
        retrain: dynamic retraining of the complement half.
        retrain_points: ``k``.
        beta1: weight of ``L_match``.
        beta2: weight of ``L_overlap``.
        ce_weight: weight of ``L_c``.
        sigma: RBF bandwidth of ``L_overlap`` (``None``: median heuristic).
        overlap_features: the network whose features Eq. 4 compares: ``student`` (the unrolled student's last
            parameters, this package's choice: the network the images are being shaped for) or ``expert`` (the
            matched expert checkpoint ``θ^D_t``, a fixed network as in the paper's description of a pretrained
            feature space); validation decides (``tune``).
    """

    max_end_epoch: int = 10
    grow_fraction: float = 1.0
    progressive: bool = True
    overlap: bool = True
    retrain: bool = True
    retrain_points: int = 4
    beta1: float = 1.0
    beta2: float = 0.1
    ce_weight: float = 0.1
    sigma: float | None = None
    overlap_features: str = "student"

    def check(self) -> None:
        super().check()
        if self.overlap_features not in ("student", "expert"):
            raise ValueError(f"overlap_features must be 'student' or 'expert', got '{self.overlap_features}'.")
        if self.max_end_epoch < 1 or self.retrain_points < 0:
            raise ValueError("ptm needs max_end_epoch >= 1 and retrain_points >= 0.")
        if not 0.0 < self.grow_fraction <= 1.0:
            raise ValueError(f"grow_fraction must be in (0, 1], got {self.grow_fraction}.")

    def last_epoch(self) -> int:
        return self.max_end_epoch if self.progressive else super().last_epoch()


@METHODS.register("ptm")
class PTM(TrajectoryDistiller):
    """Progressive trajectory matching with overlap mitigation and dynamic retraining (flat experts, as the seed)."""

    name = "ptm"
    options_cls = PTMOptions
    flat_experts = True

    @property
    def grow_iterations(self) -> int:
        return max(1, round(self.opts.grow_fraction * self.num_iterations))

    def setup(self) -> None:
        ipc, n_found = self.cfg.ipc, math.ceil(self.cfg.ipc / 2)
        rows = torch.arange(self.n_syn).view(self.real.num_classes, ipc)
        self.foundation = rows[:, :n_found].reshape(-1).to(self.device)
        self.complement = rows[:, n_found:].reshape(-1).to(self.device)
        k = self.opts.retrain_points if (self.opts.retrain and self.complement.numel()) else 0
        self.schedule = retraining_schedule(k, self.grow_iterations) if k else []
        self.snapshots: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ the loop
    def plan(self, iteration: int) -> Plan:
        if not self.opts.progressive:
            return super().plan(iteration)
        expert = int(torch.randint(self.experts.num_experts, (1,), generator=self.generator))
        end = end_step(iteration, self.opts.max_end_epoch, self.grow_iterations)
        return Plan(expert, 0, end, max(1, math.ceil(self.opts.syn_steps * end / self.opts.max_end_epoch)))

    def before_step(self, iteration: int) -> None:
        """Snapshot / restore the complement half at the retraining schedule's iterations."""
        for j, (snap_it, retrain_it) in enumerate(self.schedule):
            if iteration == snap_it:
                self.snapshots[j] = self.images.detach()[self.complement].clone()
            if iteration == retrain_it and j in self.snapshots:
                with torch.no_grad():
                    self.images[self.complement] = self.snapshots.pop(j)
                # The SGD momentum of the reset images would carry them straight back to where they were.
                buf = self.opt_img.state.get(self.images, {}).get("momentum_buffer")
                if buf is not None:
                    buf[self.complement] = 0

    def loss_terms(self, iteration: int, plan: Plan, trajectory: torch.Tensor, student: Unrolled) -> dict[str, Any]:
        o = self.opts
        start = trajectory[plan.start].to(self.device)
        target = trajectory[plan.end].to(self.device)
        terms = {"match": (o.beta1, normalised_distance(student.params[-1], start, target))}
        terms["ce"] = (o.ce_weight, torch.stack(student.ce).mean())
        if o.overlap and self.complement.numel():
            net = student.params[-1].detach() if o.overlap_features == "student" else target
            feats = self.fnet.embed(net, self.images)
            terms["overlap"] = (o.beta2, overlap_loss(feats, self.labels, self.foundation, self.complement, o.sigma))
        return terms

    # ------------------------------------------------------------------ resume
    def extra_state(self) -> dict[str, Any]:
        return {"snapshots": {j: s.cpu().clone() for j, s in self.snapshots.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.snapshots = {int(j): s.to(self.device) for j, s in state["snapshots"].items()}
