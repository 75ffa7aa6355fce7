"""DATM: difficulty-aligned trajectory matching (Guo et al., "Towards Lossless Dataset Distillation via
Difficulty-Aligned Trajectory Matching", ICLR 2024).

Three changes to MTT (Eq. 1 is unchanged):

- **soft labels initialised from an expert**: the synthetic images start as real images that the expert at
  ``label_epoch`` classifies correctly, their labels are that expert's logits (averaged over the experts that are
  right), learned with their own SGD, and the student is trained on ``softmax(logits)`` (Sec. 4.2);
- **a start window that moves with difficulty**: the upper bound of the start epoch grows linearly from
  ``current_max_start_epoch`` to ``max_start_epoch`` by ``expansion_end_iteration`` (easy, early segments first;
  larger ipc budgets use a later ``min_start_epoch``) (Sec. 4.1);
- updates from a segment whose matching loss exceeds ``loss_threshold`` are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..utils import inference_batch_size
from .base import METHODS
from .trajectory import Plan, TrajectoryDistiller, TrajectoryOptions

__all__ = ["DATM", "DATMOptions"]


@dataclass
class DATMOptions(TrajectoryOptions):
    """MTT's options plus DATM's.

    Attributes:
        label_epoch: expert epoch whose predictions select the initial images and give the initial label logits;
            default ``max_start_epoch``.
        label_experts: at most this many experts average their logits for the initial labels.
        lr_y: SGD step of the label logits.
        momentum_y: SGD momentum of the label logits (DATM: 0.9).
        current_max_start_epoch: initial upper bound of the start epoch; default ``min_start_epoch + 1``.
        expansion_end_iteration: iteration at which the upper bound reaches ``max_start_epoch``; default 3/4 of
            ``num_iterations``.
        loss_threshold: skip the update when the matching loss is above this (DATM's ``threshold``).
    """

    label_epoch: int | None = None
    label_experts: int = 10
    lr_y: float = 2.0
    momentum_y: float = 0.9
    current_max_start_epoch: int | None = None
    expansion_end_iteration: int | None = None
    loss_threshold: float = float("inf")


@METHODS.register("datm")
class DATM(TrajectoryDistiller):
    """MTT with learned soft labels and a start window that widens over distillation."""

    name = "datm"
    options_cls = DATMOptions

    # ---------------------------------------------------------------- set-up
    def _label_epoch(self) -> int:
        e = self.opts.label_epoch
        return self.opts.max_start_epoch if e is None else int(e)

    def _label_thetas(self) -> list[torch.Tensor]:
        epoch = self._label_epoch()
        n = min(self.opts.label_experts, self.experts.num_experts)
        return [self.experts.trajectory(i)[epoch].to(self.device) for i in range(n)]

    @torch.no_grad()
    def _correct_images(self, thetas: list[torch.Tensor]) -> torch.Tensor:
        """Per class, ``ipc`` real images that one of the experts classifies correctly (others when too few)."""
        chosen, bs = [], inference_batch_size(self.real.images.shape[1:])
        for c in range(self.real.num_classes):
            idx = self.sampler.indices[c][torch.randperm(len(self.sampler.indices[c]), generator=self.generator)]
            right = torch.zeros(len(idx), dtype=torch.bool)
            for theta in thetas:  # the next expert only when the previous ones found too few, as DATM
                for s in range(0, len(idx), bs):
                    part = idx[s : s + bs]
                    right[s : s + bs] |= self.fnet(theta, self.real.images[part].to(self.device)).argmax(1).cpu() == c
                    if int(right.sum()) >= self.cfg.ipc:
                        break
                if int(right.sum()) >= self.cfg.ipc:
                    break
            chosen.append(torch.cat([idx[right], idx[~right]])[: self.cfg.ipc])
        return torch.cat(chosen)

    @torch.no_grad()
    def _expert_logits(self, thetas: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Mean logits over the experts that classify each image correctly.

        An image no expert gets right keeps its class as a smoothed one-hot label (``log`` of 0.9 / rest), so that a
        soft label never names another class than the image's (DATM loops over experts until every image is right,
        which can take forever on a small, imbalanced medical set).
        """
        logits = torch.stack([self.fnet(theta, images) for theta in thetas])
        right = (logits.argmax(2) == self.labels).float().unsqueeze(2)  # (experts, N, 1)
        counts = right.sum(0)
        mean_right = (logits * right).sum(0) / counts.clamp_min(1)
        k = self.real.num_classes
        smooth = torch.full_like(mean_right, 0.1 / max(1, k - 1)).scatter_(1, self.labels[:, None], 0.9).log()
        return torch.where(counts > 0, mean_right, smooth)

    def setup(self) -> None:
        if self._label_epoch() > self.buffer_settings.epochs:
            raise ValueError(f"datm label_epoch {self._label_epoch()} exceeds buffers.epochs.")
        thetas = self._label_thetas()
        if self.opts.init == "real":
            with torch.no_grad():
                self.images.copy_(self.real.images[self._correct_images(thetas)].to(self.device))
        self.label_logits = self._expert_logits(thetas, self.images.detach()).clone().requires_grad_(True)
        self.opt_y = torch.optim.SGD([self.label_logits], lr=self.opts.lr_y, momentum=self.opts.momentum_y)

    # ------------------------------------------------------------------ the loop
    def targets(self) -> torch.Tensor:
        return torch.softmax(self.label_logits, dim=1)

    def trainable(self) -> list[tuple[str, torch.Tensor, torch.optim.Optimizer]]:
        return [*super().trainable(), ("labels", self.label_logits, self.opt_y)]

    def upper_bound(self, iteration: int) -> int:
        """DATM's sequential generation: the start window's upper bound at ``iteration``."""
        o = self.opts
        lo = o.min_start_epoch + 1 if o.current_max_start_epoch is None else int(o.current_max_start_epoch)
        end = o.expansion_end_iteration or max(1, (3 * o.num_iterations) // 4)
        grown = lo + int((o.max_start_epoch - lo) * iteration / end)
        return max(o.min_start_epoch, min(grown, o.max_start_epoch))

    def plan(self, iteration: int) -> Plan:
        o = self.opts
        expert = int(torch.randint(self.experts.num_experts, (1,), generator=self.generator))
        start = int(torch.randint(o.min_start_epoch, self.upper_bound(iteration) + 1, (1,), generator=self.generator))
        return Plan(expert, start, start + o.expert_epochs, o.syn_steps)

    def update_allowed(self, total: torch.Tensor) -> bool:
        return bool(total <= self.opts.loss_threshold)

    # ------------------------------------------------------------------ product / resume
    def final_labels(self) -> torch.Tensor:
        return torch.softmax(self.label_logits.detach(), dim=1)

    def extra_state(self) -> dict[str, Any]:
        return {"label_logits": self.label_logits.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.label_logits.copy_(state["label_logits"].to(self.device))
