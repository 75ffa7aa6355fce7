"""Model augmentation for gradient matching: a pool of pretrained networks and filter-normalised perturbations.

Histo-DD (seed 003, §3.1 "Model augmentation", after Zhang et al., "Accelerating Dataset Distillation via Model
Augmentation", CVPR 2023): a set S of networks is trained on the real data from different initialisations; each
outer step of distillation takes one of them and perturbs its weights by a random direction d drawn from N(0, 1)
and normalised filter by filter (Eq. 2, the filter normalisation of Li et al., "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018):

    d_{l,j} ← d_{l,j} / ‖d_{l,j}‖_F · ‖w_{l,j}‖_F            (Eq. 2)
    θ ← θ + α · d                                            (Eq. 3)

where j runs over the filters (output units) of layer l. As in Li et al., one-dimensional parameters (biases,
normalisation scales and shifts) are not perturbed.

The pool is trained once with the evaluation protocol's training loop and cached on disk under a key made of
everything that determines it (data, network, training settings, seeds), so later runs, resumed runs and other
ipc settings on the same data reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..augment import DiffAugment
from ..evaluation import train_network
from ..presets import Preset
from ..progress import progress_bar
from ..utils import atomic_torch_save

__all__ = ["ModelPool", "default_cache_dir", "filter_normalized_direction", "perturb_"]

logger = logging.getLogger("monai_distill")


def default_cache_dir() -> Path:
    """``$MONAI_DISTILL_CACHE``, else ``~/.cache/monai_distill``."""
    env = os.environ.get("MONAI_DISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "monai_distill"


def filter_normalized_direction(net: torch.nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction with every filter rescaled to its weight's norm (Eq. 2); zero for 1-D parameters.

    Drawn on the CPU from ``generator`` (the same direction on any device), one tensor per parameter.
    """
    directions = []
    for p in net.parameters():
        if p.ndim <= 1:
            directions.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        w = p.detach().reshape(p.shape[0], -1)
        d_rows = d.reshape(p.shape[0], -1)
        scale = w.norm(dim=1, keepdim=True) / (d_rows.norm(dim=1, keepdim=True) + 1e-10)
        directions.append((d_rows * scale).reshape(p.shape))
    return directions


@torch.no_grad()
def perturb_(net: torch.nn.Module, alpha: float, generator: torch.Generator) -> torch.nn.Module:
    """θ ← θ + α·d in place (Eq. 3) with ``d`` from :func:`filter_normalized_direction`; returns ``net``."""
    if alpha == 0:
        return net
    for p, d in zip(net.parameters(), filter_normalized_direction(net, generator)):
        p.add_(d, alpha=alpha)
    return net


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    h.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ModelPool:
    """The set S of networks pretrained on the real data (Histo-DD §3.1), cached on disk.

    Args:
        net_factory: builds a fresh network (the distillation architecture).
        images: the real training images (as the distillation loss sees them, e.g. stain-normalised).
        labels: their class indices.
        size: number of networks (5 in Histo-DD).
        epochs: training epochs of each network.
        lr: training learning rate (the protocol's SGD schedule, :func:`~monai_distill.evaluation.train_network`).
        preset: batch size, momentum, weight decay and DSA of the training loop.
        seed: network i is initialised and trained with seed ``seed * 1000 + i``.
        device: where to train.
        cache_dir: the pool is stored under ``cache_dir/model_pools/<key>/``; ``None`` keeps it in memory only.
        describe: what else determines the networks (architecture name and options), part of the cache key.
    """

    def __init__(
        self,
        net_factory: Callable[[], torch.nn.Module],
        images: torch.Tensor,
        labels: torch.Tensor,
        size: int,
        epochs: int,
        lr: float,
        preset: Preset,
        seed: int,
        device: torch.device,
        cache_dir: str | os.PathLike | None = None,
        describe: dict[str, Any] | None = None,
    ) -> None:
        if size < 1 or epochs < 0:
            raise ValueError(f"a model pool needs size >= 1 and epochs >= 0, got {size}, {epochs}.")
        self.net_factory = net_factory
        self.size, self.epochs, self.lr, self.seed = int(size), int(epochs), float(lr), int(seed)
        settings = {
            "data": _fingerprint(images, labels),
            "epochs": self.epochs,
            "lr": self.lr,
            "seed": self.seed,
            "batch": preset.eval_batch,
            "momentum": preset.momentum,
            "weight_decay": preset.weight_decay,
            "dsa": preset.dsa_strategy if preset.dsa else None,
            **(describe or {}),
        }
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.settings = settings
        self.directory = Path(cache_dir) / "model_pools" / self.key if cache_dir is not None else None
        self.states = [self._load_or_train(i, images, labels, preset, device) for i in range(self.size)]

    def __len__(self) -> int:
        return self.size

    def _load_or_train(
        self, i: int, images: torch.Tensor, labels: torch.Tensor, preset: Preset, device: torch.device
    ) -> dict[str, torch.Tensor]:
        path = self.directory / f"model_{i}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        model_seed = self.seed * 1000 + i
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_seed)
            net = self.net_factory()
        augment = DiffAugment(preset.dsa_strategy) if preset.dsa else None
        gen = torch.Generator().manual_seed(model_seed)
        with progress_bar(total=self.epochs, desc=f"model pool {i + 1}/{self.size}", leave=False) as bar:
            train_network(net, images, labels, self.epochs, self.lr, preset, gen, device, augment=augment,
                          progress=bar)
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if path is not None:
            atomic_torch_save(state, path)
            if i == 0:
                (self.directory / "settings.json").write_text(json.dumps(self.settings, indent=2, default=str) + "\n")
            logger.info("model pool: saved %s", path)
        return state

    def network(self, i: int, device: torch.device) -> torch.nn.Module:
        """A fresh copy of pool network ``i`` (training mode), safe to fine-tune and perturb."""
        with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the global RNG alone
            net = self.net_factory()
        net.load_state_dict(self.states[i])
        return net.to(device).train()
