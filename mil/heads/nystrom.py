"""Nyström self-attention (Xiong et al., "Nyströmformer", AAAI 2021), as TransMIL uses it.

softmax(QK^T) is approximated by ``softmax(Q K̃^T) · pinv(softmax(Q̃ K̃^T)) · softmax(Q̃ K^T)`` (Section 3), with
landmarks Q̃, K̃ the means of m contiguous segments of the sequence (segment-means) and the pseudo-inverse
computed by the iterative Moore-Penrose scheme of Razavi et al. 2014 that the paper adopts. All of it runs in
float32, outside autocast: the iteration is not stable in bf16/fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import no_autocast

__all__ = ["NystromAttention", "iterative_pinv", "segment_means"]


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Approximate Moore-Penrose pseudo-inverse of each (m, m) matrix in ``a`` (..., m, m).

    ``Z_0 = A^T / (‖A‖_1 ‖A‖_∞)``, ``Z_{j+1} = ¼ Z_j (13 I − A Z_j (15 I − A Z_j (7 I − A Z_j)))`` (Xiong et al.,
    after Razavi et al. 2014). The norms are taken per matrix, so one bag's or one head's values never influence
    another's (a single max over the whole batch would make a bag's output depend on its batch mates).
    """
    abs_a = a.abs()
    norm_1 = abs_a.sum(dim=-2).amax(dim=-1)  # max column sum
    norm_inf = abs_a.sum(dim=-1).amax(dim=-1)  # max row sum
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(t: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Means of ``num_segments`` contiguous, nearly equal segments along dim -2 of ``t`` (..., n, d).

    Xiong et al. assume m divides n; splitting into segments of floor/ceil(n/m) tokens instead of zero-padding the
    sequence keeps every landmark a mean of real tokens (padding tokens would become spurious landmarks).
    """
    n = t.shape[-2]
    segment = torch.arange(n, device=t.device) * num_segments // n
    sums = t.new_zeros((*t.shape[:-2], num_segments, t.shape[-1])).index_add(-2, segment, t)
    counts = torch.bincount(segment, minlength=num_segments).to(t.dtype)
    return sums / counts[:, None]


class NystromAttention(nn.Module):
    """Multi-head self-attention with the Nyström approximation.

    Sequences no longer than ``num_landmarks`` use exact softmax attention: with one landmark per token the
    approximation reduces to it (up to the pseudo-inverse error), so the exact form is both cheaper and better.

    Args:
        dim: token size.
        heads: number of heads.
        dim_head: size per head (None: dim // heads).
        num_landmarks: m, number of landmarks (TransMIL: dim // 2).
        pinv_iterations: iterations of :func:`iterative_pinv` (TransMIL: 6).
        residual_conv_kernel: kernel of the depthwise convolution of V along the sequence that Nyströmformer's
            release adds to the output (TransMIL keeps it, 33); 0 disables it.
        dropout: dropout on the output projection.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int | None = None,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_conv_kernel: int = 33,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dim_head = dim_head or dim // heads
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be >= 1, got {num_landmarks}.")
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.residual_conv = None
        if residual_conv_kernel:
            pad = residual_conv_kernel // 2
            self.residual_conv = nn.Conv2d(
                heads, heads, (residual_conv_kernel, 1), padding=(pad, 0), groups=heads, bias=False
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend within each sequence of ``x`` (B, n, dim).

        Returns:
            The output (B, n, dim) and the attention row of token 0 (the class token) averaged over heads,
            (B, n); with the approximation it is a row of the Nyström matrix, which need not be non-negative.
        """
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        with no_autocast(x):
            q, k, v = q.float() * self.dim_head**-0.5, k.float(), v.float()
            if n <= self.num_landmarks:
                attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
                out = attn @ v
                cls_row = attn[:, :, 0]
            else:
                q_land = segment_means(q, self.num_landmarks)
                k_land = segment_means(k, self.num_landmarks)
                kernel_1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)
                kernel_2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
                kernel_3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)
                left = kernel_1 @ iterative_pinv(kernel_2, self.pinv_iterations)
                out = left @ (kernel_3 @ v)
                cls_row = (left[:, :, :1] @ kernel_3).squeeze(-2)
            if self.residual_conv is not None:
                # Weights cast so a half-precision model still convolves in float32 here.
                conv = self.residual_conv
                out = out + F.conv2d(v, conv.weight.float(), padding=conv.padding, groups=conv.groups)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head).to(x.dtype)
        return self.to_out(out), cls_row.mean(dim=1)
