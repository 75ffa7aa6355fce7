"""The contract every MIL head follows, and the masked pooling helpers they share.

A head maps a padded batch of bags ``x`` (B, N, F) with a boolean ``mask`` (B, N) (True = real instance) to a
:class:`MILOutput`, and knows its own training loss (:meth:`MILHead.loss`), so that one trainer drives every head
with ``out = head(x, mask); total, parts = head.loss(out, labels)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MILHead",
    "MILOutput",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "no_autocast",
    "prepare_bags",
    "zero_padding",
]


@dataclass
class MILOutput:
    """What a head returns.

    Attributes:
        logits: (B, C) bag logits (softmax over C gives class probabilities).
        instance_scores: (B, N) or (B, N, C) per-instance attention or instance scores for heatmaps; padding
            positions are exactly 0.
        aux: head-specific tensors (features, raw attention, stream logits, ...) that :meth:`MILHead.loss` or
            analysis code may need.
    """

    logits: torch.Tensor
    instance_scores: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    def class_scores(self, class_index: int) -> torch.Tensor:
        """(B, N) instance scores for one class (the single map when the head has one branch)."""
        if self.instance_scores.dim() == 2:
            return self.instance_scores
        return self.instance_scores[..., class_index]


class MILHead(nn.Module, ABC):
    """Base class of the MIL heads.

    Args:
        in_features: F, the per-instance feature size.
        num_classes: C >= 2; a binary task has two logits so that every head trains with cross-entropy.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}.")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (binary tasks use 2 logits), got {num_classes}.")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)

    @abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """Score a batch of bags.

        Args:
            x: (B, N, F) instance features, or one bag as (N, F).
            mask: (B, N) bool, True for real instances; None means every instance is real.

        Returns:
            The bag logits (B, C), instance scores and head-specific extras.
        """

    def loss(self, output: MILOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a forward pass: cross-entropy on the bag logits unless a head says otherwise.

        Args:
            output: what :meth:`forward` returned for this batch.
            labels: (B,) integer class labels ((B, 1) or a scalar for one bag are accepted).

        Returns:
            The total loss (differentiable) and its parts, detached, for logging.
        """
        labels = self.check_labels(labels, output.logits)
        bag = F.cross_entropy(output.logits.float(), labels)
        return bag, {"bag": bag.detach()}

    def check_labels(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Labels as a (B,) long tensor on the logits' device, with a clear error when they do not fit."""
        labels = torch.as_tensor(labels, device=logits.device).reshape(-1).long()
        if labels.numel() != logits.shape[0]:
            raise ValueError(f"got {labels.numel()} labels for a batch of {logits.shape[0]} bags.")
        return labels


def prepare_bags(x: torch.Tensor, mask: torch.Tensor | None, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring input to the (B, N, F) + (B, N) bool form and reject what would silently give garbage.

    Raises:
        ValueError: wrong rank or feature size, a mask of another shape, an empty bag or a bag with no real
            instance (attention over nothing has no meaning).
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
        if mask is not None and mask.dim() == 1:
            mask = mask.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"bags must be (B, N, F) or (N, F) features, got shape {tuple(x.shape)}.")
    if x.shape[-1] != in_features:
        raise ValueError(f"this head expects {in_features} features per instance, got {x.shape[-1]}.")
    if x.shape[1] == 0:
        raise ValueError("a bag needs at least one instance, got N = 0.")
    if mask is None:
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must be (B, N) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}.")
    mask = mask.to(device=x.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every bag needs at least one real instance (mask is all False for some bag).")
    return x, mask


def no_autocast(t: torch.Tensor) -> torch.autocast:
    """A region where autocast is off on ``t``'s device, for maths that must stay in float32 (softmax logits,
    iterative pseudo-inverses): casting inputs with ``.float()`` alone is undone by autocast at the next matmul."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _expand_mask(mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    # Masks are (B, N); per-class scores carry a trailing class axis.
    return mask.unsqueeze(-1) if scores.dim() == mask.dim() + 1 else mask


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax over instances in float32, padding filled with the most negative finite float and zeroed after.

    Float32 keeps bf16/fp16 autocast from flattening the attention; a finite fill (not -inf) keeps an all-padding
    row from producing NaN, and the final zeroing makes padding contribute exactly nothing.
    """
    scores = scores.float()
    m = _expand_mask(mask, scores)
    weights = torch.softmax(scores.masked_fill(~m, torch.finfo(scores.dtype).min), dim=dim)
    return weights.masked_fill(~m, 0.0)


def masked_max(scores: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Max (value, index) over real instances, in float32."""
    scores = scores.float()
    m = _expand_mask(mask, scores)
    return scores.masked_fill(~m, torch.finfo(scores.dtype).min).max(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean over real instances, in float32."""
    values = values.float()
    m = _expand_mask(mask, values).to(values.dtype)
    return (values * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def zero_padding(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set padding positions of (B, N) or (B, N, C) scores to 0 so heatmaps never show padding."""
    return scores.masked_fill(~_expand_mask(mask, scores), 0.0)
