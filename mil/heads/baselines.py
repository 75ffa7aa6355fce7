"""Baseline MIL heads: mean pooling, max pooling and attention-based MIL (ABMIL, Ilse et al., ICML 2018).

Mean and max pooling share one design: instance embedding (Linear-ReLU-Dropout) then a linear instance classifier,
pooled over the bag's real instances. Pooling the instance logits gives heatmap scores for free; for the mean,
it is the same as classifying the mean embedding because the classifier is affine. Max pooling of instance
scores is the mi-Net style (Wang et al. 2018) the classic MIL assumption describes (a bag is positive when its
most positive instance is), rather than a max over embedding dimensions.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import GatedAttention
from .base import MILHead, MILOutput, masked_max, masked_mean, masked_softmax, prepare_bags, zero_padding
from .registry import MIL_HEADS

__all__ = ["ABMIL", "MaxPoolingMIL", "MeanPoolingMIL"]


class _InstancePooling(MILHead):
    """Embed instances, score each with a linear classifier, pool the scores over real instances.

    Args:
        in_features: per-instance feature size.
        num_classes: number of bag classes.
        hidden_dim: embedding size.
        dropout: dropout after the embedding.
    """

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 512, dropout: float = 0.25) -> None:
        super().__init__(in_features, num_classes)
        self.embed = nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def _pool(self, instance_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """Bag logits (B, C); ``instance_scores`` are the instance logits (B, N, C)."""
        x, mask = prepare_bags(x, mask, self.in_features)
        instance_logits = self.classifier(self.embed(x))
        return MILOutput(self._pool(instance_logits, mask), zero_padding(instance_logits, mask), {"mask": mask})


@MIL_HEADS.register("mean")
class MeanPoolingMIL(_InstancePooling):
    """Mean of the instance logits over the bag (= linear classifier on the mean embedding)."""

    def _pool(self, instance_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(instance_logits, mask, dim=1)


@MIL_HEADS.register("max")
class MaxPoolingMIL(_InstancePooling):
    """Per-class max of the instance logits over the bag."""

    def _pool(self, instance_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_max(instance_logits, mask, dim=1)[0]


@MIL_HEADS.register("abmil")
class ABMIL(MILHead):
    """Attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018).

    Embedding ``h_k`` (Linear-ReLU-Dropout, the paper's instance-level network on top of frozen features), gated
    attention weights ``a_k = softmax_k(w^T (tanh(V h_k) ⊙ sigm(U h_k)))`` (without the gate when
    ``gated=False``), bag embedding ``z = Σ_k a_k h_k`` (attention-based MIL pooling),
    linear classifier on z (C logits with softmax instead of the paper's single sigmoid output).

    Args:
        in_features: per-instance feature size.
        num_classes: number of bag classes.
        hidden_dim: L, embedding size (paper: 500).
        attention_dim: attention hidden size (paper: 128).
        dropout: dropout after the embedding.
        gated: gated attention or plain tanh attention.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dim: int = 512,
        attention_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes)
        self.embed = nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, branches=1, gated=gated)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """Bag logits (B, C); ``instance_scores`` are the attention weights a_k (B, N)."""
        x, mask = prepare_bags(x, mask, self.in_features)
        h = self.embed(x)
        attn = masked_softmax(self.attention(h)[..., 0], mask, dim=1)
        z = torch.bmm(attn.unsqueeze(1).to(h.dtype), h).squeeze(1)
        return MILOutput(self.classifier(z), attn, {"mask": mask})
