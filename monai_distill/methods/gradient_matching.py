"""DC and DSA: dataset condensation by layer-wise gradient matching, without and with siamese augmentation.

DC: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021, Algorithm 1.
DSA: Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021, Eq. 4 / Alg. 1.

Each outer iteration starts from a freshly initialised network θ₀ and alternates, ``outer_loop`` times,

1. one update of the synthetic set S on ``Σ_c D(∇θL(A_ω(S_c)), ∇θL(A_ω(T_c)))`` (Eq. 9, with the same
   augmentation draw ω on both sides for DSA, identity for DC), and
2. ``inner_loop`` epochs of SGD of the network on the (detached) synthetic set.

The loop sizes follow the papers' table per images-per-class (``outer_loop``, ``inner_loop`` = 1/1 for ipc 1,
10/50 for ipc 10, 20/25 for 20, 30/20, 40/15, 50/10 for 50); a run is ``iterations`` outer iterations (1000 in
the papers). :class:`GradientMatching` is also the base of Histo-DD, which changes where θ₀ comes from, how
the network is updated and what the augmentation contains.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .base import METHODS
from .image_distiller import ImageDistiller, nearest_ipc
from .matching import GRADIENT_DISTANCES, class_gradient_match

__all__ = ["DC", "DC_LOOPS", "DSA", "GradientMatching"]

# (outer_loop, inner_loop) per ipc: DC/DSA papers (reference code's get_loops).
DC_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


class GradientMatching(ImageDistiller):
    """The outer/inner loop of gradient matching; subclasses choose the network source and update.

    Options (besides :class:`ImageDistiller`'s): ``outer_loop``, ``inner_loop``, ``lr_net``, ``batch_train``
    (batch of the network update), ``distance`` (a name in :data:`~monai_distill.methods.matching.GRADIENT_DISTANCES`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        GRADIENT_DISTANCES.get(self.options["distance"])  # unknown names fail before any work
        for key in ("outer_loop", "inner_loop", "batch_real", "batch_train"):
            if int(self.options[key]) < 1:
                raise ValueError(f"{self.name}: {key} must be >= 1, got {self.options[key]}.")

    # ------------------------------------------------------------------ hooks
    def outer_network(self) -> torch.nn.Module:
        """θ₀ of an outer iteration: a fresh random network (DC/DSA)."""
        return self.fresh_network()

    def network_optimizer(self, net: torch.nn.Module) -> torch.optim.Optimizer:
        """The references' plain SGD for the network between synthetic updates."""
        return torch.optim.SGD(net.parameters(), lr=float(self.options["lr_net"]))

    def update_network(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """DC Alg. 1 line 9: ``inner_loop`` epochs on the synthetic set (DSA: per-image augmentation)."""
        x_all, y_all = self.images.detach(), self.labels.to(self.device)
        n, bs = x_all.shape[0], min(int(self.options["batch_train"]), x_all.shape[0])
        for _ in range(int(self.options["inner_loop"])):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, bs):
                idx = order[start : start + bs].to(self.device)
                x = x_all[idx]
                if self.augment is not None:
                    x = self.augment(x, generator=self.generator)
                loss = F.cross_entropy(net(x), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def class_pair(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A real batch and the synthetic images of class ``c``, both through one siamese DSA draw (DC: none)."""
        return self.siamese(self.real_batch(c, int(self.options["batch_real"])), self.class_images(c))

    # ------------------------------------------------------------------ the loss and the loop
    def matching_loss(self, net: torch.nn.Module) -> torch.Tensor:
        """``Σ_c D(∇θL(A_ω(S_c)), ∇θL(A_ω(T_c)))`` for the network's current weights (DC Eq. 9, DSA Eq. 4)."""
        total = self.images.new_zeros(())
        for c in self.classes:
            x_real, x_syn = self.class_pair(c)
            total = total + class_gradient_match(net, x_real, x_syn, c, self.options["distance"])
        return total

    def step(self, iteration: int) -> dict[str, float]:
        """One outer iteration: ``outer_loop`` synthetic updates, with network updates between them."""
        self._check_initialised()
        net = self.outer_network()
        opt = self.network_optimizer(net)
        outer = int(self.options["outer_loop"])
        losses = []
        for ol in range(outer):
            losses.append(self.update_images(self.matching_loss(net)))
            if ol < outer - 1:  # the last network update would not be used (Alg. 1)
                self.update_network(net, opt)
        self.iteration = iteration + 1
        return {"match": sum(losses) / len(losses), "match_first": losses[0], "match_last": losses[-1]}


_DC_PAPER = {"iterations": 1000, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 256, "batch_train": 256, "distance": "dc"}
# quick: the same loop on a 2-core CPU budget (tens of seconds on a 28 px MedMNIST set).
_DC_QUICK = {"iterations": 20, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 64, "batch_train": 64, "distance": "dc"}
# standard: the benchmark budget, 5x quick's iterations (one 2D cell within 20 min on one core).
_DC_STANDARD = {**_DC_QUICK, "iterations": 100, "batch_real": 128, "batch_train": 128}


@METHODS.register("dc")
class DC(GradientMatching):
    """Dataset condensation with gradient matching (Zhao et al., ICLR 2021): no augmentation in the loss."""

    name = "dc"
    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {**_DC_PAPER, "dsa": False},
        "quick": {**_DC_QUICK, "dsa": False},
        "standard": {**_DC_STANDARD, "dsa": False},
    }

    def ipc_defaults(self, ipc: int) -> dict[str, Any]:
        outer, inner = nearest_ipc(DC_LOOPS, ipc)
        if self.cfg.preset is not None and self.cfg.preset.name == "quick":
            outer, inner = min(outer, 5), min(inner, 5)
        return {"outer_loop": outer, "inner_loop": inner}


@METHODS.register("dsa")
class DSA(DC):
    """DC with differentiable siamese augmentation in the matching loss and in the network updates
    (Zhao & Bilen, ICML 2021)."""

    name = "dsa"
    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {**_DC_PAPER, "dsa": True},
        "quick": {**_DC_QUICK, "dsa": True},
        "standard": {**_DC_STANDARD, "dsa": True},
    }
