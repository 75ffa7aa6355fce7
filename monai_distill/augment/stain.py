"""Differentiable Macenko stain normalisation for batches of H&E patches.

Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009, as used inside
the distillation loss by Histo-DD (Cong et al., seed 003, §3.1 "Data augmentation with stain normalisation"): the
*template's* stain matrix and maximum concentrations are fitted once, offline, with torchstain's Macenko maths
(:meth:`StainTemplate.fit`) and saved to a small JSON file; normalising a batch (:class:`MacenkoNormalizer`) is
then pure torch, batched, and differentiable with respect to the input pixels, so that Eq. 4 of Histo-DD
(``dDis/dP = dDis/d∇L · d∇L/dAug · dAug/dP``) reaches the synthetic patches.

Per image (Macenko §2; the same steps and constants as torchstain's ``TorchMacenkoNormalizer.normalize``):

1. optical density ``OD = -log((I + 1) / Io)`` per pixel and channel (I in 0..255);
2. tissue pixels: every channel's OD >= ``beta`` (transparent/background pixels are dropped);
3. the plane of the two largest eigenvectors ``E`` of the tissue ODs' covariance;
4. angles ``phi = atan2(ODᵀE₂, ODᵀE₁)``; the stain vectors are ``E·(cos, sin)`` of the ``alpha`` and
   ``100 - alpha`` percentiles of ``phi``, haematoxylin first (larger red OD);
5. concentrations ``C`` solving ``HE · C = OD`` in the least-squares sense, for every pixel;
6. ``C ← C · maxC_ref / maxC`` with ``maxC`` the 99th percentile of each stain's concentrations;
7. ``I_norm = min(Io · exp(-HE_ref · C), 255)``.

Percentiles are taken as torchstain does ("nearest" rank, ``k = 1 + round(q/100 · (n - 1))``), so the only
difference from torchstain is that its output is truncated to integers.

Images with too little tissue for steps 3-6 (a background tile, a blank synthetic patch) are returned unchanged,
with a warning: a defined, differentiable result instead of torchstain's NaN or crash.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import atomic_path

__all__ = ["MacenkoNormalizer", "StainTemplate", "select_template_index"]


def _to_chw_uint8(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An RGB(A) image as torchstain wants it: uint8 (3, H, W). Accepts HWC/CHW, uint8 or float in [0, 1]."""
    t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
    if t.ndim != 3:
        raise ValueError(f"expected one RGB image (H, W, 3) or (3, H, W), got shape {tuple(t.shape)}.")
    if t.shape[-1] in (3, 4) and t.shape[0] not in (3, 4):
        t = t.permute(2, 0, 1)
    t = t[:3]
    if t.shape[0] != 3:
        raise ValueError(f"stain normalisation needs RGB images, got {t.shape[0]} channel(s).")
    if t.is_floating_point():
        t = (t.clamp(0, 1) * 255).round()
    return t.to(torch.uint8).contiguous()


@dataclass(frozen=True)
class StainTemplate:
    """The template's Macenko stain matrix and maximum concentrations (fitted offline), and the Macenko settings.

    Attributes:
        stain_matrix: (3, 2) optical-density vectors of haematoxylin and eosin (columns), ``HE_ref``.
        max_concentrations: (2,) 99th-percentile concentrations of the two stains, ``maxC_ref``.
        io: transmitted light intensity ``Io``.
        alpha: percentile of the angle extremes (percent).
        beta: optical-density threshold below which a pixel counts as background.
        source: where the template came from (a file name, a dataset index), recorded for provenance.
    """

    stain_matrix: tuple[tuple[float, float], ...]
    max_concentrations: tuple[float, float]
    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        he = np.asarray(self.stain_matrix, dtype=np.float64)
        maxc = np.asarray(self.max_concentrations, dtype=np.float64)
        if he.shape != (3, 2) or maxc.shape != (2,):
            raise ValueError(f"stain_matrix must be (3, 2) and max_concentrations (2,), got {he.shape}, {maxc.shape}.")
        if not (np.isfinite(he).all() and np.isfinite(maxc).all()) or (maxc <= 0).any():
            raise ValueError(
                f"the stain template is not usable (stain_matrix {he.tolist()}, max_concentrations {maxc.tolist()}); "
                "was it fitted on an image without tissue?"
            )
        object.__setattr__(self, "stain_matrix", tuple(tuple(float(v) for v in row) for row in he))
        object.__setattr__(self, "max_concentrations", (float(maxc[0]), float(maxc[1])))

    @classmethod
    def fit(
        cls,
        image: np.ndarray | torch.Tensor,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        source: str = "",
        min_tissue_fraction: float = 0.01,
    ) -> StainTemplate:
        """Fit on one template image with torchstain's Macenko normaliser (torch backend).

        Args:
            image: RGB(A) image, (H, W, C) or (C, H, W), uint8 or float in [0, 1].
            io: transmitted light intensity.
            alpha: angle percentile.
            beta: background optical-density threshold.
            source: provenance recorded in the template.
            min_tissue_fraction: refuse images with fewer tissue pixels (torchstain would fit noise on them).

        Raises:
            ValueError: the image holds too little tissue for a stain estimate.
        """
        import torchstain  # the package exposes normalizers as an attribute, not as an importable submodule

        rgb = _to_chw_uint8(image)
        od = -torch.log((rgb.double() + 1.0) / io)
        frac = float((od >= beta).all(dim=0).double().mean())
        if frac < min_tissue_fraction:
            raise ValueError(
                f"cannot fit a Macenko stain template on '{source or 'the image'}': only {frac:.2%} of its pixels are "
                f"tissue (optical density >= {beta} in every channel), fewer than {min_tissue_fraction:.0%}."
            )
        ref = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        try:
            ref.fit(rgb, Io=io, alpha=alpha, beta=beta)
        except RuntimeError as e:  # torch raises on an empty or singular tissue selection
            raise ValueError(f"cannot fit a Macenko stain template on '{source or 'the image'}': {e}") from e
        return cls(
            stain_matrix=tuple(map(tuple, ref.HERef.double().tolist())),
            max_concentrations=tuple(ref.maxCRef.double().tolist()),
            io=io,
            alpha=alpha,
            beta=beta,
            source=source,
        )

    @classmethod
    def fit_dataset(cls, images: torch.Tensor, source: str = "dataset", **kwargs: Any) -> StainTemplate:
        """Fit on the image of ``images`` that best represents the set (Histo-DD §3.1).

        The template is the image whose pixel mean and standard deviation are closest to those of the whole set;
        if that image has too little tissue for an estimate, the next closest is used.

        Args:
            images: (N, 3, H, W) RGB in [0, 1].
            source: name recorded in the template (the chosen index is appended).
            kwargs: ``io``, ``alpha``, ``beta`` for :meth:`fit`.
        """
        errors = []
        for idx in select_template_index(images, k=min(16, images.shape[0])):
            try:
                return cls.fit(images[idx], source=f"{source}[{idx}]", **kwargs)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"no image of {source} gives a Macenko stain estimate: {errors[:3]}")

    @property
    def stain_matrix_tensor(self) -> torch.Tensor:
        return torch.tensor(self.stain_matrix, dtype=torch.float64)

    @property
    def max_concentrations_tensor(self) -> torch.Tensor:
        return torch.tensor(self.max_concentrations, dtype=torch.float64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stain_matrix"] = [list(r) for r in self.stain_matrix]
        d["max_concentrations"] = list(self.max_concentrations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StainTemplate:
        known = {"stain_matrix", "max_concentrations", "io", "alpha", "beta", "source", "extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown stain template key(s) {unknown}; valid: {sorted(known)}.")
        return cls(**{**d, "stain_matrix": tuple(map(tuple, d["stain_matrix"]))})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the template as a small JSON file (atomically)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> StainTemplate:
        """Read a template written by :meth:`save`; a missing or malformed file raises an error naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"stain template '{path}' not found; fit one with StainTemplate.fit(...).save().")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"'{path}' is not a stain template: {e}") from e


def select_template_index(images: torch.Tensor, k: int = 1) -> list[int]:
    """Indices of the ``k`` images whose pixel mean and std are closest to the set's (Histo-DD §3.1).

    Args:
        images: (N, C, H, W).
        k: how many candidates, closest first.
    """
    x = images.detach().double().flatten(1)
    per_mean, per_std = x.mean(1), x.std(1)
    dist = (per_mean - x.mean()) ** 2 + (per_std - x.flatten().std()) ** 2
    return torch.argsort(dist)[:k].tolist()


def _rank_index(n: torch.Tensor, q: float) -> torch.Tensor:
    """0-based index of torchstain's "nearest" percentile ``q`` among ``n`` sorted values (``1 + round(...)``)."""
    # Python's round() is round-half-to-even, as is torch.round; float64 so that .5 cases match exactly.
    return torch.round(0.01 * q * (n.double() - 1)).long()


class MacenkoNormalizer:
    """Batched, differentiable Macenko stain normalisation towards a fixed :class:`StainTemplate`.

    Example::

        template = StainTemplate.fit(target_rgb_uint8)        # offline, torchstain's maths
        template.save("stain_template.json")
        norm = MacenkoNormalizer(StainTemplate.load("stain_template.json"))
        y = norm(x)            # x: (N, 3, H, W) RGB in [0, 1], y likewise, differentiable w.r.t. x

    Args:
        template: the fitted template (or a path to its JSON file).
        min_tissue_fraction: an image whose share of tissue pixels (OD >= beta in every channel) is below this is
            returned unchanged, with a warning (also when fewer than 3 tissue pixels or a flat colour leave the
            stain plane undefined).
    """

    def __init__(self, template: StainTemplate | str | os.PathLike, min_tissue_fraction: float = 0.01) -> None:
        self.template = template if isinstance(template, StainTemplate) else StainTemplate.load(template)
        if not 0.0 <= min_tissue_fraction < 1.0:
            raise ValueError(f"min_tissue_fraction must be in [0, 1), got {min_tissue_fraction}.")
        self.min_tissue_fraction = float(min_tissue_fraction)

    def __repr__(self) -> str:
        return f"MacenkoNormalizer(template from '{self.template.source}', min_tissue={self.min_tissue_fraction})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a batch.

        Args:
            x: (N, 3, H, W) RGB in [0, 1] (float; values below 0 are treated as 0).

        Returns:
            (N, 3, H, W) in [0, 1], same dtype and device; images without enough tissue are passed through.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"stain normalisation expects (N, 3, H, W) RGB batches, got {tuple(x.shape)}.")
        if not x.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got {x.dtype}.")
        t = self.template
        n, _, h, w = x.shape
        od = self._optical_density(x.flatten(2))
        with torch.no_grad():
            tissue = (od >= t.beta).all(dim=1)
            count = tissue.sum(1)
            ok = (count >= max(3, math.ceil(self.min_tissue_fraction * h * w))) & self._spread(od, tissue, count)
        out = x
        n_unstained = 0
        if bool(ok.any()):
            idx = torch.nonzero(ok).flatten()
            normed, stained = self._normalise(od[idx], tissue[idx], count[idx])
            normed = normed.reshape(-1, 3, h, w).to(x.dtype)
            # An image whose 99th-percentile concentration of a stain is not positive has no usable stain estimate
            # (step 6 would divide by ~0): it is passed through like a background image.
            n_unstained = int((~stained).sum())
            if n_unstained:
                normed = torch.where(stained.reshape(-1, 1, 1, 1), normed, x[idx])
            out = normed if bool(ok.all()) else x.index_copy(0, idx, normed)
        n_bad = int((~ok).sum())
        if n_bad or n_unstained:
            warnings.warn(
                f"stain normalisation: {n_bad + n_unstained} of {n} image(s) are left unchanged: {n_bad} hold too "
                f"little tissue (optical density >= {t.beta} in every channel on < {self.min_tissue_fraction:.0%} "
                f"of the pixels), {n_unstained} give no positive stain concentration.",
                RuntimeWarning,
                stacklevel=2,
            )
        return out

    def apply_normalised(self, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """Normalise a batch given in dataset units ``(rgb - mean) / std``, and return it in those units."""
        shape = (1, -1, 1, 1)
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
        return (self(x * s + m) - m) / s

    # ------------------------------------------------------------------ the maths
    def _optical_density(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1: (N, 3, P) optical densities; clamping at 0 keeps the log finite for out-of-range pixels."""
        return -torch.log((x.clamp_min(0) * 255.0 + 1.0) / self.template.io)

    @staticmethod
    def _masked_cov(od: torch.Tensor, tissue: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(N, 3, 3) unbiased covariance of the tissue pixels' ODs (torchstain's ``cov(ODhat.T)``)."""
        wgt = tissue.to(od.dtype).unsqueeze(1)
        n = count.to(od.dtype).reshape(-1, 1)
        mean = (od * wgt).sum(-1) / n
        centred = (od - mean.unsqueeze(-1)) * wgt
        return centred @ centred.transpose(1, 2) / (n.unsqueeze(-1) - 1)

    def _spread(self, od: torch.Tensor, tissue: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """True where the tissue ODs span a plane (two non-vanishing eigenvalues), so step 3 is defined."""
        cov = self._masked_cov(od.double(), tissue, count.clamp_min(2))
        evals = torch.linalg.eigvalsh(cov)
        return evals[:, 1] > 1e-10 * evals[:, 2].clamp_min(1e-30)

    def _normalise(
        self, od: torch.Tensor, tissue: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-7 on images that all hold enough tissue; returns (N, 3, P) in [0, 1] and, per image, whether
        both stains' 99th-percentile concentrations are positive (the result is meaningful)."""
        t = self.template
        dtype, dev = od.dtype, od.device
        # Step 3: the two leading eigenvectors (eigh sorts eigenvalues ascending).
        _, evecs = torch.linalg.eigh(self._masked_cov(od, tissue, count))
        plane = evecs[..., 1:]  # (N, 3, 2)
        proj = plane.transpose(1, 2) @ od  # (N, 2, P)
        # Step 4: angles of the tissue pixels. Background pixels get a dummy (1, 1) before atan2 so that their
        # 0/0 derivative cannot turn the (zero) gradient they receive into NaN.
        px = torch.where(tissue, proj[:, 0], torch.ones((), dtype=dtype, device=dev))
        py = torch.where(tissue, proj[:, 1], torch.ones((), dtype=dtype, device=dev))
        phi = torch.where(tissue, torch.atan2(py, px), torch.full((), math.inf, dtype=dtype, device=dev))
        phi_sorted = phi.sort(dim=1).values  # tissue angles first, +inf for background last
        lo = phi_sorted.gather(1, _rank_index(count, t.alpha).unsqueeze(1)).squeeze(1)
        hi = phi_sorted.gather(1, _rank_index(count, 100.0 - t.alpha).unsqueeze(1)).squeeze(1)
        v_min = (plane @ torch.stack([lo.cos(), lo.sin()], dim=1).unsqueeze(-1)).squeeze(-1)  # (N, 3)
        v_max = (plane @ torch.stack([hi.cos(), hi.sin()], dim=1).unsqueeze(-1)).squeeze(-1)
        # Haematoxylin first: the vector with the larger red OD (Macenko's heuristic, as torchstain).
        first = (v_min[:, 0] > v_max[:, 0]).reshape(-1, 1)
        he = torch.stack([torch.where(first, v_min, v_max), torch.where(first, v_max, v_min)], dim=2)  # (N, 3, 2)
        # Step 5: least squares, C = (HEᵀHE)⁻¹HEᵀ·OD. The 2x2 inverse is written out: a batched LU solve with one
        # right-hand side per pixel is ~100x slower on CPU, and this is the same pseudo-inverse.
        hte = he.transpose(1, 2)
        gram = hte @ he
        a, b, d = gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1]
        # det = 1 - cos² of the two unit stain vectors; the floor only acts when they coincide (one stain seen).
        det = (a * d - b * b).clamp_min(1e-12).reshape(-1, 1, 1)
        inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-b, a], -1)], -2) / det
        conc = (inv @ hte) @ od  # (N, 2, P)
        # Step 6: each stain's 99th percentile over all pixels (torchstain uses every pixel here).
        k = int(_rank_index(torch.tensor(od.shape[-1]), 99.0))
        max_c = conc.kthvalue(k + 1, dim=-1).values  # (N, 2)
        stained = (max_c > 1e-3).all(dim=1).detach()
        ref_c = t.max_concentrations_tensor.to(dtype=dtype, device=dev)
        conc = conc * (ref_c / max_c.clamp_min(1e-3)).unsqueeze(-1)
        # Step 7: recompose with the template's stain matrix; only the bright end is clipped (exp > 0). The clip is
        # applied to the exponent, min(Io·e^z, 255) = Io·e^min(z, log(255/Io)), so that a pixel whose rescaled
        # concentrations are very negative cannot overflow exp to inf and turn its zero gradient into NaN.
        ref_he = t.stain_matrix_tensor.to(dtype=dtype, device=dev)
        out = t.io * torch.exp((-(ref_he @ conc)).clamp_max(math.log(255.0 / t.io)))
        return out / 255.0, stained
