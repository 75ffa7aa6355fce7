"""Expert trajectory buffers: the one on-disk format shared by MTT, FTD, DATM, PTM and HoP-TM.

An expert is a network trained on the real train split (SGD at a constant lr, DSA, as MTT's ``buffer.py``; or
sharpness-aware GSAM for FTD's flat trajectories). Its trajectory is the flat parameter vector after each epoch,
``θ_0 .. θ_E`` (``θ_0`` = initialisation), stored as one ``(E + 1, P)`` float32 tensor per expert in
``expert_XXXX.pt``. Each file is written atomically, so an interrupted build resumes at the first missing expert,
and under ``torch.distributed`` rank ``r`` trains experts ``r, r + W, ...``.

A buffer directory is named after what determines its contents (dataset, image size, network, settings hash), so a
change of settings never silently reuses incompatible experts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..augment import DiffAugment
from ..data import RealDataset
from ..evaluation import train_network
from ..presets import Preset
from ..progress import progress_bar
from ..utils import atomic_torch_save, atomic_write_json
from .sam import GSAM

__all__ = ["BufferSettings", "ExpertBuffer", "balanced_weights", "flat_parameters", "train_expert"]

logger = logging.getLogger("monai_distill")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BufferSettings:
    """How experts are trained (MTT ``buffer.py`` defaults; ``flat`` selects FTD's GSAM experts).

    Attributes:
        num_experts: number of expert trajectories.
        epochs: training epochs per expert; snapshots ``0..epochs`` are stored, so it must cover the last epoch any
            distiller reaches (``max_start_epoch + expert_epochs``, or PTM's ``max_end_epoch``).
        lr: constant SGD learning rate (MTT: 0.01); also the initial learned lr of the distillers.
        batch: SGD batch size. Small medical sets need a small batch so that an epoch has enough steps.
        momentum: SGD momentum (MTT: 0).
        weight_decay: SGD weight decay (MTT: 0).
        flat: train with GSAM (FTD) instead of plain SGD.
        rho: GSAM ascent radius (FTD: 0.01).
        alpha: GSAM surrogate-gap weight (FTD: 0.3).
        adaptive: ASAM-style per-parameter ascent (FTD's experts: true).
        dsa: augment training batches with DSA.
        balanced: draw each epoch's batches class-balanced (indices sampled with replacement, each with probability
            inversely proportional to its class's size) so that the trajectories carry no class prior. A student
            matched to experts of an imbalanced split learns its prior: on PneumoniaMNIST (3:1), networks trained on
            an MTT set of plain experts recall 0.72 of the val split's normal images and 0.99 of its pneumonia ones.
        seed: base seed of the experts; expert ``i`` uses ``seed * 100003 + i`` whatever the process layout.
    """

    num_experts: int = 10
    epochs: int = 20
    lr: float = 0.01
    batch: int = 256
    momentum: float = 0.0
    weight_decay: float = 0.0
    flat: bool = False
    rho: float = 0.01
    alpha: float = 0.3
    adaptive: bool = True
    dsa: bool = True
    balanced: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_experts < 1 or self.epochs < 1:
            raise ValueError(f"buffers need num_experts >= 1 and epochs >= 1, got {self.num_experts}, {self.epochs}.")
        if self.lr <= 0 or self.batch < 1:
            raise ValueError(f"buffers need lr > 0 and batch >= 1, got lr={self.lr}, batch={self.batch}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> BufferSettings:
        """Build from a config mapping; unknown keys raise a ``KeyError`` that lists the valid ones."""
        values = dict(values or {})
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise KeyError(f"unknown buffer setting(s) {unknown}; valid: {', '.join(sorted(valid))}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that change the trajectories (``num_experts`` and ``epochs`` only change how many are kept).

        ``balanced`` appears only when set, so that buffers built before it existed keep their directory.
        """
        return {k: v for k, v in self.to_dict().items()
                if k not in ("num_experts", "epochs") and not (k == "balanced" and not v)}


def flat_parameters(net: torch.nn.Module) -> torch.Tensor:
    """A CPU copy of ``net``'s parameters as one flat float32 vector (order of ``net.parameters()``).

    Each parameter is copied explicitly: on CPU ``tensor.cpu()`` returns the tensor itself, and a snapshot that
    aliases the live weights would turn every stored epoch into the final weights (DESIGN, lessons).
    """
    return torch.cat([p.detach().to("cpu", torch.float32, copy=True).reshape(-1) for p in net.parameters()])


def _make_optimizer(settings: BufferSettings) -> Callable[[torch.nn.Module], torch.optim.Optimizer]:
    def make(net: torch.nn.Module) -> torch.optim.Optimizer:
        kw = {"momentum": settings.momentum, "weight_decay": settings.weight_decay}
        if settings.flat:
            return GSAM(net.parameters(), settings.lr, settings.rho, settings.alpha, settings.adaptive, **kw)
        return torch.optim.SGD(net.parameters(), lr=settings.lr, **kw)

    return make


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-image sampling weights ``1 / n_class`` for (N,) class indices or (N, K) soft labels (by their argmax):
    every class is drawn equally often in expectation."""
    hard = labels.argmax(dim=1) if labels.ndim > 1 else labels.long()
    counts = torch.bincount(hard.cpu())
    return 1.0 / counts[hard.cpu()].double()


def train_expert(
    index: int,
    real: RealDataset,
    net_factory: Callable[[], torch.nn.Module],
    settings: BufferSettings,
    preset: Preset,
    device: torch.device,
    progress: tqdm | None = None,
) -> torch.Tensor:
    """Train expert ``index`` with the protocol's training loop and return its trajectory ``(epochs + 1, P)``."""
    seed = settings.seed * 100003 + index
    torch.manual_seed(seed)
    net = net_factory()
    snapshots = [flat_parameters(net)]
    augment = DiffAugment(preset.dsa_strategy) if settings.dsa else None
    train_network(
        net, real.images, real.labels, settings.epochs, settings.lr, preset, torch.Generator().manual_seed(seed),
        device, augment=augment, progress=progress, batch_size=settings.batch, make_optimizer=_make_optimizer(settings),
        decay_lr=False, on_epoch=lambda epoch, n: snapshots.append(flat_parameters(n)),
        sample_weights=balanced_weights(real.labels) if settings.balanced else None,
    )
    return torch.stack(snapshots)


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ExpertBuffer:
    """A directory of expert trajectories for one dataset, network and :class:`BufferSettings`.

    Args:
        directory: where the ``expert_XXXX.pt`` files live.
        spec: what the trajectories depend on (dataset, size, network, settings), stored in ``buffer.json`` and in
            every expert file and checked on load.
        cache: how many trajectories to keep in memory (files are memory-mapped, so a miss is cheap).
    """

    def __init__(self, directory: str | Path, spec: Mapping[str, Any], cache: int = 4) -> None:
        self.directory = Path(directory)
        self.spec = json.loads(json.dumps(dict(spec), sort_keys=True, default=str))
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_size = max(1, int(cache))
        self.num_experts = 0
        self.num_params = 0
        self.num_epochs = 0

    @staticmethod
    def directory_for(root: str | Path, spec: Mapping[str, Any], settings: BufferSettings) -> Path:
        """``root/<dataset>-<size>-<arch>-w<width>-<plain|flat>-<hash>``: one directory per distinct expert recipe."""
        key = json.dumps({**dict(spec), "settings": settings.identity()}, sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        size = "x".join(str(s) for s in spec.get("spatial_size", []))
        kind = "flat" if settings.flat else "plain"
        net = f"{spec.get('arch', 'net')}-w{spec.get('width', '')}"
        name = f"{spec.get('dataset', 'data')}-{size}-{net}-{kind}-{digest}"
        return Path(root) / name

    def path(self, index: int) -> Path:
        return self.directory / f"expert_{index:04d}.pt"

    def missing(self, settings: BufferSettings) -> list[int]:
        """Experts not on disk yet (or stored with fewer epochs than ``settings.epochs``)."""
        out = []
        for i in range(settings.num_experts):
            p = self.path(i)
            if not p.is_file():
                out.append(i)
                continue
            stored = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            if int(stored["params"].shape[0]) < settings.epochs + 1:
                out.append(i)
        return out

    def build(
        self,
        real: RealDataset,
        net_factory: Callable[[], torch.nn.Module],
        settings: BufferSettings,
        preset: Preset,
        device: torch.device,
        progress: bool = True,
    ) -> list[int]:
        """Train the missing experts of this rank (rank r of W takes r, r + W, ...); return the indices trained.

        Under ``torch.distributed`` every rank waits for the others at the end, so that all experts exist when
        distillation starts.
        """
        rank, world = _rank_world()
        self.directory.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            atomic_write_json({**self.spec, "settings": settings.to_dict()}, self.directory / "buffer.json")
        todo = [i for i in self.missing(settings) if i % world == rank]
        if todo:
            logger.info("training %d expert(s) into %s", len(todo), self.directory)
        bar = progress_bar(total=len(todo) * settings.epochs, desc=f"experts ({len(todo)} x {settings.epochs} epochs)",
                           enabled=progress, leave=False)
        for i in todo:
            start = time.perf_counter()
            traj = train_expert(i, real, net_factory, settings, preset, device, progress=bar)
            record = {
                "format_version": FORMAT_VERSION,
                "params": traj,
                "epochs": list(range(settings.epochs + 1)),
                "spec": self.spec,
                "settings": settings.to_dict(),
                "seconds": time.perf_counter() - start,
            }
            atomic_torch_save(record, self.path(i))
        bar.close()
        if world > 1:
            torch.distributed.barrier()
        return todo

    def load(self, settings: BufferSettings) -> ExpertBuffer:
        """Check that experts ``0..num_experts-1`` exist and agree with ``spec``; raise a clear error if not."""
        missing = self.missing(settings)
        if missing:
            raise FileNotFoundError(
                f"expert buffer {self.directory} lacks expert(s) {missing[:10]} with {settings.epochs} epochs; build "
                "them with the bundle's buffers.json (or let the distillation bundle build them)."
            )
        first = torch.load(self.path(0), map_location="cpu", weights_only=True, mmap=True)
        if first.get("spec") != self.spec:
            raise ValueError(
                f"expert buffer {self.directory} was built for {first.get('spec')}, not for {self.spec}; "
                "use another buffer_dir or delete it."
            )
        self.num_experts = settings.num_experts
        self.num_params = int(first["params"].shape[1])
        self.num_epochs = settings.epochs
        return self

    def trajectory(self, index: int) -> torch.Tensor:
        """Expert ``index``'s snapshots ``(epochs + 1, P)`` (memory-mapped, read-only use)."""
        if index not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            stored = torch.load(self.path(index), map_location="cpu", weights_only=True, mmap=True)
            self._cache[index] = stored["params"]
        return self._cache[index]

    def __len__(self) -> int:
        return self.num_experts
