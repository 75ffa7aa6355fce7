"""One trainer for every MIL head: Adam, weight decay, epochs, early stopping on validation AUC, AMP on CUDA.

The trainer works on feature bags (:class:`~mil.bags.Bag` with ``features``, from :mod:`mil.features`), so it
does not care whether a bag came from real patches or from a synthetic bag. A step is one bag by default (the
usual MIL setting, bags differ in size); ``batch_size > 1`` pads bags to a common length with a mask, which every
head supports.

Features are standardised with the per-dimension mean and std of the training instances (stored in the model,
so evaluation uses the training statistics): frozen-encoder features can be tiny or huge in scale, and the heads'
first linear layers assume inputs of order one.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from monai_distill.checks import OptionError
from monai_distill.components import build_component, component_spec, component_target, factory_from_spec
from monai_distill.evaluation import OptimizerDefinition, classification_metrics, protocol_optimizer
from monai_distill.progress import progress_bar
from monai_distill.utils import atomic_path, atomic_torch_save, resolve_device, seed_everything, to_bool

from .bags import Bag, BagError
from .heads import HEAD_ARGUMENTS, MILHead, MILOutput, get_mil_head

__all__ = [
    "CHECKPOINT_FORMAT",
    "MILModel",
    "MILTrainer",
    "Predictions",
    "TrainConfig",
    "TrainResult",
    "build_head",
    "collate_bags",
    "torch_threads",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "monai-distill-mil"
CHECKPOINT_VERSION = 1


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(num_threads)`` and restore the old count; ``None`` changes nothing.

    MIL steps are tiny: on a busy CPU, OpenMP workers that spin waiting for each other can make a small TransMIL
    step ~100x slower with 2 threads than with 1, so training on CPU often wants ``num_threads=1``.
    """
    if num_threads is None or int(num_threads) <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class TrainConfig:
    """Training settings.

    Args:
        epochs: maximum number of epochs.
        lr: Adam learning rate (CLAM/TransMIL papers: 2e-4).
        weight_decay: Adam weight decay (CLAM: 1e-5).
        patience: stop after this many epochs without a better validation AUC (ties broken by a lower validation
            loss); ``None`` or 0 trains every epoch. Without validation bags there is no early stopping.
        min_epochs: never stop before this epoch.
        batch_size: bags per optimiser step (padded with a mask when > 1).
        seed: seed of the head's initial weights and of the bag order.
        device: ``cpu``, ``cuda``, ``cuda:1``, ... (``None``: CUDA when available).
        amp: float16 autocast and gradient scaling on CUDA (ignored on CPU).
        num_threads: torch intra-op threads while training/predicting (``None``: leave torch's setting).
        standardize: standardise features with the training instances' mean and std.
        grad_clip: clip the gradient norm to this (``None``: no clipping).
        progress: show a progress bar over epochs (only on a terminal).
    """

    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    patience: int | None = 10
    min_epochs: int = 1
    batch_size: int = 1
    seed: int = 0
    device: str | None = None
    amp: bool = True
    num_threads: int | None = None
    standardize: bool = True
    grad_clip: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}.")
        if float(self.lr) <= 0 or float(self.weight_decay) < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}.")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        self.amp, self.standardize, self.progress = to_bool(self.amp), to_bool(self.standardize), to_bool(self.progress)
        self.device = None if self.device is None else str(self.device)


class MILModel(nn.Module):
    """Feature standardisation followed by a MIL head; what the trainer optimises and checkpoints.

    Args:
        head: the MIL head.
        in_features: feature size F (for the standardisation buffers).
    """

    def __init__(self, head: MILHead, in_features: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))

    def fit_standardization(self, bags: Sequence[Bag]) -> None:
        """Set the buffers to the mean and std of every instance of ``bags``."""
        x = torch.cat([b.features.float() for b in bags])  # type: ignore[union-attr]
        self.feature_mean.copy_(x.mean(0))
        # Constant dimensions (std 0) pass through centred instead of blowing up.
        self.feature_std.copy_(x.std(0, unbiased=False).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(x[0]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        return self.head((x - self.feature_mean) / self.feature_std, mask)


def build_head(factory: Callable[..., nn.Module], in_features: int, num_classes: int,
               entry: str = "head_def") -> MILHead:
    """A head from a definition (config entry ``head_def``), checked against the trainer's contract.

    ``in_features``/``num_classes`` (:data:`~mil.heads.HEAD_ARGUMENTS`) are filled in unless the definition sets
    them. One forward pass on a blank bag (global random state untouched, the head's mode restored) checks that it
    returns a :class:`~mil.heads.MILOutput` with (1, num_classes) logits and has ``loss``: the contract of
    :class:`~mil.heads.MILHead`, which a user head best subclasses.

    Raises:
        OptionError: it cannot be built or does not keep the contract.
    """
    values = {name: {"in_features": int(in_features), "num_classes": int(num_classes)}[kind]
              for name, kind in HEAD_ARGUMENTS.items()}
    head = build_component(factory, entry, values, f"{in_features} features per instance, {num_classes} classes")
    name = f"--{entry} {component_target(factory)}"
    contract = ("a head takes (B, N, F) features and a (B, N) mask and returns a mil.heads.MILOutput (logits, "
                "instance_scores) and has loss(output, labels): subclass mil.heads.MILHead")
    if not isinstance(head, nn.Module) or not callable(getattr(head, "loss", None)):
        raise OptionError(f"{name}: built a {type(head).__name__} without loss(); {contract}.")
    was_training = head.training
    head.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out = head(torch.zeros(1, 3, int(in_features)), torch.ones(1, 3, dtype=torch.bool))
    except Exception as e:
        raise OptionError(f"{name}: a forward pass on a blank bag of 3 instances x {in_features} features failed "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); {contract}.") from None
    finally:
        head.train(was_training)
    logits = getattr(out, "logits", None)
    if not isinstance(out, MILOutput) or not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (
            1, int(num_classes)):
        found = f"logits of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(out).__name__
        raise OptionError(f"{name}: returned {found} for one bag; expected a MILOutput with logits (1, {num_classes})"
                          f" for {num_classes} classes; {contract}.")
    return head


def collate_bags(bags: Sequence[Bag]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad feature bags to the longest: ``x`` (B, N, F), ``mask`` (B, N) bool, ``labels`` (B,) long."""
    if any(b.features is None for b in bags):
        missing = [b.slide_id for b in bags if b.features is None]
        raise BagError(f"bags {missing} have no features; run them through mil.features.FeatureExtractor first.")
    n = max(len(b) for b in bags)
    f = bags[0].features.shape[1]  # type: ignore[union-attr]
    x = torch.zeros(len(bags), n, f)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        if b.features.shape[1] != f:  # type: ignore[union-attr]
            raise BagError(f"bag '{b.slide_id}' has {b.features.shape[1]} features per instance, others {f}.")
        x[i, : len(b)] = b.features.float()  # type: ignore[union-attr]
        mask[i, : len(b)] = True
    return x, mask, torch.tensor([b.label for b in bags], dtype=torch.long)


def _balanced_accuracy(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes present in ``labels``."""
    recalls = [float((preds[labels == c] == c).float().mean()) for c in range(num_classes) if (labels == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def validation_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float | None:
    """The threshold on ``P(class 1)`` that maximises balanced accuracy on validation bags (Youden's J), ties to the
    one nearest 0.5; ``None`` unless the head is binary and the bags hold both classes.

    Heads trained on few or synthetic bags are often well ranked (high AUC) but shifted in probability, so the 0.5
    cut loses accuracy that the ranking has; the cut is chosen on validation bags only, never on the test slides.
    """
    if probs.ndim != 2 or probs.shape[1] != 2 or len(set(labels.tolist())) < 2:
        return None
    p = probs[:, 1].double()
    values = torch.unique(p)
    # Midpoints between neighbouring scores, plus one cut below all and one above all.
    cuts = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6])
    best, best_cut = -1.0, 0.5
    for cut in cuts.tolist():
        score = _balanced_accuracy(labels, (p >= cut).long(), 2)
        if score > best + 1e-12 or (abs(score - best) <= 1e-12 and abs(cut - 0.5) < abs(best_cut - 0.5)):
            best, best_cut = score, cut
    return float(best_cut)


@dataclass
class Predictions:
    """Per-slide outputs of a trained head.

    Attributes:
        slide_ids: slide of each row.
        sources: ``real``/``synthetic`` of each bag.
        labels: (S,) true labels.
        probs: (S, C) softmax probabilities.
        instance_scores: per slide, (N,) scores of its instances for the predicted class (attention or instance
            logits, as the head defines them), for heatmaps.
        loss: mean loss of the head on these bags.
    """

    slide_ids: list[str]
    sources: list[str]
    labels: torch.Tensor
    probs: torch.Tensor
    instance_scores: list[torch.Tensor] = field(default_factory=list)
    loss: float = float("nan")
    threshold: float | None = None

    @property
    def preds(self) -> torch.Tensor:
        """Class of each slide: ``P(class 1) >= threshold`` for a binary head with a validation threshold, else
        the most probable class."""
        if self.threshold is None or self.probs.shape[1] != 2:
            return self.probs.argmax(dim=1)
        return (self.probs[:, 1] >= self.threshold).long()

    def metrics(self) -> dict[str, float]:
        """``auc`` (MONAI ROC AUC, macro one-vs-rest; NaN with one class), ``acc``, ``balanced_acc``, ``loss``; with a
        validation ``threshold`` the accuracies use it, and ``acc_at_0.5``/``balanced_acc_at_0.5`` keep the
        most-probable-class ones."""
        base = {**classification_metrics(self.probs, self.labels), "loss": float(self.loss)}
        if self.threshold is None or self.probs.shape[1] != 2:
            return base
        preds = self.preds
        return {**base, "acc_at_0.5": base["acc"], "balanced_acc_at_0.5": base["balanced_acc"],
                "threshold": float(self.threshold), "acc": float((preds == self.labels).float().mean()),
                "balanced_acc": _balanced_accuracy(self.labels, preds, 2)}

    def table(self) -> pd.DataFrame:
        rows = {"slide_id": self.slide_ids, "source": self.sources, "label": self.labels.tolist(),
                "pred": self.preds.tolist()}
        if self.threshold is not None and self.probs.shape[1] == 2:
            rows["pred_at_0.5"] = self.probs.argmax(dim=1).tolist()
        for c in range(self.probs.shape[1]):
            rows[f"prob_{c}"] = [round(float(p), 6) for p in self.probs[:, c]]
        return pd.DataFrame(rows)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``slide_id, source, label, pred, prob_0, ...`` atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.table().to_csv(tmp, index=False)
        return path


@dataclass
class TrainResult:
    """What :meth:`MILTrainer.fit` did: per-epoch history, the kept epoch and timing."""

    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    stopped_early: bool


class MILTrainer:
    """Train and evaluate one MIL head on feature bags.

    Args:
        model: head name (``clam_sb``, ``clam_mb``, ``dsmil``, ``transmil``, ``abmil``, ``mean``, ``max``), or a head
            definition (a class or ``functools.partial``, the bundle's ``head_def``; see :func:`build_head`), whose
            ``_target_`` and arguments the checkpoint records.
        in_features: feature size F.
        num_classes: number of slide classes.
        head_options: head hyper-parameters (see each head class).
        config: training settings; keyword ``overrides`` replace its fields.
        optimizer_def: the optimiser without its params (the bundle's ``optimizer_def``: a ``torch.optim`` class or
            ``functools.partial``), given ``lr`` from ``config`` unless it sets its own; ``None``: Adam with the
            config's ``lr`` and ``weight_decay`` (CLAM's and TransMIL's optimiser).
    """

    def __init__(
        self,
        model: str | Callable[..., nn.Module],
        in_features: int,
        num_classes: int,
        head_options: dict[str, Any] | None = None,
        config: TrainConfig | None = None,
        optimizer_def: OptimizerDefinition | None = None,
        **overrides: Any,
    ) -> None:
        base = asdict(config) if config is not None else {}
        self.optimizer_def = optimizer_def
        self.config = TrainConfig(**{**base, **overrides})
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.head_options = dict(head_options or {})
        self.head_def = None if isinstance(model, str) else model
        self.model_name = str(model).lower() if self.head_def is None else component_target(self.head_def)
        self.device = resolve_device(self.config.device)
        self.amp = self.config.amp and self.device.type == "cuda"
        seed_everything(self.config.seed)
        if self.head_def is None:
            head = get_mil_head(self.model_name, self.in_features, self.num_classes, **self.head_options)
        else:
            head = build_head(self.head_def, self.in_features, self.num_classes)
        self.model = MILModel(head, self.in_features).to(self.device)
        # Decision threshold on P(class 1), chosen on the validation bags by fit(); None: the most probable class.
        self.threshold: float | None = None
        # Set by init_from(): fine-tuning keeps the pre-trained model's feature standardisation (part of the model).
        self.pretrained: str | None = None

    # ------------------------------------------------------------------ steps
    def _forward_loss(self, bags: Sequence[Bag]) -> tuple[MILOutput, torch.Tensor, torch.Tensor]:
        x, mask, labels = collate_bags(bags)
        x, mask, labels = x.to(self.device), mask.to(self.device), labels.to(self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.model(x, mask)
            loss, _ = self.model.head.loss(out, labels)
        return out, loss, mask

    def _check_bags(self, bags: Sequence[Bag], what: str) -> None:
        if not bags:
            raise BagError(f"no {what} bags.")
        bad = [b.slide_id for b in bags if b.label >= self.num_classes]
        if bad:
            raise BagError(f"{what} bags {bad} have labels >= num_classes ({self.num_classes}).")

    def fit(self, train: Sequence[Bag], val: Sequence[Bag] | None = None) -> TrainResult:
        """Train on ``train``; with ``val``, keep the epoch of best validation AUC and stop early (``patience``).

        Returns:
            History (``epoch``, ``train_loss``, ``train_seconds``, ``val_auc``, ``val_acc``, ``val_loss``), the kept
            epoch, epochs run, mean training seconds per epoch (validation excluded), and whether it stopped early.
        """
        cfg = self.config
        self._check_bags(train, "training")
        val = list(val or [])
        with torch_threads(cfg.num_threads):
            if cfg.standardize and self.pretrained is None:
                self.model.fit_standardization(train)
            optimizer = self._optimizer()
            scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
            order_rng = torch.Generator().manual_seed(cfg.seed)
            history: list[dict[str, float]] = []
            best: tuple[float, float] = (-math.inf, -math.inf)
            best_state, best_epoch, since_best, stopped = None, 0, 0, False
            bar = progress_bar(range(1, cfg.epochs + 1), desc=f"train {self.model_name}", unit="epoch",
                               enabled=cfg.progress)
            for epoch in bar:
                loss, seconds = self._train_epoch(train, optimizer, scaler, order_rng)
                record = {"epoch": epoch, "train_loss": loss, "train_seconds": seconds}
                if val:
                    m = self.predict(val).metrics()
                    record.update(val_auc=m["auc"], val_acc=m["acc"], val_loss=m["loss"])
                    score = (m["auc"] if math.isfinite(m["auc"]) else -math.inf, -m["loss"])
                    if best_state is None or score > best:
                        best, best_epoch, since_best = score, epoch, 0
                        best_state = copy.deepcopy(self.model.state_dict())
                    else:
                        since_best += 1
                history.append(record)
                bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "val_auc")})
                if val and cfg.patience and since_best >= int(cfg.patience) and epoch >= cfg.min_epochs:
                    stopped = True
                    break
            if best_state is not None:
                self.model.load_state_dict(best_state)
            else:
                best_epoch = len(history)
            if val:
                kept = self.predict(val)
                self.threshold = validation_threshold(kept.probs, kept.labels)
        seconds = float(np.mean([h["train_seconds"] for h in history]))
        logger.info("%s: %d epoch(s), kept epoch %d, %.3f s/epoch", self.model_name, len(history), best_epoch, seconds)
        return TrainResult(history, best_epoch, len(history), seconds, stopped)

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_def is None:
            return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        return protocol_optimizer(self.optimizer_def, self.config.lr, self.model)

    def _train_epoch(
        self, train: Sequence[Bag], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
        order_rng: torch.Generator,
    ) -> tuple[float, float]:
        self.model.train()
        order = torch.randperm(len(train), generator=order_rng).tolist()
        bs = self.config.batch_size
        losses = []
        start = time.perf_counter()
        for i in range(0, len(order), bs):
            _, loss, _ = self._forward_loss([train[j] for j in order[i : i + bs]])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{self.model_name}: the training loss became {loss.item()}; lower lr or turn amp off."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if self.config.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), float(self.config.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        return float(torch.stack(losses).float().mean()), seconds

    @torch.no_grad()
    def predict(self, bags: Sequence[Bag]) -> Predictions:
        """Probabilities, instance scores (for the predicted class) and mean loss, one bag at a time."""
        self._check_bags(bags, "evaluation")
        with torch_threads(self.config.num_threads):
            self.model.eval()
            probs, scores, losses = [], [], []
            for bag in bags:
                out, loss, _ = self._forward_loss([bag])
                p = torch.softmax(out.logits.float(), dim=1)[0].cpu()
                probs.append(p)
                scores.append(out.class_scores(int(p.argmax()))[0, : len(bag)].float().cpu())
                losses.append(float(loss))
        return Predictions(
            slide_ids=[b.slide_id for b in bags],
            sources=[b.source for b in bags],
            labels=torch.tensor([b.label for b in bags], dtype=torch.long),
            probs=torch.stack(probs),
            instance_scores=scores,
            loss=float(np.mean(losses)),
            threshold=self.threshold,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write the head (with its feature standardisation), its settings and ``extra`` (e.g. the encoder)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": self.model_name,
            "in_features": self.in_features,
            "num_classes": self.num_classes,
            "head_options": self.head_options,
            "head_def": None if self.head_def is None else component_spec(self.head_def),
            "train_config": asdict(self.config),
            "threshold": self.threshold,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "extra": extra or {},
        }
        path = Path(path)
        atomic_torch_save(state, path)
        return path

    def init_from(self, path: str | os.PathLike) -> dict[str, Any]:
        """Start from the weights (and feature standardisation) of a checkpoint written by :meth:`save`: the next
        :meth:`fit` fine-tunes them (seed 003 Table 5, cross-centre transfer) instead of training from scratch.

        Returns:
            The checkpoint's ``extra`` (its encoder, to check that the features match).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a MIL checkpoint, or one of another head, feature size or class count.
        """
        state = _read_checkpoint(Path(path))
        mine = {"model": self.model_name, "in_features": self.in_features, "num_classes": self.num_classes}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"checkpoint '{path}' holds {theirs}, but this run trains {mine}: fine-tuning needs the "
                             "same head, feature size and class count.")
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise ValueError(f"'{path}': weights do not fit head '{self.model_name}': {e}") from e
        self.model.to(self.device)
        self.pretrained = str(path)
        return state.get("extra", {})

    @classmethod
    def load(cls, path: str | os.PathLike, head_def: Callable[..., nn.Module] | None = None,
             **overrides: Any) -> tuple[MILTrainer, dict[str, Any]]:
        """A trainer holding the head of a checkpoint written by :meth:`save`, and the checkpoint's ``extra``.

        Args:
            path: the checkpoint.
            head_def: the head definition to load the weights into; default: the registry head, or the definition the
                checkpoint records (its ``_target_`` must be importable).
            overrides: training settings to replace (``device``, ``num_threads``, ``amp``, ...).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a MIL checkpoint, or weights that do not fit the recorded head.
        """
        path = Path(path)
        state = _read_checkpoint(path)
        config = TrainConfig(**{**state.get("train_config", {}), **overrides})
        model: str | Callable[..., nn.Module] = state["model"]
        if head_def is not None:
            model = head_def
        elif state.get("head_def"):
            model = factory_from_spec(state["head_def"], f"head_def (recorded in '{path}')")
        trainer = cls(model, state["in_features"], state["num_classes"], state.get("head_options"), config)
        try:
            trainer.model.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise ValueError(f"'{path}': weights do not fit head '{trainer.model_name}': {e}") from e
        trainer.model.to(trainer.device)
        trainer.threshold = state.get("threshold")  # checkpoints before thresholds: the most probable class
        return trainer, state.get("extra", {})


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The state written by :meth:`MILTrainer.save`, checked for its format.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable MIL checkpoint, or a newer format.
    """
    if not path.is_file():
        raise FileNotFoundError(f"MIL checkpoint '{path}' does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"'{path}' is not a readable MIL checkpoint ({type(e).__name__}: {e}).") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"'{path}' is not a {CHECKPOINT_FORMAT} checkpoint (written by MILTrainer.save).")
    if state.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"'{path}' has checkpoint format {state['format_version']}; this version reads "
                         f"{CHECKPOINT_VERSION}.")
    return state
