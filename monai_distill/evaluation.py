"""The evaluation protocol: train K fresh networks on a (synthetic or real) set, test on the real test split.

Protocol (DSA/MTT/PTM papers): SGD with momentum 0.9 and weight decay 5e-4, lr = the learned lr of the set or
``preset.eval_lr``, multiplied by 0.1 at half of the epochs, DSA on the training batches, K networks with
different seeds; test accuracy, balanced accuracy and AUC are reported as mean ± std over the K networks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc
from sklearn.metrics import balanced_accuracy_score
from tqdm.auto import tqdm

from .augment import DiffAugment
from .data import RealDataset, SyntheticSet
from .networks import get_network
from .presets import Preset
from .progress import progress_bar
from .utils import inference_batch_size

__all__ = ["EvalResult", "EvaluationProtocol", "class_prior", "classification_metrics", "evaluate_models",
           "evaluate_synthetic", "map_batches", "predict", "prior_shift", "protocol_optimizer", "train_network"]

BatchHook = Callable[[torch.Tensor, torch.Tensor, int], None]
EpochHook = Callable[[int, torch.nn.Module], None]
OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]
# An optimiser definition without its parameters (``functools.partial(torch.optim.Adam, weight_decay=...)``):
# called as ``optimizer(params, lr=lr)``, where an ``lr`` the definition sets itself wins.
OptimizerDefinition = Callable[..., torch.optim.Optimizer]


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard class indices (N,) or soft probabilities (N, K)."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _recompute_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Closure for sharpness-aware optimizers: loss and gradients at the current (perturbed) weights, same batch."""
    loss = _soft_cross_entropy(net(x), y)
    net.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def protocol_optimizer(optimizer: OptimizerDefinition, lr: float, net: torch.nn.Module) -> torch.optim.Optimizer:
    """``optimizer(net.parameters(), lr=lr)``; a definition that sets its own ``lr`` keeps it.

    With ``functools.partial(protocol_optimizer, optimizer, lr)`` it is a ``make_optimizer`` of
    :func:`train_network` (the evaluation protocol's ``eval_optimizer_def``).
    """
    bound = getattr(optimizer, "keywords", None) or {}
    return optimizer(net.parameters(), **({} if "lr" in bound else {"lr": lr}))


def train_network(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    preset: Preset,
    generator: torch.Generator,
    device: torch.device,
    augment: DiffAugment | None = None,
    on_batch: BatchHook | None = None,
    progress: tqdm | None = None,
    *,
    batch_size: int | None = None,
    make_optimizer: OptimizerFactory | None = None,
    decay_lr: bool = True,
    on_epoch: EpochHook | None = None,
    sample_weights: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Train ``net`` with the protocol's SGD schedule; the one training loop of evaluation, coresets and experts.

    Args:
        net: the network (moved to ``device``).
        images: (N, C, ...) training images (any device; batches are moved to ``device``).
        labels: (N,) class indices or (N, K) soft labels (probabilities).
        epochs: number of passes over the data; lr is multiplied by 0.1 after half of them.
        lr: initial learning rate.
        preset: batch size, momentum and weight decay.
        generator: CPU generator for shuffling and augmentation (reproducible, independent of global RNG).
        device: where to train.
        augment: DSA applied per batch with fresh per-sample parameters, or ``None``.
        on_batch: called as ``on_batch(indices, logits, epoch)`` after each step (forgetting statistics).
        progress: a tqdm bar advanced once per epoch.
        batch_size: default ``preset.eval_batch``.
        make_optimizer: builds the optimizer from the network (expert trajectories: plain SGD or a sharpness-aware
            one); default SGD with the preset's momentum and weight decay. An optimizer whose ``needs_closure``
            attribute is true gets a closure that recomputes the loss on the same batch (SAM-style two passes).
        decay_lr: multiply the lr by 0.1 after half of the epochs (the protocol); experts train at a constant lr.
        on_epoch: called as ``on_epoch(epoch, net)`` after each epoch (expert snapshots).
        sample_weights: (N,) non-negative weights; when given, each epoch draws N indices with replacement in
            proportion to them instead of a permutation (class-balanced experts).
    """
    net = net.to(device).train()
    if make_optimizer is None:
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=preset.momentum, weight_decay=preset.weight_decay)
    else:
        opt = make_optimizer(net)
    milestones = [max(1, epochs // 2)] if decay_lr else []
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    needs_closure = bool(getattr(opt, "needs_closure", False))
    n = images.shape[0]
    bs = min(int(batch_size or preset.eval_batch), n)
    if sample_weights is not None and sample_weights.shape != (n,):
        raise ValueError(f"sample_weights must hold one weight per image ({n}), got {tuple(sample_weights.shape)}.")
    for epoch in range(epochs):
        order = (torch.randperm(n, generator=generator) if sample_weights is None
                 else torch.multinomial(sample_weights.double().cpu(), n, replacement=True, generator=generator))
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            x = images[idx].to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, generator=generator)
            logits = net(x)
            loss = _soft_cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch} (lr={lr}).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if needs_closure:
                opt.step(partial(_recompute_loss, net, x, y))
            else:
                opt.step()
            if on_batch is not None:
                on_batch(idx, logits.detach(), epoch)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch, net)
        if progress is not None:
            progress.update(1)
    return net.eval()


def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    device: torch.device,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``fn`` over ``images`` in batches on ``device``, outputs concatenated as float32 on CPU.

    ``batch_size`` defaults to :func:`~monai_distill.utils.inference_batch_size` (256, fewer for large volumes).
    """
    batch_size = batch_size or inference_batch_size(images.shape[1:])
    return torch.cat(
        [fn(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, images.shape[0], batch_size)]
    )


@torch.no_grad()
def predict(
    net: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int | None = None
) -> torch.Tensor:
    """Softmax probabilities (N, K) of ``net`` on ``images``, in eval mode, on CPU."""
    net.eval()
    return torch.softmax(map_batches(net, images, device, batch_size), dim=1)


def class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class frequencies of ``labels`` ((N,) indices or (N, K) soft labels) as a (K,) probability vector."""
    if labels.ndim == 1:
        counts = torch.bincount(labels.cpu().long(), minlength=num_classes).double()
    else:
        counts = labels.detach().cpu().double().sum(dim=0)
    return (counts / counts.sum().clamp_min(1e-12)).float()


def prior_shift(fit_prior: torch.Tensor, target_prior: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The logit adjustment ``log pi_target - log pi_fit`` (Menon et al., ICLR 2021, Eq. 2 with tau = 1).

    A network trained on labels with prior ``pi_fit`` estimates ``p_fit(y|x)``; under the label-shift assumption the
    posterior for data with prior ``pi_target`` is ``p_fit(y|x) * pi_target(y) / pi_fit(y)`` up to a constant, so
    adding this shift to the log-probabilities before the argmax is the Bayes decision for the target prior.
    Distilled sets and coresets are class-balanced (``pi_fit`` uniform) while medical test splits are not; the
    target prior is the train split's class frequencies, never the test split's.
    """
    return torch.log(target_prior.clamp_min(eps)) - torch.log(fit_prior.clamp_min(eps))


def classification_metrics(
    probs: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean per-class recall) and macro one-vs-rest ROC AUC (MONAI).

    Args:
        probs: (N, K) class probabilities.
        labels: (N,) class indices.
        shift: a :func:`prior_shift`; when given, ``acc_prior`` is the accuracy of ``argmax(log probs + shift)``
            (the ranking metrics, balanced accuracy and AUC, do not depend on a prior and are left as they are).
    """
    labels = labels.cpu().long()
    pred = probs.argmax(dim=1)
    k = probs.shape[1]
    onehot = F.one_hot(labels, num_classes=k).float()
    present = onehot.sum(0) > 0
    # AUC is undefined for classes absent from the test labels; MONAI would warn and return nan for them.
    auc = (
        float(compute_roc_auc(probs[:, present], onehot[:, present], average="macro"))
        if present.sum() > 1
        else float("nan")
    )
    out = {
        "acc": float((pred == labels).float().mean()),
        "balanced_acc": float(balanced_accuracy_score(labels.numpy(), pred.numpy())),
        "auc": auc,
    }
    if shift is not None:
        adjusted = torch.log(probs.clamp_min(1e-12)) + shift.to(probs.dtype)
        out["acc_prior"] = float((adjusted.argmax(dim=1) == labels).float().mean())
    return out


class _ValSelector:
    """``on_epoch`` hook of :func:`train_network`: keeps the weights of the epoch that scores best on ``val``."""

    def __init__(self, val: RealDataset, device: torch.device, metric: str) -> None:
        if metric not in ("balanced_acc", "auc", "acc"):
            raise ValueError(f"select_metric must be balanced_acc, auc or acc, got '{metric}'.")
        self.val, self.device, self.metric = val, device, metric
        self.best_score, self.best_epoch, self.best_state = -math.inf, -1, None

    def __call__(self, epoch: int, net: torch.nn.Module) -> None:
        score = classification_metrics(predict(net, self.val.images, self.device), self.val.labels)[self.metric]
        net.train()
        if score > self.best_score:  # NaN (one-class val) never wins, so the last epoch stays
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def restore_best(self, net: torch.nn.Module) -> dict[str, float]:
        """Load the best weights into ``net``; return what was chosen (``best_epoch``, ``val_<metric>``)."""
        if self.best_state is not None:
            net.load_state_dict(self.best_state)
        return {"best_epoch": float(self.best_epoch), f"val_{self.metric}": float(self.best_score)}


@dataclass
class EvalResult:
    """Per-network test metrics and their mean ± std."""

    per_model: list[dict[str, float]]
    epochs: int
    arch: str
    seconds: float
    summary: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("acc", "balanced_acc", "auc", "acc_prior"):
            if not self.per_model or any(key not in m for m in self.per_model):
                continue
            vals = np.array([m[key] for m in self.per_model], dtype=np.float64)
            self.summary[f"test_{key}_mean"] = float(vals.mean())
            self.summary[f"test_{key}_std"] = float(vals.std())

    def to_metrics(self) -> dict[str, Any]:
        return {
            **self.summary,
            "n_eval_models": len(self.per_model),
            "eval_epochs": self.epochs,
            "eval_arch": self.arch,
            "eval_seconds": self.seconds,
            "per_model": self.per_model,
        }


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_models(
    images: torch.Tensor,
    labels: torch.Tensor,
    test: RealDataset,
    arch: str,
    preset: Preset,
    seed: int,
    device: torch.device,
    lr: float | None = None,
    epochs: int | None = None,
    num_models: int | None = None,
    progress: bool = True,
    target_prior: torch.Tensor | None = None,
    val: RealDataset | None = None,
    select_metric: str = "balanced_acc",
    optimizer: OptimizerDefinition | None = None,
    on_model: Callable[[int, torch.nn.Module], None] | None = None,
) -> EvalResult:
    """Train ``num_models`` fresh ``arch`` networks on ``images``/``labels`` and test each on ``test``.

    Network k is seeded with ``seed * 1000 + k`` whatever the process layout, so under ``torch.distributed``
    the K networks are split across ranks (rank r trains r, r + W, ...) and gathered, giving the same
    numbers as one process.

    Args:
        images: training images (N, C, ...) in the normalised units of ``test``.
        labels: (N,) class indices or (N, K) soft labels.
        test: the real test split.
        arch: network factory name.
        preset: protocol hyper-parameters.
        seed: base seed.
        device: training device.
        lr: learning rate (the set's learned lr), default ``preset.eval_lr``.
        epochs: default ``preset.eval_epochs``.
        num_models: K, default ``preset.eval_models``.
        progress: show progress (a bar on a terminal, log lines otherwise).
        target_prior: class prior to correct predictions to (the train split's class frequencies); adds the
            prior-corrected accuracy ``acc_prior`` (:func:`prior_shift`, fitted prior from ``labels``).
        val: a validation split for model selection: after every epoch each network is scored on it and the
            weights of its best epoch (by ``select_metric``, ties to the earlier) are the ones tested. Used for the
            full-data bound, as MedMNIST's own baselines select on val; the test split is never used to choose.
        select_metric: ``balanced_acc``, ``auc`` or ``acc`` of :func:`classification_metrics` on ``val``.
        optimizer: the optimiser of each network instead of the protocol's SGD (see :func:`protocol_optimizer`;
            ``lr`` is the set's learned lr or ``preset.eval_lr`` unless the definition sets it); the lr decay at half
            of the epochs stays.
        on_model: called as ``on_model(k, net)`` with each trained network before it is dropped (the trust card's
            membership attack reuses the evaluation networks this way); on this process's networks only.
    """
    epochs = int(epochs or preset.eval_epochs)
    k_total = int(num_models or preset.eval_models)
    lr = float(lr or preset.eval_lr)
    if tuple(images.shape[1:]) != (test.in_channels, *test.spatial_size):
        raise ValueError(
            f"training images have shape {tuple(images.shape[1:])} per image, but the test split of {test.name} "
            f"has {(test.in_channels, *test.spatial_size)}."
        )
    shift = None if target_prior is None else prior_shift(class_prior(labels, test.num_classes), target_prior)
    rank, world = _rank_world()
    augment = DiffAugment(preset.dsa_strategy) if preset.dsa else None
    make_optimizer = None if optimizer is None else partial(protocol_optimizer, optimizer, lr)
    start = time.perf_counter()
    mine: dict[int, dict[str, float]] = {}
    bar = progress_bar(
        total=epochs * len(range(rank, k_total, world)),
        desc=f"evaluate {arch} ({len(range(rank, k_total, world))} nets x {epochs} epochs)",
        enabled=progress,
        leave=False,
    )
    for k in range(rank, k_total, world):
        model_seed = seed * 1000 + k
        torch.manual_seed(model_seed)
        net = get_network(
            arch,
            test.spatial_dims,
            test.in_channels,
            test.num_classes,
            test.spatial_size,
            width=preset.width,
            depth=preset.depth,
            norm=preset.norm,
        )
        gen = torch.Generator().manual_seed(model_seed)
        selector = None if val is None else _ValSelector(val, device, select_metric)
        train_network(net, images, labels, epochs, lr, preset, gen, device, augment=augment, progress=bar,
                      on_epoch=selector, make_optimizer=make_optimizer)
        extra = selector.restore_best(net) if selector is not None else {}
        mine[k] = {**classification_metrics(predict(net, test.images, device), test.labels, shift), **extra}
        if on_model is not None:
            on_model(k, net)
    bar.close()
    if world > 1:
        gathered: list[dict[int, dict[str, float]]] = [{} for _ in range(world)]
        torch.distributed.all_gather_object(gathered, mine)
        for part in gathered:
            mine.update(part)
    per_model = [mine[k] for k in range(k_total)]
    return EvalResult(per_model=per_model, epochs=epochs, arch=arch, seconds=time.perf_counter() - start)


def evaluate_synthetic(
    syn: SyntheticSet, test: RealDataset, arch: str, preset: Preset, seed: int, device: torch.device, **kwargs: Any
) -> EvalResult:
    """:func:`evaluate_models` on a :class:`SyntheticSet`, using its learned lr when it has one."""
    return evaluate_models(
        syn.images.detach(), syn.labels.detach(), test, arch, preset, seed, device, lr=syn.lr, **kwargs
    )


class EvaluationProtocol:
    """The evaluation protocol as one component (the bundles' ``evaluation_def`` entry): ``models`` fresh networks of
    ``network_def`` trained on a set for ``epochs`` with ``optimizer_def``, each tested on real data
    (:func:`evaluate_models`; the protocol of DC/DM/MTT and of seeds 000-003).

    The workflows evaluate every set (synthetic, coreset, full data, during distillation, tuning) through
    :meth:`evaluate` alone, so a subclass that overrides it (another schedule, augmentation or metric) replaces the
    protocol everywhere: ``--evaluation_def#_target_ mymodule.MyProtocol``.

    Args:
        network_def: factory of the evaluation networks (``None``: the flat ``eval_arch``, else the set's network).
        optimizer_def: optimiser without its params (``None`` or ``ProtocolSGD``: SGD with the preset's momentum and
            weight decay).
        models: number of networks K (``None``: the preset's ``eval_models``).
        epochs: epochs per network (``None``: the preset's ``eval_epochs``).
    """

    def __init__(self, network_def: Any = None, optimizer_def: Any = None, models: int | None = None,
                 epochs: int | None = None) -> None:
        self.network_def, self.optimizer_def, self.models, self.epochs = network_def, optimizer_def, models, epochs

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, test: RealDataset, arch: str, preset: Preset,
                 seed: int, device: torch.device, **kwargs: Any) -> EvalResult:
        """Train and test the networks on ``images``/``labels``: :func:`evaluate_models` with the same arguments."""
        return evaluate_models(images, labels, test, arch, preset, seed, device, **kwargs)

    def evaluate_set(self, syn: SyntheticSet, test: RealDataset, arch: str, preset: Preset, seed: int,
                     device: torch.device, **kwargs: Any) -> EvalResult:
        """:meth:`evaluate` on a :class:`SyntheticSet`, with its learned lr when it has one."""
        return self.evaluate(syn.images.detach(), syn.labels.detach(), test, arch, preset, seed, device, lr=syn.lr,
                             **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(network_def={self.network_def!r}, optimizer_def={self.optimizer_def!r}, "
                f"models={self.models}, epochs={self.epochs})")
