"""FTD: flat trajectory distillation (Du et al., "Minimizing the Accumulated Trajectory Error to Improve Dataset
Distillation", CVPR 2023).

MTT's matching (Eq. 1) on *flat* expert trajectories, trained with sharpness-aware GSAM so that the error a student
accumulates along the segment stays small (Sec. 4.2; :class:`~monai_distill.methods.sam.GSAM`), and an exponential
moving average of the synthetic images, ``S_ema ← d · S_ema + (1 − d) · S``, which is what is evaluated and saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import METHODS
from .trajectory import TrajectoryDistiller, TrajectoryOptions

__all__ = ["FTD", "FTDOptions"]


@dataclass
class FTDOptions(TrajectoryOptions):
    """MTT's options plus ``ema_decay`` (0 disables the EMA)."""

    ema_decay: float = 0.999

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")


@METHODS.register("ftd")
class FTD(TrajectoryDistiller):
    """MTT on GSAM experts with an EMA of the synthetic images."""

    name = "ftd"
    options_cls = FTDOptions
    flat_experts = True

    def setup(self) -> None:
        self.ema = self.images.detach().clone()

    def after_update(self, iteration: int) -> None:
        d = self.opts.ema_decay
        with torch.no_grad():
            self.ema.mul_(d).add_(self.images.detach(), alpha=1.0 - d)

    def final_images(self) -> torch.Tensor:
        return self.ema if self.opts.ema_decay > 0 else self.images

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.copy_(state["ema"].to(self.device))
