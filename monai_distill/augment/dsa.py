"""Differentiable siamese augmentation (DSA) for 2D and 3D images.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021. DSA applies the *same*
randomly drawn transformation to a real batch and to a synthetic batch inside the matching loss, and every
transformation is differentiable with respect to the pixels, so the matching gradient reaches the synthetic images.
The parameter set and the six transformation families (colour, crop, cutout, flip, scale, rotate) follow the paper
and its reference code, which DC/DSA/DM/MTT/FTD/DATM/PTM all reuse; here they work unchanged on (N, C, H, W) and
(N, C, D, H, W) tensors because the geometric ops go through ``affine_grid``/``grid_sample`` and the integer ops
(crop, cutout, flip) are written per spatial axis.

Randomness is drawn on the CPU (from an optional ``torch.Generator``) and only then moved to the input's device,
so a seed gives the same augmentation on CPU and GPU and the device's RNG stream is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

__all__ = ["OP_GROUPS", "AugSample", "DSAParams", "DiffAugment"]

# A strategy names groups; a group expands to the primitive ops applied in this order. "color" is the reference's
# brightness -> saturation -> contrast chain. The colour components are also accepted on their own (useful to
# ablate or test one op), which the reference does not offer but which changes nothing for the standard strategy.
OP_GROUPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
    "brightness": ("brightness",),
    "saturation": ("saturation",),
    "contrast": ("contrast",),
}
_IDENTITY = ("", "none")


@dataclass(frozen=True)
class DSAParams:
    """Magnitudes of the DSA transformations (defaults: the reference parameter set used by DC/DSA/MTT/PTM).

    Args:
        prob_flip: probability of flipping each axis listed in ``flip_axes``.
        ratio_scale: per-axis scale factors are drawn uniformly from ``[1/ratio_scale, ratio_scale]``.
        ratio_rotate: rotation angles are drawn uniformly from ``[-ratio_rotate, ratio_rotate]`` degrees.
        ratio_crop_pad: largest translation, as a fraction of the size of each spatial axis (zero padding).
        ratio_cutout: side of the zeroed box, as a fraction of the size of each spatial axis.
        brightness: additive shift drawn from ``[-brightness/2, brightness/2]``.
        saturation: channel-deviation factor drawn from ``[0, saturation]``.
        contrast: deviation-from-mean factor drawn from ``[contrast, contrast + 1]``.
        flip_axes: spatial axes that may be flipped, counted from the end (-1 is the last axis, W). The default
            flips only the last axis, as the reference does in 2D; for 3D volumes whose orientation carries no
            meaning, ``(-3, -2, -1)`` flips each axis independently with ``prob_flip`` (axes a 2D image does not
            have are ignored, so one setting serves 2D and 3D).
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    flip_axes: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ValueError(f"prob_flip must be in [0, 1], got {self.prob_flip}.")
        if self.ratio_scale <= 0:
            raise ValueError(f"ratio_scale must be > 0, got {self.ratio_scale}.")
        if self.ratio_crop_pad < 0:
            raise ValueError(f"ratio_crop_pad must be >= 0, got {self.ratio_crop_pad}.")
        if not 0.0 <= self.ratio_cutout <= 1.0:
            raise ValueError(f"ratio_cutout must be in [0, 1], got {self.ratio_cutout}.")
        # JSON configs give lists; keep the dataclass hashable and immutable.
        object.__setattr__(self, "flip_axes", tuple(int(a) for a in self.flip_axes))
        if any(a >= 0 or a < -3 for a in self.flip_axes):
            raise ValueError(f"flip_axes are counted from the end and must be in -3..-1, got {self.flip_axes}.")

    @classmethod
    def from_any(cls, params: DSAParams | Mapping | None) -> DSAParams:
        """Build from ``None`` (defaults), a mapping (e.g. a bundle config section) or an instance."""
        if params is None:
            return cls()
        if isinstance(params, DSAParams):
            return params
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown DSA parameter(s) {sorted(unknown)}; valid: {sorted(known)}.")
        return cls(**dict(params))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AugSample:
    """One draw of augmentation parameters, to be applied by :class:`DiffAugment`.

    A siamese draw has ``batch_size == 1``: every value broadcasts over any batch, so the real and the synthetic
    batch get identical transformations. A per-sample draw has one row per image.

    Attributes:
        ops: primitive ops to apply, in order (e.g. ``("brightness", "saturation", "contrast")``).
        values: CPU tensors with leading dim ``batch_size``, keyed by op:
            ``brightness`` (B,) additive shift; ``saturation`` (B,) and ``contrast`` (B,) factors;
            ``scale`` (B, S) factors per spatial axis in tensor order; ``rotate`` (B,) angle in radians and
            ``rotate_axis`` (B,) the spatial axis (tensor order) rotated about, only meaningful in 3D;
            ``flip`` (B, S) bool per spatial axis; ``crop`` and ``cutout`` (B, S) uniform draws in [0, 1) that
            become integer translations / box positions once the image size is known (so one draw serves any
            size, like the reference's ``randint`` over positions).
        spatial_dims: 2 or 3.
    """

    ops: tuple[str, ...]
    values: dict[str, torch.Tensor]
    spatial_dims: int

    @property
    def batch_size(self) -> int:
        for v in self.values.values():
            return int(v.shape[0])
        return 1


class DiffAugment:
    """Differentiable siamese augmentation (Zhao & Bilen, ICML 2021) for 2D and 3D batches.

    Example::

        aug = DiffAugment("color_crop_cutout_flip_scale_rotate", DSAParams(), mode="S")
        s = aug.sample(spatial_dims=2, generator=g)       # one siamese draw
        loss = match(net(aug(x_real, s)), net(aug(x_syn, s)))
        x_aug = aug(x)                                     # per-sample draws, e.g. to train evaluation nets

    Args:
        strategy: groups joined by ``"_"`` from ``color, crop, cutout, flip, scale, rotate`` (the colour components
            ``brightness, saturation, contrast`` are accepted on their own as well); ``""``/``"none"``/``None``
            is the identity.
        params: magnitudes (a :class:`DSAParams`, a mapping of its fields, or ``None`` for the defaults).
        mode: ``"S"`` (reference default) applies one group per call, chosen uniformly at random; ``"M"`` applies
            every group in the order given.

    Raises:
        ValueError: on an unknown group or mode.
    """

    def __init__(
        self,
        strategy: str | None = "color_crop_cutout_flip_scale_rotate",
        params: DSAParams | Mapping | None = None,
        mode: str = "S",
    ) -> None:
        self.strategy = "none" if strategy is None else str(strategy).strip().lower()
        self.groups: tuple[str, ...] = () if self.strategy in _IDENTITY else tuple(self.strategy.split("_"))
        bad = [g for g in self.groups if g not in OP_GROUPS]
        if bad:
            raise ValueError(
                f"unknown DSA op(s) {bad} in strategy '{strategy}'; valid ops: {', '.join(OP_GROUPS)} "
                "(joined by '_'), or 'none'."
            )
        mode_u = str(mode).upper()
        if mode_u not in ("S", "M"):
            raise ValueError(f"mode must be 'S' (one op group per call) or 'M' (all groups), got '{mode}'.")
        self.mode = mode_u
        self.params = DSAParams.from_any(params)

    def __repr__(self) -> str:
        return f"DiffAugment(strategy='{self.strategy}', mode='{self.mode}', params={self.params})"

    @property
    def is_identity(self) -> bool:
        return not self.groups

    # ------------------------------------------------------------------ sampling
    def sample(self, spatial_dims: int = 2, generator: torch.Generator | None = None, batch_size: int = 1) -> AugSample:
        """Draw one set of augmentation parameters.

        Args:
            spatial_dims: 2 for (N, C, H, W) batches, 3 for (N, C, D, H, W).
            generator: a CPU generator; ``None`` uses torch's global CPU RNG.
            batch_size: 1 (default) for a siamese draw shared by any batch; N for independent per-image draws.

        Returns:
            The draw; in mode "S" it holds only the chosen group's ops.
        """
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not self.groups:
            return AugSample((), {}, spatial_dims)
        if self.mode == "S":
            # One group per call, also in per-sample mode: the reference picks the op once per batch.
            idx = int(torch.randint(len(self.groups), (1,), generator=generator).item())
            groups = (self.groups[idx],)
        else:
            groups = self.groups
        ops = tuple(op for g in groups for op in OP_GROUPS[g])
        p, b, sd = self.params, batch_size, spatial_dims
        values: dict[str, torch.Tensor] = {}

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, dtype=torch.float64)

        for op in ops:
            if op == "brightness":
                values[op] = (rand(b) - 0.5) * p.brightness
            elif op == "saturation":
                values[op] = rand(b) * p.saturation
            elif op == "contrast":
                values[op] = rand(b) + p.contrast
            elif op == "scale":
                values[op] = rand(b, sd) * (p.ratio_scale - 1.0 / p.ratio_scale) + 1.0 / p.ratio_scale
            elif op == "rotate":
                values[op] = (rand(b) - 0.5) * 2.0 * math.radians(p.ratio_rotate)
                # A 2D image has one rotation plane; a volume rotates about one of its three axes per draw.
                values["rotate_axis"] = (
                    torch.randint(3, (b,), generator=generator) if sd == 3 else torch.zeros(b, dtype=torch.long)
                )
            elif op == "flip":
                allowed = torch.zeros(sd, dtype=torch.bool)
                for a in p.flip_axes:
                    if -a <= sd:
                        allowed[sd + a] = True
                values[op] = (rand(b, sd) < p.prob_flip) & allowed
            elif op in ("crop", "cutout"):
                values[op] = rand(b, sd)
        return AugSample(ops, values, sd)

    # ------------------------------------------------------------------ applying
    def __call__(
        self, x: torch.Tensor, sample: AugSample | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment ``x``; with ``sample`` the given (e.g. siamese) draw, otherwise fresh per-image draws.

        Args:
            x: floating tensor (N, C, H, W) or (N, C, D, H, W), on any device; it is not modified.
            sample: a draw from :meth:`sample` whose batch size is 1 or N.
            generator: CPU generator for the fresh draws when ``sample`` is None.

        Returns:
            The augmented batch, same shape, dtype and device, differentiable with respect to ``x``. Its memory
            layout depends on the ops applied (elementwise ops keep the input's), so flatten it with
            ``reshape``/``flatten``, not ``view``.
        """
        sd = _check_input(x)
        if sample is None:
            sample = self.sample(spatial_dims=sd, generator=generator, batch_size=x.shape[0])
        return self.apply(x, sample)

    def siamese(
        self, x_real: torch.Tensor, x_syn: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply one shared draw to a real and a synthetic batch (one ω for both, as in the paper)."""
        sd = _check_input(x_real)
        if _check_input(x_syn) != sd:
            raise ValueError(f"real {tuple(x_real.shape)} and synthetic {tuple(x_syn.shape)} differ in dimensionality.")
        s = self.sample(spatial_dims=sd, generator=generator)
        return self.apply(x_real, s), self.apply(x_syn, s)

    def apply(self, x: torch.Tensor, sample: AugSample) -> torch.Tensor:
        """Apply a draw to ``x`` (see :meth:`__call__`)."""
        sd = _check_input(x)
        if sample.spatial_dims != sd:
            raise ValueError(f"the draw is {sample.spatial_dims}D but the input {tuple(x.shape)} is {sd}D.")
        if sample.ops and sample.batch_size not in (1, x.shape[0]):
            raise ValueError(f"a draw for {sample.batch_size} images cannot be applied to a batch of {x.shape[0]}.")
        p, v = self.params, sample.values
        for op in sample.ops:
            if op == "brightness":
                x = x + _per_image(v[op], x)
            elif op == "saturation":
                mean = x.mean(dim=1, keepdim=True)
                x = (x - mean) * _per_image(v[op], x) + mean
            elif op == "contrast":
                mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
                x = (x - mean) * _per_image(v[op], x) + mean
            elif op == "scale":
                x = _affine(x, torch.diag_embed(v[op]))
            elif op == "rotate":
                x = _affine(x, _rotation(v[op], v["rotate_axis"], sd))
            elif op == "flip":
                x = _flip(x, v[op])
            elif op == "crop":
                x = _crop(x, v[op], p.ratio_crop_pad)
            elif op == "cutout":
                x = _cutout(x, v[op], p.ratio_cutout)
            else:  # pragma: no cover - AugSample built by hand with a typo
                raise ValueError(f"unknown DSA op '{op}'.")
        return x


# ---------------------------------------------------------------------- helpers
def _check_input(x: torch.Tensor) -> int:
    if x.ndim not in (4, 5):
        raise ValueError(f"DSA expects (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"DSA needs a floating tensor (it interpolates), got {x.dtype}.")
    return x.ndim - 2


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) CPU values -> (B, 1, ..., 1) on x's device/dtype, broadcasting over a batch when B == 1."""
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _rotation(angle: torch.Tensor, axis: torch.Tensor, sd: int) -> torch.Tensor:
    """(B, S, S) rotation matrices in tensor axis order; 3D rotates the plane orthogonal to ``axis``."""
    b = angle.shape[0]
    c, s = torch.cos(angle), torch.sin(angle)
    if sd == 2:
        planes = torch.tensor([[0, 1]]).expand(b, 2)
    else:
        # The two axes other than the rotation axis, in increasing order.
        planes = torch.tensor([[1, 2], [0, 2], [0, 1]])[axis]
    mat = torch.eye(sd, dtype=angle.dtype).repeat(b, 1, 1)
    rows = torch.arange(b)
    i, j = planes[:, 0], planes[:, 1]
    mat[rows, i, i] = c
    mat[rows, i, j] = -s
    mat[rows, j, i] = s
    mat[rows, j, j] = c
    return mat


def _affine(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` with the linear map ``mat`` (B, S, S, tensor axis order) about the image centre.

    ``affine_grid`` orders coordinates (x, y[, z]) = (W, H[, D]), the reverse of tensor order, so the matrix is
    reversed on both axes; with that, the 2D rotation is exactly the reference's ``[[cos, sin], [-sin, cos]]``.
    ``align_corners=True`` as in the reference.
    """
    b, sd = mat.shape[0], mat.shape[-1]
    theta = torch.cat([mat.flip(-1).flip(-2), torch.zeros(b, sd, 1, dtype=mat.dtype)], dim=-1)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], *x.shape[2:]], align_corners=True)
    if b != x.shape[0]:
        grid = grid.expand(x.shape[0], *grid.shape[1:])
    return F.grid_sample(x, grid, align_corners=True)


def _flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    sd = mask.shape[1]
    for a in range(sd):
        col = mask[:, a]
        if not bool(col.any()):  # CPU tensor: no device sync, and skips a useless copy of x
            continue
        x = torch.where(col.to(x.device).reshape(-1, *([1] * (x.ndim - 1))), x.flip(2 + a), x)
    return x


def _crop(x: torch.Tensor, r: torch.Tensor, ratio: float) -> torch.Tensor:
    """Translate by a random integer per axis, filling with zeros (the reference's pad-by-one-and-index crop).

    ``out[i] = x[i + t]`` where that exists, else 0, with t uniform in ``[-m, m]``, ``m = int(size*ratio + 0.5)``.
    A gather keeps it differentiable and lets every image have its own shift; ``reshape`` (not ``view``) keeps
    channels-last inputs working.
    """
    for a in range(r.shape[1]):
        dim = 2 + a
        size = x.shape[dim]
        m = int(size * ratio + 0.5)
        if m == 0:
            continue
        shift = (r[:, a] * (2 * m + 1)).floor().long().clamp(max=2 * m) - m
        idx = torch.arange(size) + shift[:, None]  # (B, size)
        valid = (idx >= 0) & (idx < size)
        shape = [idx.shape[0]] + [1] * (x.ndim - 1)
        shape[dim] = size
        idx = idx.clamp(0, size - 1).reshape(shape).to(x.device).expand(x.shape)
        gathered = torch.gather(x, dim, idx)
        x = torch.where(valid.reshape(shape).to(x.device), gathered, torch.zeros((), dtype=x.dtype, device=x.device))
    return x


def _cutout(x: torch.Tensor, r: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero a box of ``int(size*ratio + 0.5)`` voxels per axis at a random position (clipped at the border).

    Positions follow the reference: the box's centre index is uniform over ``size + 1 - cut % 2`` values, so the
    box may hang over either border.
    """
    b, sd = r.shape
    box = torch.ones([b] + [1] * (x.ndim - 1), dtype=torch.bool)
    for a in range(sd):
        size = x.shape[2 + a]
        cut = int(size * ratio + 0.5)
        n_pos = size + 1 - cut % 2
        centre = (r[:, a] * n_pos).floor().long().clamp(max=n_pos - 1)
        lo = centre - cut // 2
        ar = torch.arange(size)
        inside = (ar >= lo[:, None]) & (ar < (lo + cut)[:, None])  # (B, size)
        shape = [b] + [1] * (x.ndim - 1)
        shape[2 + a] = size
        box = box & inside.reshape(shape)
    return torch.where(box.to(x.device), torch.zeros((), dtype=x.dtype, device=x.device), x)
