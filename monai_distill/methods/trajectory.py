"""What every trajectory-matching distiller shares: one functional forward, the unrolled student, the learned lr.

MTT (Cazenavette et al., CVPR 2022), FTD, DATM, PTM and HoP-TM all do, per iteration: pick an expert trajectory and
a segment ``θ^D_s → θ^D_e`` of it; start a student at ``θ^S_0 = θ^D_s``; take ``N`` SGD steps on augmented
synthetic batches, ``θ^S_{j+1} = θ^S_j − η ∇ℓ(A(S); θ^S_j)`` (MTT Eq. 2, PTM Eq. 2) with the graph kept; and
update the images (and the lr η) through a loss on the student's parameters, usually the normalised distance
``‖θ^S_N − θ^D_e‖² / ‖θ^D_s − θ^D_e‖²`` (MTT Eq. 1, PTM Eq. 3). :class:`TrajectoryDistiller` implements that loop
once; methods override :meth:`TrajectoryDistiller.plan` (which segment) and
:meth:`TrajectoryDistiller.loss_terms` (which loss), plus small hooks.

The student is the registered network evaluated with :func:`torch.func.functional_call` at a flat parameter vector
(:class:`FunctionalNet`), so any architecture of :mod:`monai_distill.networks`, 2D or 3D, can be matched.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..augment import DiffAugment
from ..data import SyntheticSet
from .base import DistillConfig, Distiller
from .buffers import BufferSettings, ExpertBuffer

__all__ = [
    "DivergenceError",
    "FunctionalNet",
    "Plan",
    "TrajectoryDistiller",
    "TrajectoryOptions",
    "normalised_distance",
]


class DivergenceError(FloatingPointError):
    """A loss term or gradient became NaN/inf; the message names the method, iteration and term."""


class _EmbedView(nn.Module):
    """``forward = net.embed``, so that ``functional_call`` can evaluate the penultimate features too."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


class FunctionalNet:
    """A network evaluated at a flat parameter vector with :func:`torch.func.functional_call`.

    The flat layout is the order of ``net.parameters()``, the layout of the expert buffers
    (:func:`~monai_distill.methods.buffers.flat_parameters`). Buffers (e.g. batch-norm statistics) are taken from
    the module as they are.

    Args:
        net: a network of :func:`~monai_distill.networks.get_network` on the target device.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        named = list(net.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)
        self._embed = _EmbedView(net)

    def unflatten(self, flat: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
        if flat.numel() != self.num_params:
            raise ValueError(f"a flat vector of {flat.numel()} values cannot be the {self.num_params} parameters.")
        parts = torch.split(flat, self.numels)
        out = {prefix + n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}
        out.update({prefix + n: b for n, b in self.net.named_buffers()})
        return out

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the network at parameters ``flat``."""
        return functional_call(self.net, self.unflatten(flat), (x,))

    def embed(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of the network at parameters ``flat``."""
        return functional_call(self._embed, self.unflatten(flat, prefix="net."), (x,))


def normalised_distance(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖θ^S − θ^D_e‖² / ‖θ^D_s − θ^D_e‖²`` (MTT Eq. 1; PTM Eq. 3 with ``θ^D_s = θ^D_0``).

    Raises:
        DivergenceError: the expert did not move between start and target (aliased snapshots or a zero segment),
            which would divide by zero.
    """
    den = (start - target).pow(2).sum()
    if not bool(den > 0):
        raise DivergenceError(
            "the expert segment has zero length (start and target snapshots are identical); rebuild the buffer."
        )
    return (student - target).pow(2).sum() / den


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class indices (N,) or probabilities (N, K)."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# How the learned lr is stored: ``name -> (parameter of a positive lr, lr of a parameter tensor)``.
LR_PARAMETERISATIONS: dict[str, tuple[Callable[[float], float], Callable[[torch.Tensor], torch.Tensor]]] = {
    "log": (math.log, torch.exp),
    "linear": (float, torch.clone),
}


@dataclass
class TrajectoryOptions:
    """Settings shared by every trajectory method (MTT's names; values come from ``configs/`` and the bundle).

    Attributes:
        num_iterations: distillation iterations (outer steps).
        syn_steps: student SGD steps per iteration.
        expert_epochs: length of the matched expert segment, in epochs.
        min_start_epoch: lowest start epoch of a segment.
        max_start_epoch: start epochs are drawn from ``[min_start_epoch, max_start_epoch]``.
        lr_img: SGD step of the synthetic images.
        img_momentum: SGD momentum of the images and of the lr (MTT: 0.5).
        lr_lr: SGD step of the learned lr's parameter (``log η`` by default; 0 keeps the initial lr).
        lr_param: ``log``: the learned lr is ``η = exp(log η)``, always positive and stepped relatively (DESIGN,
            lessons: a learned lr updated directly can cross zero and crash SGD); ``linear``: MTT's form, ``η`` itself
            is stepped (the reference uses a tiny ``lr_lr``, e.g. 1e-5 to 1e-7). Both are projected into
            ``[min_lr, max_lr]``; validation decides between them (``tune``).
        lr_init: initial learned lr; default the experts' lr.
        batch_syn: synthetic images per student step; default all of them.
        init: ``real`` (random real images of each class, the same draw as the ``random`` coreset with the same
            seed) or ``noise``.
        dsa: augment the student's batches with DSA.
        buffer_dir: root of the expert buffers (the bundle's ``buffer_dir``).
        buffers: :class:`~monai_distill.methods.buffers.BufferSettings` fields.
        min_lr: the learned lr is projected into ``[min_lr, max_lr]`` after each update; default
            ``lr_range[0] · η_0``. Unbounded, ``η`` collapsed on BreastMNIST (MTT, 0.01 → 1.2e-4 in 500 iterations):
            when the synthetic images do not yet move the student toward the target, a smaller step is the cheapest
            way to lower the normalised distance (η → 0 gives distance 1), and a collapsed η leaves the images
            nothing to learn from; a lr that grows without bound diverges.
        max_lr: see ``min_lr``; default ``lr_range[1] · η_0``.
        lr_range: the bounds of the learned lr relative to its start ``η_0`` when ``min_lr`` / ``max_lr`` are not
            given.
    """

    num_iterations: int = 500
    syn_steps: int = 20
    expert_epochs: int = 2
    min_start_epoch: int = 0
    max_start_epoch: int = 10
    lr_img: float = 100.0
    img_momentum: float = 0.5
    lr_lr: float = 0.01
    lr_param: str = "log"
    lr_init: float | None = None
    batch_syn: int | None = None
    init: str = "real"
    dsa: bool = True
    buffer_dir: str = "runs/buffers"
    buffers: dict[str, Any] = field(default_factory=dict)
    min_lr: float | None = None
    max_lr: float | None = None
    lr_range: tuple[float, float] = (0.2, 5.0)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], method: str) -> TrajectoryOptions:
        """Build from ``method_options``; unknown keys raise a ``KeyError`` that lists the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise KeyError(f"unknown option(s) {unknown} for method '{method}'; valid: {', '.join(sorted(valid))}.")
        opts = cls(**dict(values))
        opts.check()
        return opts

    def check(self) -> None:
        if self.num_iterations < 0 or self.syn_steps < 1 or self.expert_epochs < 1:
            raise ValueError("need num_iterations >= 0, syn_steps >= 1 and expert_epochs >= 1.")
        if not 0 <= self.min_start_epoch <= self.max_start_epoch:
            raise ValueError(f"need 0 <= min_start_epoch <= max_start_epoch, got {self.min_start_epoch}, "
                             f"{self.max_start_epoch}.")
        lo, hi = (float(v) for v in self.lr_range)
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"need 0 < lr_range[0] <= 1 <= lr_range[1], got {list(self.lr_range)}.")
        if (self.min_lr is not None and self.min_lr <= 0) or (
            self.min_lr is not None and self.max_lr is not None and not self.min_lr < self.max_lr
        ):
            raise ValueError(f"need 0 < min_lr < max_lr, got {self.min_lr}, {self.max_lr}.")
        if self.lr_param not in LR_PARAMETERISATIONS:
            raise ValueError(f"lr_param must be one of {sorted(LR_PARAMETERISATIONS)}, got '{self.lr_param}'.")
        if self.init not in ("real", "noise"):
            raise ValueError(f"init must be 'real' or 'noise', got '{self.init}'.")

    def lr_bounds(self, lr0: float) -> tuple[float, float]:
        """``[min_lr, max_lr]`` of the learned lr that starts at ``lr0``."""
        lo = self.min_lr if self.min_lr is not None else self.lr_range[0] * lr0
        hi = self.max_lr if self.max_lr is not None else self.lr_range[1] * lr0
        return float(lo), float(max(hi, lo * (1 + 1e-6)))

    def last_epoch(self) -> int:
        """The last expert epoch this method reads."""
        return self.max_start_epoch + self.expert_epochs


@dataclass(frozen=True)
class Plan:
    """One iteration's matching segment: expert, start and target epoch, and student steps."""

    expert: int
    start: int
    end: int
    syn_steps: int


@dataclass
class Unrolled:
    """The student's parameters ``θ^S_0..θ^S_N`` (with graph) and the cross-entropy of each step."""

    params: list[torch.Tensor]
    ce: list[torch.Tensor]


class TrajectoryDistiller(Distiller):
    """Base class of the trajectory-matching methods (see the module docstring for the loop).

    Subclasses set ``name`` and ``options_cls``, and override :meth:`plan` and :meth:`loss_terms`; optional hooks
    are :meth:`setup` (after the synthetic set exists), :meth:`before_step`, :meth:`after_update`,
    :meth:`extra_state` / :meth:`load_extra_state` and :meth:`final_images`.
    """

    name = "trajectory"
    options_cls: ClassVar[type[TrajectoryOptions]] = TrajectoryOptions
    flat_experts = False  # default of buffers.flat when the config does not say
    uses_buffers = True  # read by the workflows: pass buffer_dir, allow buffers.json

    def __init__(self, real: Any, cfg: DistillConfig, device: torch.device) -> None:
        super().__init__(real, cfg, device)
        self.opts = self.options_cls.from_dict(cfg.options, self.name)
        self.num_iterations = int(self.opts.num_iterations)
        self.buffer_settings = BufferSettings.from_dict({"flat": self.flat_experts, **self.opts.buffers})
        if self.buffer_settings.epochs < self.opts.last_epoch():
            raise ValueError(
                f"{self.name} reads expert epoch {self.opts.last_epoch()} but buffers.epochs is "
                f"{self.buffer_settings.epochs}; raise buffers.epochs or lower the start/end epochs."
            )
        self.fnet = FunctionalNet(self.net_factory().to(device))
        self.augment = DiffAugment(cfg.preset.dsa_strategy) if self.opts.dsa else None
        self.n_syn = cfg.ipc * real.num_classes
        self.batch_syn = min(int(self.opts.batch_syn or self.n_syn), self.n_syn)
        self.experts: ExpertBuffer | None = None
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.lr_raw: torch.Tensor | None = None  # the learned lr's parameter (``log η`` or ``η``, see lr_param)
        self.iteration = 0

    # ------------------------------------------------------------------ experts
    def buffer_spec(self) -> dict[str, Any]:
        """What the expert trajectories depend on besides :class:`BufferSettings`."""
        p = self.cfg.preset
        return {
            "dataset": self.real.name,
            "n_train": len(self.real),
            "spatial_size": list(self.real.spatial_size),
            "in_channels": self.real.in_channels,
            "num_classes": self.real.num_classes,
            "arch": self.cfg.arch,
            "width": p.width,
            "depth": p.depth,
            "norm": p.norm,
            "dsa_strategy": p.dsa_strategy,
            "num_params": self.fnet.num_params,
        }

    def expert_buffer(self) -> ExpertBuffer:
        spec = self.buffer_spec()
        return ExpertBuffer(ExpertBuffer.directory_for(self.opts.buffer_dir, spec, self.buffer_settings), spec)

    def build_experts(self, progress: bool = True) -> ExpertBuffer:
        """Train the experts that are missing (this rank's share) and load the buffer."""
        buf = self.expert_buffer()
        buf.build(self.real, self.net_factory, self.buffer_settings, self.cfg.preset, self.device, progress=progress)
        return buf.load(self.buffer_settings)

    # ---------------------------------------------------------------- set-up
    def init_synthetic(self) -> None:
        """Load (or build) the experts, initialise images, labels and the learned lr, then :meth:`setup`."""
        self.experts = self.build_experts()
        if self.experts.num_params != self.fnet.num_params:
            raise ValueError(f"experts have {self.experts.num_params} parameters, the network {self.fnet.num_params}.")
        c, ipc = self.real.num_classes, self.cfg.ipc
        self.init_indices: torch.Tensor | None = None
        if self.opts.init == "real":
            # The random coreset's first draw with the same seed: a trajectory method starts from that coreset.
            self.init_indices = self.sampler.balanced_indices(ipc, self.generator)
            images = self.real.images[self.init_indices].clone()
        else:
            images = torch.randn((c * ipc, *self.real.images.shape[1:]), generator=self.generator)
        self.images = images.to(self.device).requires_grad_(True)
        self.labels = torch.arange(c).repeat_interleave(ipc).to(self.device)
        lr0 = float(self.opts.lr_init or self.buffer_settings.lr)
        to_raw, self._from_raw = LR_PARAMETERISATIONS[self.opts.lr_param]
        self.lr_raw = torch.tensor(to_raw(lr0), device=self.device).requires_grad_(True)
        self.lr_raw_bounds = tuple(to_raw(b) for b in self.opts.lr_bounds(lr0))
        self.opt_img = torch.optim.SGD([self.images], lr=self.opts.lr_img, momentum=self.opts.img_momentum)
        self.opt_lr = torch.optim.SGD([self.lr_raw], lr=self.opts.lr_lr, momentum=self.opts.img_momentum)
        self.setup()

    def expert_network(self, index: int = 0) -> nn.Module:
        """Expert ``index`` at its last epoch as a module (a network trained on the whole real train split)."""
        if self.experts is None:
            raise RuntimeError(f"{self.name}: the experts are not loaded; call init_synthetic() first.")
        net = copy.deepcopy(self.fnet.net)
        last = self.experts.trajectory(index)[-1].to(self.device).float()
        torch.nn.utils.vector_to_parameters(last, net.parameters())
        return net

    def setup(self) -> None:
        """Method-specific state once images and labels exist (soft labels, halves, masks, EMA)."""

    # ------------------------------------------------------------------ the loop
    @property
    def lr(self) -> torch.Tensor:
        """The learned student lr ``η`` (``exp(log η)`` or ``η`` itself, see ``lr_param``)."""
        return self._from_raw(self.lr_raw)

    def targets(self) -> torch.Tensor:
        """What the student's cross-entropy is computed against (hard labels; DATM: probabilities)."""
        return self.labels

    def trainable(self) -> list[tuple[str, torch.Tensor, torch.optim.Optimizer]]:
        """The learned tensors with their optimizers (images, lr; DATM adds the label logits)."""
        return [("images", self.images, self.opt_img), ("lr", self.lr_raw, self.opt_lr)]

    def plan(self, iteration: int) -> Plan:
        """The segment matched at ``iteration``: MTT's random expert and start epoch in the window."""
        o = self.opts
        expert = int(torch.randint(self.experts.num_experts, (1,), generator=self.generator))
        start = int(torch.randint(o.min_start_epoch, o.max_start_epoch + 1, (1,), generator=self.generator))
        return Plan(expert, start, start + o.expert_epochs, o.syn_steps)

    def unroll(self, theta0: torch.Tensor, steps: int) -> Unrolled:
        """``steps`` differentiable SGD steps of the student from ``theta0`` on augmented synthetic batches."""
        params = [theta0]
        ce: list[torch.Tensor] = []
        lr, targets = self.lr, self.targets()
        order: list[torch.Tensor] = []
        for _ in range(steps):
            if not order:
                perm = torch.randperm(self.n_syn, generator=self.generator) if self.batch_syn < self.n_syn else None
                order = list(torch.split(perm, self.batch_syn)) if perm is not None else [torch.arange(self.n_syn)]
            idx = order.pop().to(self.device)
            x = self.images[idx]
            if self.augment is not None:
                x = self.augment(x, generator=self.generator)
            loss = soft_cross_entropy(self.fnet(params[-1], x), targets[idx])
            grad = torch.autograd.grad(loss, params[-1], create_graph=True)[0]
            params.append(params[-1] - lr * grad)
            ce.append(loss)
        return Unrolled(params, ce)

    def loss_terms(self, iteration: int, plan: Plan, trajectory: torch.Tensor, student: Unrolled) -> dict[str, Any]:
        """``{name: (weight, value)}``; the image loss is ``Σ weight · value``. Default: MTT's normalised loss."""
        start = trajectory[plan.start].to(self.device)
        target = trajectory[plan.end].to(self.device)
        return {"match": (1.0, normalised_distance(student.params[-1], start, target))}

    def before_step(self, iteration: int) -> None:
        """Called at the start of every iteration (PTM's retraining)."""

    def after_update(self, iteration: int) -> None:
        """Called after the optimizer steps (FTD's EMA)."""

    def update_allowed(self, total: torch.Tensor) -> bool:
        """Whether this iteration's gradients are applied (DATM skips segments whose loss is too large)."""
        return True

    def step(self, iteration: int) -> dict[str, float]:
        """One outer iteration; returns the loss terms, the total, the target epoch and the learned lr."""
        self.before_step(iteration)
        plan = self.plan(iteration)
        trajectory = self.experts.trajectory(plan.expert)
        theta0 = trajectory[plan.start].to(self.device, copy=True).requires_grad_(True)
        student = self.unroll(theta0, plan.syn_steps)
        terms = self.loss_terms(iteration, plan, trajectory, student)
        weighted = [w * v for w, v in terms.values() if w]
        if not weighted:
            raise ValueError(f"{self.name}: every loss term has weight 0; nothing to distil.")
        total = torch.stack(weighted).sum()
        self._check_finite(iteration, {k: v for k, (_, v) in terms.items()} | {"total": total})
        tensors = self.trainable()
        for _, _, opt in tensors:
            opt.zero_grad(set_to_none=True)
        total.backward()
        self._check_finite(iteration, {f"gradient of the {n}": t.grad for n, t, _ in tensors if t.grad is not None})
        if self.update_allowed(total):
            for _, _, opt in tensors:
                opt.step()
            with torch.no_grad():  # a projection, not a clamp in the graph: the lr keeps its gradient at the bounds
                self.lr_raw.clamp_(*self.lr_raw_bounds)
        self.after_update(iteration)
        self.iteration = iteration + 1
        out = {k: float(v.detach()) for k, (_, v) in terms.items()}
        out.update(loss=float(total.detach()), end_epoch=plan.end, syn_steps=plan.syn_steps, lr=float(self.lr.detach()))
        return out

    def _check_finite(self, iteration: int, values: Mapping[str, Any]) -> None:
        for name, v in values.items():
            if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all()):
                bad = "NaN" if bool(torch.isnan(v).any()) else "inf"
                raise DivergenceError(
                    f"{self.name}: {name} became {bad} at iteration {iteration}; stopped before updating the synthetic "
                    "set, the last checkpoint is kept. Lower lr_img / lr_lr or syn_steps (see configs/README.md)."
                )

    # ------------------------------------------------------------------ product
    def final_images(self) -> torch.Tensor:
        return self.images

    def final_labels(self) -> torch.Tensor:
        return self.labels

    def synthetic_set(self) -> SyntheticSet:
        meta = {
            **self.meta(),
            "iterations": self.iteration,
            "buffer_dir": str(self.experts.directory) if self.experts is not None else None,
            "buffer_settings": self.buffer_settings.to_dict(),
            # The real images the set started from (real initialisation): the trust card attacks them directly.
            "init_indices": self.init_indices.tolist() if getattr(self, "init_indices", None) is not None else None,
        }
        return SyntheticSet(
            self.final_images().detach().cpu().clone(),
            self.final_labels().detach().cpu().clone(),
            lr=float(self.lr.detach()),
            meta=meta,
        )

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            iteration=self.iteration,
            images=self.images.detach().cpu().clone(),
            lr_raw=self.lr_raw.detach().cpu().clone(),
            optimizers={n: opt.state_dict() for n, _, opt in self.trainable()},
            extra=self.extra_state(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.iteration = int(state["iteration"])
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
            self.lr_raw.copy_(state["lr_raw" if "lr_raw" in state else "log_lr"].to(self.device))
        self.load_extra_state(state["extra"])
        for n, _, opt in self.trainable():
            opt.load_state_dict(state["optimizers"][n])

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

