"""The gradient-matching distance shared by DC, DSA and Histo-DD, and the per-class matching loss.

Gradient matching (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021, Eq. 9-10)
compares, layer by layer, the gradient of the training loss on a real batch of class c with the gradient on the
synthetic images of class c:

    D(∇θL(S_c), ∇θL(T_c)) = Σ_l d(A_l, B_l)

with one layer-wise distance ``d`` from :data:`GRADIENT_DISTANCES`:

* ``dc`` — DC's Eq. 10: per output unit i (a row of the layer's gradient reshaped to (out, -1)),
  ``Σ_i (1 - A_i·B_i / (‖A_i‖‖B_i‖))``; one-dimensional parameters (biases, normalisation scales) are skipped,
  as in the paper ("we ignore the bias terms").
* ``l1`` — Histo-DD's choice (seed 003, §3.1, Eq. 1: "we use L1 loss for calculating Dis"): the L1 norm of the
  difference of each parameter tensor's gradients (sum over elements), summed over layers — the convention of the
  IDC / Acc-DD code line that Histo-DD's model augmentation comes from, and the one whose scale suits
  Histo-DD's image learning rates (5e-3 … 0.5); the mean instead divides each layer by its size.
* ``l1_mean`` — the mean absolute difference per layer (``nn.L1Loss``), summed over layers.
* ``mse`` — the squared Euclidean distance per layer (the references' ``mse`` metric).
* ``cosine`` — ``1 - cos`` of each layer's whole flattened gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..utils import Registry

__all__ = [
    "GRADIENT_DISTANCES",
    "LayerDistance",
    "class_gradient_match",
    "gradient_distance",
    "loss_gradients",
]

LayerDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

GRADIENT_DISTANCES: Registry[LayerDistance] = Registry("gradient distance")


@GRADIENT_DISTANCES.register("dc")
def dc_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """DC Eq. 10: Σ over output units of ``1 - cos``; 1-D parameters contribute 0."""
    if g_real.ndim == 1:
        return g_syn.new_zeros(())
    a, b = g_real.reshape(g_real.shape[0], -1), g_syn.reshape(g_syn.shape[0], -1)
    # The reference's epsilon in the denominator (not F.cosine_similarity's clamp), so all-zero rows give 1.
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)
    return (1.0 - cos).sum()


@GRADIENT_DISTANCES.register("l1")
def l1_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Histo-DD Eq. 1 with ``Dis`` = L1: the L1 norm of the difference of the layer's gradients."""
    return (g_syn - g_real).abs().sum()


@GRADIENT_DISTANCES.register("l1_mean")
def l1_mean_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the layer's gradients (``nn.L1Loss``)."""
    return F.l1_loss(g_syn, g_real)


@GRADIENT_DISTANCES.register("mse")
def mse_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of the layer's gradients."""
    return ((g_syn - g_real) ** 2).sum()


@GRADIENT_DISTANCES.register("cosine")
def cosine_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between the layer's flattened gradients."""
    a, b = g_real.flatten(), g_syn.flatten()
    return 1.0 - (a * b).sum() / (a.norm() * b.norm() + 1e-6)


def gradient_distance(
    g_real: Sequence[torch.Tensor], g_syn: Sequence[torch.Tensor], distance: str | LayerDistance = "dc"
) -> torch.Tensor:
    """Σ over layers of the layer-wise ``distance`` (a registered name or a callable)."""
    if len(g_real) != len(g_syn):
        raise ValueError(f"{len(g_real)} real but {len(g_syn)} synthetic gradient tensors.")
    fn = GRADIENT_DISTANCES.get(distance) if isinstance(distance, str) else distance
    return torch.stack([fn(a, b) for a, b in zip(g_real, g_syn)]).sum()


def loss_gradients(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, ...]:
    """Gradients of the cross-entropy of ``net`` on ``(x, y)`` w.r.t. its trainable parameters."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = F.cross_entropy(net(x), y)
    return torch.autograd.grad(loss, params, create_graph=create_graph)


def class_gradient_match(
    net: torch.nn.Module,
    x_real: torch.Tensor,
    x_syn: torch.Tensor,
    label: int,
    distance: str | LayerDistance = "dc",
) -> torch.Tensor:
    """Gradient matching for one class: ``D(∇θL(x_syn), ∇θL(x_real))`` (DC Eq. 9), differentiable w.r.t. ``x_syn``.

    The real gradient is a constant target (detached); the synthetic one keeps its graph so that the distance can
    be back-propagated to the synthetic images (second-order through the network).
    """
    y_real = torch.full((x_real.shape[0],), label, dtype=torch.long, device=x_real.device)
    y_syn = torch.full((x_syn.shape[0],), label, dtype=torch.long, device=x_syn.device)
    g_real = [g.detach() for g in loss_gradients(net, x_real, y_real)]
    g_syn = loss_gradients(net, x_syn, y_syn, create_graph=True)
    return gradient_distance(g_real, g_syn, distance)
