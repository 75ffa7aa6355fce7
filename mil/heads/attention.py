"""Gated attention scoring (Ilse et al., ICML 2018, attention-based MIL pooling), shared by ABMIL and CLAM."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatedAttention"]


class GatedAttention(nn.Module):
    """Unnormalised attention scores ``w_k^T (tanh(V h) ⊙ sigm(U h))`` for ``branches`` independent maps.

    Ilse et al. 2018, the gated attention mechanism (or, with ``gated=False``, the plain ``w^T tanh(V h)``
    attention); CLAM (Lu et al. 2021, Methods) uses the same form with one branch (CLAM-SB) or one branch per
    class (CLAM-MB). The softmax over instances is left to
    the caller because it needs the padding mask.

    Args:
        in_dim: size of the instance embeddings h.
        attention_dim: hidden size of the V and U branches.
        branches: number of attention maps (rows of w).
        dropout: dropout on the tanh and sigmoid branches (CLAM applies dropout throughout the attention net).
        gated: use the sigmoid gate; False gives plain tanh attention.
    """

    def __init__(
        self, in_dim: int, attention_dim: int, branches: int = 1, dropout: float = 0.0, gated: bool = True
    ) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = (
            nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Sigmoid(), nn.Dropout(dropout)) if gated else None
        )
        self.score = nn.Linear(attention_dim, branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, in_dim) embeddings -> (B, N, branches) raw scores."""
        a = self.tanh_branch(h)
        if self.gate_branch is not None:
            a = a * self.gate_branch(h)
        return self.score(a)
