"""CLAM: clustering-constrained attention MIL (Lu et al., Nat. Biomed. Eng. 2021), single- and multi-branch.

Written from the paper's Methods section (the reference code is GPL and was not used):

- instance embeddings ``h_k = ReLU(W_1 z_k)`` (fc layer, dropout);
- gated attention ``a_{i,k} = softmax_k(W_a,i (tanh(V_a h_k) ⊙ sigm(U_a h_k)))``, one map (SB) or one map per
  class i (MB);
- slide representation ``h_slide,i = Σ_k a_{i,k} h_k`` and slide score ``s_slide,i = W_c,i h_slide,i``
  (per-class classifiers for MB, one linear classifier over the single representation for SB);
- instance-level clustering: for the ground-truth class, the B most and B least attended instances are pseudo-
  labelled positive / negative evidence for that class's instance classifier ``W_inst,i``; with mutually
  exclusive classes (``subtyping=True``) the B most attended instances of every other class's map are also
  labelled negative for that class; loss: smooth top-1 SVM (Berrada et al. 2018) or cross-entropy;
- total loss ``c1 L_slide + c2 L_patch`` with ``c1 = bag_weight`` and ``c2 = 1 - bag_weight`` (paper: 0.7/0.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GatedAttention
from .base import MILHead, MILOutput, masked_softmax, prepare_bags
from .registry import MIL_HEADS

__all__ = ["CLAMMB", "CLAMSB", "smooth_top1_svm_loss"]


def smooth_top1_svm_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, tau: float = 1.0
) -> torch.Tensor:
    """Smooth top-1 multi-class SVM loss, ``τ log Σ_j exp((α·[j ≠ y] + s_j − s_y) / τ)``, averaged.

    Berrada, Zisserman & Kumar, "Smooth loss functions for deep top-k classification", ICLR 2018 (the k = 1
    case of their smoothed top-k SVM), as the CLAM paper uses for its instance loss.
    """
    logits = logits.float()
    margin = alpha * (1.0 - F.one_hot(targets, logits.shape[-1]).to(logits.dtype))
    true_score = logits.gather(-1, targets.unsqueeze(-1))
    return (tau * torch.logsumexp((margin + logits - true_score) / tau, dim=-1)).mean()


class _CLAM(MILHead):
    """Shared body of CLAM-SB and CLAM-MB; ``branches`` is 1 or ``num_classes``.

    Args:
        in_features: per-instance feature size (1024 in the paper's ResNet-50 features).
        num_classes: number of slide classes.
        hidden_dim: size of h_k (paper: 512).
        attention_dim: hidden size of the gated attention (paper: 256, "big" variant 384).
        dropout: dropout after the embedding fc and inside the attention net (paper: 0.25).
        k_sample: B, instances sampled from each end of the attention ranking (paper: 8). A bag with n real
            instances uses ``min(k_sample, n // 2)`` so that the top and bottom sets never overlap; a one-instance
            bag has no clustering term.
        bag_weight: c1, weight of the slide loss; the instance loss gets ``1 - bag_weight``.
        instance_loss: "svm" (smooth top-1 SVM, the paper's choice) or "ce".
        subtyping: classes are mutually exclusive, so other classes' top instances are negative evidence too.
    """

    branches_per_class: bool = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        instance_loss: str = "svm",
        subtyping: bool = False,
    ) -> None:
        super().__init__(in_features, num_classes)
        if k_sample < 1:
            raise ValueError(f"k_sample must be >= 1, got {k_sample}.")
        if not 0.0 <= bag_weight <= 1.0:
            raise ValueError(f"bag_weight must be in [0, 1], got {bag_weight}.")
        if instance_loss not in ("svm", "ce"):
            raise ValueError(f"instance_loss must be 'svm' or 'ce', got '{instance_loss}'.")
        self.k_sample = int(k_sample)
        self.bag_weight = float(bag_weight)
        self.instance_loss_name = instance_loss
        self.subtyping = bool(subtyping)
        branches = num_classes if self.branches_per_class else 1
        self.embed = nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, branches=branches, dropout=dropout)
        # One binary (evidence / no evidence) classifier per class, W_inst,i.
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(num_classes))

    def _classify(self, slide_repr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """Slide logits (B, C); ``instance_scores`` are the attention weights, (B, N) for SB, (B, N, C) for MB.

        ``aux`` holds ``embeddings`` (B, N, hidden), ``attention_logits`` (B, N, branches) and ``mask``, which
        :meth:`loss` needs for instance clustering.
        """
        x, mask = prepare_bags(x, mask, self.in_features)
        h = self.embed(x)
        raw = self.attention(h)
        attn = masked_softmax(raw, mask, dim=1)
        slide_repr = torch.einsum("bnk,bnd->bkd", attn.to(h.dtype), h)
        logits = self._classify(slide_repr)
        scores = attn if self.branches_per_class else attn[..., 0]
        return MILOutput(logits, scores, {"embeddings": h, "attention_logits": raw, "mask": mask})

    def loss(self, output: MILOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``bag_weight · CE(slide) + (1 − bag_weight) · instance clustering loss``.

        Returns:
            The total and its parts ``bag`` and ``instance`` (detached).
        """
        labels = self.check_labels(labels, output.logits)
        bag = F.cross_entropy(output.logits.float(), labels)
        instance = self.instance_clustering_loss(output, labels)
        total = self.bag_weight * bag + (1.0 - self.bag_weight) * instance
        return total, {"bag": bag.detach(), "instance": instance.detach()}

    def _instance_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.instance_loss_name == "svm":
            return smooth_top1_svm_loss(logits, targets)
        return F.cross_entropy(logits.float(), targets)

    def instance_clustering_loss(self, output: MILOutput, labels: torch.Tensor) -> torch.Tensor:
        """Mean over bags of the mean over the used instance classifiers of their pseudo-label loss.

        Bags too small to sample from (one real instance) are skipped; if every bag is skipped the loss is 0.
        """
        h = output.aux["embeddings"]
        raw = output.aux["attention_logits"].float()
        mask = output.aux["mask"]
        n_real = mask.sum(dim=1).tolist()
        label_list = labels.tolist()
        bag_losses = []
        for b, (n, y) in enumerate(zip(n_real, label_list)):
            k = min(self.k_sample, int(n) // 2)
            if k == 0:
                continue
            terms = []
            for c in range(self.num_classes):
                if c != y and not self.subtyping:
                    continue
                s = raw[b, :, c if self.branches_per_class else 0]
                top = s.masked_fill(~mask[b], float("-inf")).topk(k).indices
                classifier = self.instance_classifiers[c]
                if c == y:
                    bottom = s.masked_fill(~mask[b], float("inf")).topk(k, largest=False).indices
                    idx = torch.cat([top, bottom])
                    targets = torch.cat([top.new_ones(k), top.new_zeros(k)])
                else:
                    idx, targets = top, top.new_zeros(k)
                terms.append(self._instance_loss(classifier(h[b, idx]), targets))
            bag_losses.append(torch.stack(terms).mean())
        if not bag_losses:
            return h.new_zeros((), dtype=torch.float32)
        return torch.stack(bag_losses).mean()


@MIL_HEADS.register("clam_sb")
class CLAMSB(_CLAM):
    """CLAM single-branch: one attention map shared by all classes, a linear slide classifier on its pooling."""

    branches_per_class = False

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 512, **kwargs) -> None:
        super().__init__(in_features, num_classes, hidden_dim=hidden_dim, **kwargs)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def _classify(self, slide_repr: torch.Tensor) -> torch.Tensor:
        return self.classifier(slide_repr[:, 0])


@MIL_HEADS.register("clam_mb")
class CLAMMB(_CLAM):
    """CLAM multi-branch: one attention map and one slide representation per class, scored by ``W_c,i``."""

    branches_per_class = True

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 512, **kwargs) -> None:
        super().__init__(in_features, num_classes, hidden_dim=hidden_dim, **kwargs)
        # Row i of the weight is W_c,i: class i is scored only from its own slide representation.
        self.class_weight = nn.Parameter(torch.empty(num_classes, hidden_dim))
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.kaiming_uniform_(self.class_weight, a=5**0.5)

    def _classify(self, slide_repr: torch.Tensor) -> torch.Tensor:
        return (slide_repr * self.class_weight.to(slide_repr.dtype)).sum(-1) + self.class_bias.to(slide_repr.dtype)
