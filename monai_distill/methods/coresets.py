"""Coreset baselines: random, herding and forgetting selections of real images, as SyntheticSets."""

from __future__ import annotations

from typing import Any

import torch

from ..augment import DiffAugment
from ..data import SyntheticSet
from ..evaluation import map_batches, train_network
from ..progress import progress_bar
from .base import METHODS, Distiller

__all__ = ["Coreset", "ForgettingCoreset", "HerdingCoreset", "RandomCoreset"]


class Coreset(Distiller):
    """A selection of ``ipc`` real images per class; :meth:`select` returns their dataset indices."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.indices: torch.Tensor | None = None

    def select(self) -> torch.Tensor:
        raise NotImplementedError

    def init_synthetic(self) -> None:
        self.indices = self.select()

    def synthetic_set(self) -> SyntheticSet:
        if self.indices is None:
            self.init_synthetic()
        meta = {**self.meta(), "indices": self.indices.tolist()}
        return SyntheticSet(self.real.images[self.indices].clone(), self.real.labels[self.indices].clone(), meta=meta)

    def _trained_network(self, epochs: int, on_batch: Any = None) -> torch.nn.Module:
        """A network trained on the whole real split with the protocol's loop (herding and forgetting)."""
        preset = self.cfg.preset
        torch.manual_seed(self.cfg.seed)
        net = self.net_factory()
        augment = DiffAugment(preset.dsa_strategy) if preset.dsa else None
        with progress_bar(total=epochs, desc=f"{self.name}: training the selection network", leave=False) as bar:
            return train_network(
                net, self.real.images, self.real.labels, epochs, preset.eval_lr, preset, self.generator, self.device,
                augment=augment, on_batch=on_batch, progress=bar,
            )


@METHODS.register("random")
class RandomCoreset(Coreset):
    """``ipc`` real images drawn uniformly without replacement from each class."""

    name = "random"

    def select(self) -> torch.Tensor:
        return self.sampler.balanced_indices(self.cfg.ipc, self.generator)


@METHODS.register("herding")
class HerdingCoreset(Coreset):
    """Herding (Welling, ICML 2009) in the embedding space of a network trained on the real data.

    Per class, greedily adds the image whose inclusion brings the running mean of the selected embeddings
    closest to the class mean embedding: ``argmin_i || mu - (sum_selected + f_i) / (t + 1) ||``.
    """

    name = "herding"

    @torch.no_grad()
    def _embed(self, net: torch.nn.Module) -> torch.Tensor:
        return map_batches(net.embed, self.real.images, self.device)

    def select(self) -> torch.Tensor:
        net = self._trained_network(self.cfg.preset.embed_epochs)
        feats = self._embed(net)
        chosen = []
        for c in range(self.real.num_classes):
            idx = self.real.indices_of_class(c)
            f = feats[idx]
            mu = f.mean(0)
            total = torch.zeros_like(mu)
            available = torch.ones(len(idx), dtype=torch.bool)
            for t in range(self.cfg.ipc):
                dist = ((mu - (total + f) / (t + 1)) ** 2).sum(1)
                dist[~available] = float("inf")
                j = int(dist.argmin())
                available[j] = False
                total += f[j]
                chosen.append(int(idx[j]))
        return torch.tensor(chosen, dtype=torch.long)


@METHODS.register("forgetting")
class ForgettingCoreset(Coreset):
    """Forgetting events (Toneva et al., ICLR 2019): per class, the images forgotten most often in training.

    A forgetting event is a presentation at which an image that was classified correctly at its previous
    presentation is misclassified. Images never learned count as forgotten at every presentation (the paper
    ranks them as the most forgettable); ties are broken at random with the method's generator.
    """

    name = "forgetting"

    def select(self) -> torch.Tensor:
        n = len(self.real)
        prev_correct = torch.zeros(n, dtype=torch.bool)
        ever_learned = torch.zeros(n, dtype=torch.bool)
        forgets = torch.zeros(n, dtype=torch.long)
        presentations = torch.zeros(n, dtype=torch.long)
        labels = self.real.labels

        def on_batch(idx: torch.Tensor, logits: torch.Tensor, epoch: int) -> None:
            correct = logits.argmax(1).cpu() == labels[idx]
            forgets[idx] += (prev_correct[idx] & ~correct).long()
            prev_correct[idx] = correct
            ever_learned[idx] |= correct
            presentations[idx] += 1

        self._trained_network(self.cfg.preset.forgetting_epochs, on_batch=on_batch)
        score = torch.where(ever_learned, forgets, presentations).float()
        chosen = []
        for c in range(self.real.num_classes):
            idx = self.real.indices_of_class(c)
            jitter = torch.rand(len(idx), generator=self.generator)  # tie-break, < 1 so counts dominate
            order = torch.argsort(score[idx] + jitter, descending=True)
            chosen.append(idx[order[: self.cfg.ipc]])
        return torch.cat(chosen)
