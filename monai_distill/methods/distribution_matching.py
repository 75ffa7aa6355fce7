"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023, Eq. 4-5).

Each iteration samples a randomly initialised embedding network ψ_θ (its weights are never trained) and one DSA
draw ω per class, and minimises the squared distance between the mean embeddings of the real and the synthetic
images of every class:

    L = Σ_c ‖ (1/|B_c^T|) Σ_{x ∈ B_c^T} ψ_θ(A_ω(x)) − (1/|S_c|) Σ_{s ∈ S_c} ψ_θ(A_ω(s)) ‖²

with ψ_θ the network's penultimate features (``net.embed``). One iteration = one network and one update of the
synthetic set (20 000 iterations, lr 1.0, momentum 0.5, 256 real images per class in the paper).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import METHODS
from .image_distiller import ImageDistiller

__all__ = ["DM"]


@METHODS.register("dm")
class DM(ImageDistiller):
    """Distribution matching of mean embeddings of randomly initialised networks, with siamese DSA."""

    name = "dm"
    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"iterations": 20000, "lr_img": 1.0, "batch_real": 256},
        "quick": {"iterations": 200, "lr_img": 1.0, "batch_real": 64},
        "standard": {"iterations": 1000, "lr_img": 1.0, "batch_real": 128},
    }

    def matching_loss(self, net: torch.nn.Module) -> torch.Tensor:
        """Eq. 5: Σ_c of the squared distance of the mean embeddings under one shared augmentation per class."""
        total = self.images.new_zeros(())
        for c in self.classes:
            x_real, x_syn = self.siamese(self.real_batch(c, int(self.options["batch_real"])), self.class_images(c))
            with torch.no_grad():
                mu_real = net.embed(x_real).mean(0)
            total = total + ((mu_real - net.embed(x_syn).mean(0)) ** 2).sum()
        return total

    def step(self, iteration: int) -> dict[str, float]:
        self._check_initialised()
        net = self.fresh_network()
        net.requires_grad_(False)  # the embedding network is a fixed random function
        loss = self.update_images(self.matching_loss(net))
        self.iteration = iteration + 1
        return {"match": loss}
