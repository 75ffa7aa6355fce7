"""DSMIL: dual-stream MIL (Li, Li & Eliceiri, CVPR 2021, Section 3.1).

- Instance stream: an instance classifier ``W_0`` scores every instance; per class, the max-scoring
  instance is the critical instance ``h_m`` and its score ``c_m(B)`` is the max-pooling bag score.
- Bag stream: queries ``q_i = W_q h_i`` and values ``v_i = W_v h_i``; the attention of instance i is a
  softmax over instances of the inner product ``<q_i, q_m>`` with the critical instance's query (the "distance"
  measurement U; divided by sqrt(dim q) as in the authors' release, which keeps the softmax from
  saturating at init); the bag embedding is ``b = Σ_i U(h_i, h_m) v_i``, one row per class.
- Bag classifier ``W_b``: a Conv1d with C input channels, C output channels and kernel = value size over
  the (C, value size) class-wise bag embeddings, as in the authors' release. A kernel that spans the whole
  embedding makes this a linear layer on the flattened (C × value size) matrix: each class score may read every
  class's embedding.
- Bag score ``c(B) = ½ (c_m(B) + c_b(B))``: the mean of the two streams' scores; the training loss mixes the two
  streams' cross-entropies (``bag_weight`` and ``max_weight``, 0.5/0.5 as in the paper). The paper's binary/multi-label
  setting uses sigmoid + BCE; here both streams are softmax logits with CE, like every other head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MILHead, MILOutput, masked_max, masked_softmax, no_autocast, prepare_bags
from .registry import MIL_HEADS

__all__ = ["DSMIL"]


@MIL_HEADS.register("dsmil")
class DSMIL(MILHead):
    """Dual-stream MIL head.

    Args:
        in_features: per-instance feature size F (instances are scored on the features directly, as in the paper
            where the embedder is the frozen feature extractor).
        num_classes: number of bag classes.
        query_dim: size of the query space (paper release: 128).
        value_dim: size of ``v_i`` (None: F, as the release).
        dropout: dropout on the features before the value projection.
        nonlinear_query: ``W_q`` is Linear-ReLU-Linear-Tanh (release default) rather than one Linear.
        bag_weight: weight of the bag-stream CE in the loss.
        max_weight: weight of the max-instance-stream CE in the loss.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        query_dim: int = 128,
        value_dim: int | None = None,
        dropout: float = 0.0,
        nonlinear_query: bool = True,
        bag_weight: float = 0.5,
        max_weight: float = 0.5,
    ) -> None:
        super().__init__(in_features, num_classes)
        if bag_weight < 0 or max_weight < 0 or bag_weight + max_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {bag_weight}, {max_weight}.")
        value_dim = value_dim or in_features
        self.bag_weight = float(bag_weight)
        self.max_weight = float(max_weight)
        self.query_dim = int(query_dim)
        self.instance_classifier = nn.Linear(in_features, num_classes)
        if nonlinear_query:
            self.query = nn.Sequential(
                nn.Linear(in_features, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh()
            )
        else:
            self.query = nn.Linear(in_features, query_dim)
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, value_dim), nn.ReLU())
        self.bag_classifier = nn.Conv1d(num_classes, num_classes, kernel_size=value_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """Bag logits (B, C) = mean of the two streams; ``instance_scores`` = attention U (B, N, C).

        ``aux``: ``instance_logits`` (B, N, C), ``max_logits`` and ``bag_logits`` (B, C), ``critical_index``
        (B, C), ``mask``.
        """
        x, mask = prepare_bags(x, mask, self.in_features)
        instance_logits = self.instance_classifier(x)
        max_logits, critical = masked_max(instance_logits, mask, dim=1)
        # The critical instance of class c, per bag: (B, C, F).
        h_crit = torch.gather(x, 1, critical.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        q = self.query(x)
        q_crit = self.query(h_crit)
        with no_autocast(q):
            similarity = torch.bmm(q.float(), q_crit.float().transpose(1, 2)) / math.sqrt(self.query_dim)
        attn = masked_softmax(similarity, mask, dim=1)
        v = self.value(x)
        bag_embedding = torch.bmm(attn.transpose(1, 2).to(v.dtype), v)
        bag_logits = self.bag_classifier(bag_embedding).squeeze(-1)
        logits = 0.5 * (bag_logits.float() + max_logits)
        aux = {
            "instance_logits": instance_logits.masked_fill(~mask.unsqueeze(-1), 0.0),
            "max_logits": max_logits,
            "bag_logits": bag_logits,
            "critical_index": critical,
            "mask": mask,
        }
        return MILOutput(logits, attn, aux)

    def loss(self, output: MILOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``bag_weight · CE(bag stream) + max_weight · CE(max-instance stream)``; parts ``bag`` and ``max``."""
        labels = self.check_labels(labels, output.logits)
        bag = F.cross_entropy(output.aux["bag_logits"].float(), labels)
        max_term = F.cross_entropy(output.aux["max_logits"].float(), labels)
        total = self.bag_weight * bag + self.max_weight * max_term
        return total, {"bag": bag.detach(), "max": max_term.detach()}
