"""What DC, DSA, DM and Histo-DD share: learnable synthetic pixels, their optimiser, options and resumable state.

Each method declares its defaults per preset (``quick`` for a 2-core CPU, ``paper`` for the papers' settings) and
per images-per-class where the papers tie a setting to ipc; ``cfg.options`` (the bundle's ``method_options``)
override them, and an unknown option is an error that lists the valid ones.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch

from ..augment import AugSample, DiffAugment
from ..checks import option_bool, option_float, option_int
from ..data import SyntheticSet
from .base import Distiller

__all__ = ["ImageDistiller", "nearest_ipc"]


def nearest_ipc(table: dict[int, Any], ipc: int) -> Any:
    """The entry of an ipc-keyed table whose key is closest to ``ipc`` (ties: the smaller key)."""
    return table[min(table, key=lambda k: (abs(k - ipc), k))]


def _cast(value: Any, default: Any, key: str) -> Any:
    """Bring a config/CLI value to the type of its default (JSON and ``--key value`` give strings or ints).

    ``1.7`` for an integer option or ``maybe`` for a boolean one is refused (an :class:`OptionError`, a
    ``ValueError``), not truncated or guessed.
    """
    if default is None or value is None:
        return value
    name = f"method option '{key}'"
    if isinstance(default, bool):
        return option_bool(value, name)
    if isinstance(default, int):
        return option_int(value, name)
    if isinstance(default, float):
        return option_float(value, name)
    return value


class ImageDistiller(Distiller):
    """Base of the methods that optimise synthetic images directly with SGD on a matching loss.

    Subclasses set ``DEFAULTS`` (preset name -> option defaults) and may add ipc-dependent defaults in
    :meth:`ipc_defaults`; they implement :meth:`step`. Options every subclass has:

    ``iterations`` (outer iterations, the workflow's ``num_iterations``), ``lr_img``, ``momentum_img``,
    ``batch_real`` (real images per class per matching step), ``init`` (``real`` or ``noise``), ``dsa`` and
    ``dsa_strategy`` (siamese augmentation inside the loss).
    """

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    COMMON: ClassVar[dict[str, Any]] = {
        "momentum_img": 0.5,
        "init": "real",
        "dsa": True,
        "dsa_strategy": "color_crop_cutout_flip_scale_rotate",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = self.resolve_options()
        self.num_iterations = int(self.options["iterations"])
        if self.num_iterations < 0:
            raise ValueError(f"{self.name}: iterations must be >= 0, got {self.num_iterations}.")
        if self.options["init"] not in ("real", "noise"):
            raise ValueError(f"{self.name}: init must be 'real' or 'noise', got '{self.options['init']}'.")
        self.augment = DiffAugment(self.options["dsa_strategy"]) if self.options["dsa"] else None
        # Classes with real images: all of them for a dataset; a single slide's patches may hold only some (the
        # per-slide bags), and a class without real images has nothing to be distilled from.
        self.classes = [c for c, n in enumerate(self.real.class_counts()) if n > 0]
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.init_indices: torch.Tensor | None = None
        self.image_opt: torch.optim.Optimizer | None = None
        self.iteration = 0

    # ------------------------------------------------------------------ options
    def ipc_defaults(self, ipc: int) -> dict[str, Any]:
        """Defaults that the papers tie to the number of images per class (none by default)."""
        return {}

    def default_options(self) -> dict[str, Any]:
        preset = self.cfg.preset.name if self.cfg.preset else "paper"
        table = self.DEFAULTS.get(preset, self.DEFAULTS.get("paper", {}))
        return {**self.COMMON, **table, **self.ipc_defaults(self.cfg.ipc)}

    def resolve_options(self) -> dict[str, Any]:
        """Defaults for the preset and ipc, overridden by ``cfg.options`` (cast to the defaults' types; an option
        given as ``None``/``null`` keeps its default, so a bundle can expose a key whose default is the preset's)."""
        opts = self.default_options()
        unknown = sorted(set(self.cfg.options) - set(opts))
        if unknown:
            raise KeyError(f"unknown {self.name} option(s) {unknown}; valid options: {', '.join(sorted(opts))}.")
        for key, value in self.cfg.options.items():
            if value is not None:
                opts[key] = _cast(value, opts[key], key)
        return opts

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "options": dict(self.options)}

    # ------------------------------------------------------------------ synthetic images
    def init_synthetic(self) -> None:
        """Real-sample init: ``ipc`` random real images per class (the same draw as the ``random`` coreset with
        the same seed, so "distilled vs random" compares against the starting point), or Gaussian noise."""
        ipc, k = self.cfg.ipc, len(self.classes)
        self.init_indices = torch.cat([self.sampler.sample_indices(c, ipc, self.generator) for c in self.classes])
        if self.options["init"] == "real":
            images = self.real.images[self.init_indices].clone()
        else:
            shape = (k * ipc, *self.real.images.shape[1:])
            images = torch.randn(shape, generator=self.generator)
        self.labels = torch.tensor(self.classes, dtype=torch.long).repeat_interleave(ipc)
        self.images = images.to(self.device).requires_grad_(True)
        self.image_opt = torch.optim.SGD(
            [self.images], lr=float(self.options["lr_img"]), momentum=float(self.options["momentum_img"])
        )

    def _check_initialised(self) -> None:
        if self.images is None:
            self.init_synthetic()

    def class_images(self, c: int) -> torch.Tensor:
        """The synthetic images of class ``c`` (a view of the learnable tensor)."""
        i = self.classes.index(c) * self.cfg.ipc
        return self.images[i : i + self.cfg.ipc]

    def real_batch(self, c: int, n: int) -> torch.Tensor:
        """``n`` real images of class ``c``, drawn with the method's generator, on the device."""
        idx = self.sampler.sample_indices(c, n, self.generator)
        return self.real.images[idx].to(self.device, non_blocking=True)

    def siamese(self, x_real: torch.Tensor, x_syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One DSA draw applied to both batches (DSA, Zhao & Bilen 2021, Eq. 4), or both unchanged."""
        if self.augment is None:
            return x_real, x_syn
        s: AugSample = self.augment.sample(self.real.spatial_dims, generator=self.generator)
        return self.augment.apply(x_real, s), self.augment.apply(x_syn, s)

    def fresh_network(self) -> torch.nn.Module:
        """A randomly initialised network seeded from the method's generator (global RNG left untouched)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = self.net_factory()
        return net.to(self.device).train()

    def matching_loss(self, net: torch.nn.Module) -> torch.Tensor:
        """The method's loss for the current synthetic set under ``net`` (differentiable w.r.t. the images)."""
        raise NotImplementedError

    def monitor_loss(self, nets: list[torch.nn.Module], seed: int = 0) -> float:
        """Mean :meth:`matching_loss` over fixed ``nets`` with real batches and augmentations drawn from ``seed``.

        The same nets and seed before and after distillation compare like with like (the method's own
        generator is left untouched, so monitoring does not change the run).
        """
        self._check_initialised()
        own = self.generator
        self.generator = torch.Generator().manual_seed(seed)
        try:
            return sum(float(self.matching_loss(net.to(self.device)).detach()) for net in nets) / len(nets)
        finally:
            self.generator = own

    def update_images(self, loss: torch.Tensor) -> float:
        """One optimiser step on the synthetic images; only their gradient is computed (not the network's)."""
        value = float(loss.detach())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.name}: the matching loss became {value} at iteration {self.iteration}; "
                f"lower lr_img (now {self.options['lr_img']})."
            )
        (grad,) = torch.autograd.grad(loss, [self.images])
        self.image_opt.zero_grad(set_to_none=True)
        self.images.grad = grad
        self.image_opt.step()
        return value

    def synthetic_set(self) -> SyntheticSet:
        self._check_initialised()
        meta = {**self.meta(), "init_indices": self.init_indices.tolist(), "iterations_done": self.iteration}
        return SyntheticSet(self.images.detach().cpu().clone(), self.labels.clone(), meta=meta)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: images, their optimiser, the generator, the iteration."""
        self._check_initialised()
        return {
            **super().state_dict(),
            "method": self.name,
            "iteration": self.iteration,
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.clone(),
            "init_indices": self.init_indices.clone(),
            # A copy: the optimiser's state holds the live momentum buffers, which later steps update in place.
            "image_opt": copy.deepcopy(self.image_opt.state_dict()),
            "options": dict(self.options),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"this checkpoint is of method '{state.get('method')}', not '{self.name}'.")
        self._check_initialised()
        if tuple(state["images"].shape) != tuple(self.images.shape):
            raise ValueError(
                f"checkpoint images have shape {tuple(state['images'].shape)}, this run needs "
                f"{tuple(self.images.shape)} (different ipc or dataset?)."
            )
        super().load_state_dict(state)
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        self.labels = state["labels"].clone()
        self.init_indices = state["init_indices"].clone()
        self.image_opt.load_state_dict(state["image_opt"])
        self.iteration = int(state["iteration"])
