"""TransMIL: transformer-based correlated MIL (Shao et al., NeurIPS 2021, TPT of Algorithm 1 + PPEG).

Steps (Algorithm 1): project instance features (Linear + ReLU); square the sequence by appending copies of its
first ``⌈√N⌉² − N`` tokens; prepend a learnable class token; TPT layer 1 (Nyström self-attention, pre-norm,
residual); PPEG (depthwise 7/5/3 convolutions on the √N × √N token grid, added to it, class token untouched);
TPT layer 2; LayerNorm; linear classifier on the class token.

Padded batches: squaring and the Nyström landmarks depend on each bag's own length, and the PPEG grid is built
from the token order, so masking inside the layers would not reproduce a bag's own result. A batch whose bags
are all full is processed in one pass; otherwise each bag's real instances are run on their own and the results
stacked, which makes padded results equal per-bag results by construction. MIL batches are usually one bag, so
the loop costs little.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import MILHead, MILOutput, prepare_bags
from .nystrom import NystromAttention
from .registry import MIL_HEADS

__all__ = ["PPEG", "TransMIL", "TransformerLayer"]


class TransformerLayer(nn.Module):
    """TPT layer: ``x + NystromAttention(LayerNorm(x))`` (TransMIL's layers have no feed-forward block)."""

    def __init__(self, dim: int, **attention_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromAttention(dim, **attention_kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, cls_row = self.attention(self.norm(x))
        return x + out, cls_row


class PPEG(nn.Module):
    """Pyramid position encoding generator (Shao et al.): depthwise 7×7, 5×5 and 3×3 convolutions of
    the token grid added to it; the class token passes through unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        b, _, dim = tokens.shape
        cls, grid = tokens[:, :1], tokens[:, 1:].transpose(1, 2).reshape(b, dim, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


@MIL_HEADS.register("transmil")
class TransMIL(MILHead):
    """TransMIL head.

    Args:
        in_features: per-instance feature size.
        num_classes: number of bag classes.
        dim: token size (paper: 512).
        heads: attention heads (paper: 8).
        num_landmarks: Nyström landmarks (None: dim // 2, as the paper's release).
        pinv_iterations: Moore-Penrose iterations (paper release: 6).
        residual_conv_kernel: Nyström residual convolution kernel (33; 0 disables).
        dropout: dropout on the attention output (release: 0.1).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int = 512,
        heads: int = 8,
        num_landmarks: int | None = None,
        pinv_iterations: int = 6,
        residual_conv_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_features, num_classes)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        attention_kwargs = {
            "heads": heads,
            "num_landmarks": num_landmarks or max(dim // 2, 1),
            "pinv_iterations": pinv_iterations,
            "residual_conv_kernel": residual_conv_kernel,
            "dropout": dropout,
        }
        self.projection = nn.Sequential(nn.Linear(in_features, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransformerLayer(dim, **attention_kwargs)
        self.ppeg = PPEG(dim)
        self.layer2 = TransformerLayer(dim, **attention_kwargs)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """Bag logits (B, C); ``instance_scores`` (B, N): the class token's attention over the instances in the
        last layer, averaged over heads, with each square-padding copy's share added to its source instance."""
        x, mask = prepare_bags(x, mask, self.in_features)
        if bool(mask.all()):
            logits, scores = self._forward_full(x)
            return MILOutput(logits, scores, {"mask": mask})
        logits, scores = [], x.new_zeros(mask.shape, dtype=torch.float32)
        for b in range(x.shape[0]):
            bag_logits, bag_scores = self._forward_full(x[b, mask[b]].unsqueeze(0))
            logits.append(bag_logits)
            scores[b, mask[b]] = bag_scores[0]
        return MILOutput(torch.cat(logits), scores, {"mask": mask})

    def _forward_full(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags without padding, (B, n, F) -> logits (B, C), instance scores (B, n)."""
        b, n, _ = x.shape
        h = self.projection(x)
        side = math.isqrt(n - 1) + 1  # ⌈√n⌉ without float rounding
        # ⌈√n⌉² − n ≤ n for every n ≥ 1, so the modulo only guards the indexing, it never repeats a token twice.
        copies = torch.arange(side * side - n, device=x.device) % n
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(h.dtype), h, h[:, copies]], dim=1)
        tokens, _ = self.layer1(tokens)
        tokens = self.ppeg(tokens, side)
        tokens, cls_row = self.layer2(tokens)
        logits = self.classifier(self.norm(tokens)[:, 0])
        instance_row = cls_row[:, 1:]
        scores = instance_row[:, :n].index_add(1, copies, instance_row[:, n:])
        return logits, scores
