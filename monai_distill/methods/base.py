"""The distiller interface shared by every method (coresets now, gradient/trajectory matching later)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from .. import __version__
from ..data import ClassBalancedSampler, RealDataset, SyntheticSet
from ..networks import get_network
from ..presets import Preset
from ..utils import Registry

__all__ = ["METHODS", "DistillConfig", "Distiller", "get_method", "method_names"]


@dataclass
class DistillConfig:
    """What every method needs.

    Attributes:
        ipc: images per class.
        arch: network factory name used inside the method (embedding, matching).
        preset: shared hyper-parameters.
        seed: base seed.
        options: method-specific settings (from the bundle's ``method_options``).
        allow_absent_classes: distil only the classes that have real images (per-slide bags: a slide's patches
            carry one class of the cohort); by default every class must hold ``ipc`` images.
    """

    ipc: int
    arch: str = "convnet"
    preset: Preset | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    allow_absent_classes: bool = False


class Distiller:
    """Base class of all methods: ``init_synthetic()``, then ``step(i)`` for ``num_iterations`` steps.

    Subclasses keep everything they need to resume bit-for-bit in :meth:`state_dict`.

    Args:
        real: the real train split.
        cfg: the method's configuration.
        device: where computations run.
    """

    name = "base"
    num_iterations = 0

    def __init__(self, real: RealDataset, cfg: DistillConfig, device: torch.device) -> None:
        if real.is_multilabel:
            raise ValueError(
                f"{real.name} is a multi-label task ('{real.task}'); class-wise distillation needs one label per image."
            )
        if cfg.preset is None:
            raise ValueError("DistillConfig.preset must be set.")
        self.real = real
        self.cfg = cfg
        self.device = device
        self.sampler = ClassBalancedSampler(real)
        self.sampler.check_ipc(cfg.ipc, allow_absent=cfg.allow_absent_classes)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.net_factory = partial(
            get_network,
            cfg.arch,
            real.spatial_dims,
            real.in_channels,
            real.num_classes,
            real.spatial_size,
            width=cfg.preset.width,
            depth=cfg.preset.depth,
            norm=cfg.preset.norm,
        )

    def init_synthetic(self) -> None:
        raise NotImplementedError

    def step(self, iteration: int) -> dict[str, float]:
        raise NotImplementedError(f"{self.name} has no iterative steps.")

    def synthetic_set(self) -> SyntheticSet:
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """Metadata recorded in the SyntheticSet."""
        return {
            "method": self.name,
            "dataset": self.real.name,
            "ipc": self.cfg.ipc,
            "seed": self.cfg.seed,
            "arch": self.cfg.arch,
            "num_classes": self.real.num_classes,
            "class_names": self.real.class_names,
            "mean": self.real.mean,
            "std": self.real.std,
            "spatial_size": list(self.real.spatial_size),
            "size": self.real.extra.get("size"),
            "source": self.real.source,
            "preset": self.cfg.preset.name if self.cfg.preset else None,
            "options": dict(self.cfg.options),
            "version": __version__,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


METHODS: Registry[type[Distiller]] = Registry("method")


def get_method(name: str) -> type[Distiller]:
    """The distiller class registered as ``name`` (unknown names list the valid ones)."""
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()
