"""Tests for differentiable siamese augmentation (Zhao & Bilen, ICML 2021) on real 2D and 3D medical images."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_distill.augment import AugSample, DiffAugment, DSAParams

# Same rule as tests/conftest.py (kept local so this module stands alone): ../shared/data or the env override.
DATA = Path(os.environ.get("MONAI_DISTILL_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))

FULL = "color_crop_cutout_flip_scale_rotate"
GROUPS = ["color", "crop", "cutout", "flip", "scale", "rotate"]
PRIMITIVES = ["brightness", "saturation", "contrast", "crop", "cutout", "flip", "scale", "rotate"]


@pytest.fixture(scope="module")
def breast() -> torch.Tensor:
    """8 real BreastMNIST ultrasound images, (8, 1, 28, 28) in [0, 1]."""
    imgs = np.load(DATA / "medmnist" / "breastmnist.npz")["train_images"][:8]
    return torch.from_numpy(imgs).float().div(255).unsqueeze(1)


@pytest.fixture(scope="module")
def adrenal() -> torch.Tensor:
    """4 real AdrenalMNIST3D CT volumes, (4, 1, 28, 28, 28) in [0, 1]."""
    vols = np.load(DATA / "medmnist" / "adrenalmnist3d.npz")["train_images"][:4]
    return torch.from_numpy(vols).float().div(255).unsqueeze(1)


@pytest.fixture(scope="module")
def he_rgb() -> torch.Tensor:
    """4 real H&E patches, (4, 3, 32, 32): saturation only acts on multi-channel images."""
    from PIL import Image

    img = Image.open(DATA / "he_tiles" / "histolab_high-nuclei-score-level2.png").convert("RGB").resize((64, 64))
    t = torch.from_numpy(np.asarray(img).copy()).float().div(255).permute(2, 0, 1)
    return torch.stack([t[:, :32, :32], t[:, :32, 32:], t[:, 32:, :32], t[:, 32:, 32:]])


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def batch(request, breast, adrenal) -> torch.Tensor:
    return breast if request.param == 2 else adrenal


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_defaults_are_the_reference_parameter_set():
    p = DSAParams()
    assert (p.prob_flip, p.ratio_scale, p.ratio_rotate, p.ratio_crop_pad, p.ratio_cutout) == (
        0.5,
        1.2,
        15.0,
        0.125,
        0.5,
    )
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)
    aug = DiffAugment()
    assert aug.strategy == FULL and aug.mode == "S"
    assert DSAParams.from_any({"ratio_rotate": 10, "flip_axes": [-1, -2]}) == DSAParams(
        ratio_rotate=10, flip_axes=(-1, -2)
    )
    with pytest.raises(ValueError, match="unknown DSA parameter"):
        DSAParams.from_any({"ratio_rotat": 10})
    with pytest.raises(ValueError, match="prob_flip"):
        DSAParams(prob_flip=1.5)


@pytest.mark.parametrize("mode", ["S", "M"])
def test_shapes_dtype_and_input_untouched(batch, mode):
    aug = DiffAugment(FULL, mode=mode)
    for x in (batch, batch.double()):
        before = x.clone()
        for seed in range(4):
            y = aug(x, generator=gen(seed))
            assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
            y = aug(x, aug.sample(x.ndim - 2, gen(seed)))
            assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.equal(x, before)


@pytest.mark.parametrize("strategy", [*PRIMITIVES, FULL])
def test_siamese_same_draw_same_result(batch, strategy):
    """One draw applied to two batches of different sizes transforms a shared image identically."""
    aug = DiffAugment(strategy, mode="M")
    first = batch[:2]
    second = torch.cat([batch[2:], first])  # holds the first batch's images at its end
    for seed in range(5):
        s = aug.sample(batch.ndim - 2, gen(seed))
        assert s.batch_size == 1
        torch.testing.assert_close(aug(second, s)[-2:], aug(first, s), rtol=0, atol=1e-6)
    real_aug, syn_aug = aug.siamese(second, first, generator=gen(7))
    torch.testing.assert_close(real_aug[-2:], syn_aug, rtol=0, atol=1e-6)


def test_siamese_mode_s_shares_the_chosen_op(breast):
    aug = DiffAugment(FULL, mode="S")
    for seed in range(12):
        s = aug.sample(2, gen(seed))
        torch.testing.assert_close(
            aug(torch.cat([breast[4:], breast[:4]]), s)[-4:], aug(breast[:4], s), atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("op", PRIMITIVES)
def test_gradients_reach_the_input(batch, op):
    aug = DiffAugment(op, mode="M")
    x = batch[:2].clone().requires_grad_(True)
    aug(x, generator=gen(3)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # siamese draws too (broadcast values), and the full strategy in both modes
    for mode in ("S", "M"):
        x.grad = None
        full = DiffAugment(FULL, mode=mode)
        full(x, full.sample(x.ndim - 2, gen(5))).square().sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_saturation_gradient_on_rgb(he_rgb):
    x = he_rgb.clone().requires_grad_(True)
    DiffAugment("color", mode="M")(x, generator=gen(0)).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["S", "M"])
def test_seeds_reproduce_and_differ(batch, mode):
    aug = DiffAugment(FULL, mode=mode)
    torch.testing.assert_close(aug(batch, generator=gen(11)), aug(batch, generator=gen(11)), rtol=0, atol=0)
    s1, s2 = aug.sample(batch.ndim - 2, gen(11)), aug.sample(batch.ndim - 2, gen(11))
    assert s1.ops == s2.ops and all(torch.equal(s1.values[k], s2.values[k]) for k in s1.values)
    outs = [aug(batch, generator=gen(seed)) for seed in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_generator_leaves_global_rng_alone(breast):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    DiffAugment(FULL, mode="M")(breast, generator=gen(1))
    assert torch.equal(torch.rand(3), expected)
    # without a generator the global RNG drives it, so torch.manual_seed makes it reproducible
    torch.manual_seed(5)
    a = DiffAugment(FULL, mode="M")(breast)
    torch.manual_seed(5)
    assert torch.equal(DiffAugment(FULL, mode="M")(breast), a)


@pytest.mark.parametrize("strategy", ["none", "", None, "NONE"])
def test_identity_strategy(batch, strategy):
    aug = DiffAugment(strategy)
    assert aug.is_identity
    s = aug.sample(batch.ndim - 2, gen(0))
    assert s.ops == ()
    assert torch.equal(aug(batch, s), batch) and torch.equal(aug(batch), batch)


def test_unknown_op_and_mode_errors():
    with pytest.raises(ValueError, match=r"unknown DSA op.*'zoom'.*valid ops: .*rotate"):
        DiffAugment("color_zoom")
    with pytest.raises(ValueError, match="mode"):
        DiffAugment(FULL, mode="X")


def test_bad_inputs(breast, adrenal):
    aug = DiffAugment(FULL, mode="M")
    with pytest.raises(ValueError, match="3D"):
        aug(adrenal, aug.sample(2, gen(0)))
    with pytest.raises(ValueError, match="batch of"):
        aug(breast, aug.sample(2, gen(0), batch_size=3))
    with pytest.raises(TypeError, match="floating"):
        aug((breast * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="N, C, H, W"):
        aug(breast[0])


def test_flip_really_flips(breast, adrenal):
    always = DiffAugment("flip", DSAParams(prob_flip=1.0), mode="M")
    assert torch.equal(always(breast, generator=gen(0)), breast.flip(-1))
    assert torch.equal(always(adrenal, generator=gen(0)), adrenal.flip(-1))  # default: last axis only, as in 2D
    every_axis = DiffAugment("flip", DSAParams(prob_flip=1.0, flip_axes=(-3, -2, -1)), mode="M")
    assert torch.equal(every_axis(adrenal, generator=gen(0)), adrenal.flip(2, 3, 4))
    assert torch.equal(every_axis(breast, generator=gen(0)), breast.flip(2, 3))  # -3 does not exist in 2D
    never = DiffAugment("flip", DSAParams(prob_flip=0.0), mode="M")
    assert torch.equal(never(breast, generator=gen(0)), breast)
    # per-image draws at p = 0.5: every image is either itself or its mirror, and both happen
    y = DiffAugment("flip", mode="M")(breast, generator=gen(2))
    flipped = [torch.equal(y[i], breast[i].flip(-1)) for i in range(len(breast))]
    kept = [torch.equal(y[i], breast[i]) for i in range(len(breast))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


@pytest.mark.parametrize("op", PRIMITIVES)
def test_each_op_changes_the_image(batch, he_rgb, op):
    x = he_rgb if op == "saturation" else batch  # saturation is the identity on one channel, as in the reference
    aug = DiffAugment(op, mode="M")
    assert any(not torch.allclose(aug(x, aug.sample(x.ndim - 2, gen(seed))), x) for seed in range(10))


def test_saturation_is_identity_on_one_channel(breast):
    torch.testing.assert_close(DiffAugment("saturation", mode="M")(breast, generator=gen(0)), breast)


def test_colour_formulas(he_rgb):
    x = he_rgb
    aug = DiffAugment("color", mode="M")
    s = AugSample(
        ("brightness", "saturation", "contrast"),
        {
            k: torch.tensor([v], dtype=torch.float64)
            for k, v in (("brightness", 0.2), ("saturation", 1.5), ("contrast", 0.7))
        },
        2,
    )
    y = x + 0.2
    m = y.mean(dim=1, keepdim=True)
    y = (y - m) * 1.5 + m
    m = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - m) * 0.7 + m
    torch.testing.assert_close(aug(x, s), y)
    # the drawn values lie in the reference ranges
    p = DSAParams()
    vals = aug.sample(2, gen(0), batch_size=2000).values
    assert vals["brightness"].abs().max() <= p.brightness / 2
    assert vals["saturation"].min() >= 0 and vals["saturation"].max() <= p.saturation
    assert p.contrast <= vals["contrast"].min() and vals["contrast"].max() <= p.contrast + 1


def test_crop_is_a_zero_padded_integer_translation(breast, adrenal):
    aug = DiffAugment("crop", mode="M")
    m = int(28 * 0.125 + 0.5)  # 4 voxels, as the reference
    s = AugSample(("crop",), {"crop": torch.tensor([[1 - 1e-9, 0.5]], dtype=torch.float64)}, 2)  # +m rows, 0 cols
    y = aug(breast, s)
    assert torch.equal(y[:, :, : 28 - m], breast[:, :, m:]) and (y[:, :, 28 - m :] == 0).all()
    s = AugSample(("crop",), {"crop": torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)}, 3)  # -m on depth
    y = aug(adrenal, s)
    assert torch.equal(y[:, :, m:], adrenal[:, :, : 28 - m]) and (y[:, :, :m] == 0).all()
    # shifts cover exactly [-m, m]
    shifts = set()
    for seed in range(40):
        r = aug.sample(2, gen(seed), batch_size=50).values["crop"]
        shifts |= set(((r * (2 * m + 1)).floor().long() - m).flatten().tolist())
    assert shifts == set(range(-m, m + 1))


def test_cutout_zeros_a_box(adrenal):
    aug = DiffAugment("cutout", mode="M")
    s = AugSample(("cutout",), {"cutout": torch.full((1, 3), 0.5, dtype=torch.float64)}, 3)
    x = adrenal + 1.0  # strictly positive, so zeros can only come from the box
    y = aug(x, s)
    zero = y == 0
    assert zero.sum() == len(x) * 14**3  # int(28 * 0.5 + 0.5) = 14 voxels per axis, fully inside here
    assert torch.equal(y[~zero], x[~zero])


def test_3d_rotation_about_depth_equals_2d_rotation_of_each_slice(adrenal):
    aug2, aug3 = DiffAugment("rotate", mode="M"), DiffAugment("rotate", mode="M")
    angle = torch.tensor([math.radians(12.0)], dtype=torch.float64)
    s3 = AugSample(("rotate",), {"rotate": angle, "rotate_axis": torch.tensor([0])}, 3)
    s2 = AugSample(("rotate",), {"rotate": angle, "rotate_axis": torch.tensor([0])}, 2)
    vol = aug3(adrenal[:1], s3)[0, 0]  # (D, H, W)
    slices = aug2(adrenal[0, 0].unsqueeze(1), s2)[:, 0]  # each depth slice as a 2D image
    torch.testing.assert_close(vol, slices, atol=1e-5, rtol=0)
    # 2D matrix is the reference's [[cos, sin], [-sin, cos]] in affine_grid order
    x = adrenal[:2, :, 14]
    c, s = math.cos(angle.item()), math.sin(angle.item())
    theta = torch.tensor([[[c, s, 0.0], [-s, c, 0.0]]]).expand(2, 2, 3)
    ref = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True), align_corners=True)
    torch.testing.assert_close(aug2(x, s2), ref, atol=1e-5, rtol=0)
    # all three axes get drawn in 3D
    axes = DiffAugment("rotate", mode="M").sample(3, gen(0), batch_size=300).values["rotate_axis"]
    assert set(axes.tolist()) == {0, 1, 2}
    angles = DiffAugment("rotate", mode="M").sample(2, gen(0), batch_size=300).values["rotate"]
    assert angles.abs().max() <= math.radians(15.0)


def test_scale_factors_in_range():
    p = DSAParams()
    f = DiffAugment("scale", mode="M").sample(3, gen(0), batch_size=500).values["scale"]
    assert f.shape == (500, 3)
    assert f.min() >= 1 / p.ratio_scale and f.max() <= p.ratio_scale


def test_mode_s_picks_one_group_uniformly():
    aug = DiffAugment(FULL, mode="S")
    counts = dict.fromkeys(GROUPS, 0)
    colour = ("brightness", "saturation", "contrast")
    for seed in range(600):
        ops = aug.sample(2, gen(seed)).ops
        group = "color" if ops == colour else ops[0]
        assert ops == colour or len(ops) == 1
        counts[group] += 1
    assert all(60 <= c <= 140 for c in counts.values()), counts
    assert DiffAugment(FULL, mode="M").sample(2, gen(0)).ops == (*colour, "crop", "cutout", "flip", "scale", "rotate")


def test_per_sample_draws_differ_across_images(breast):
    aug = DiffAugment(FULL, mode="M")
    s = aug.sample(2, gen(0), batch_size=len(breast))
    assert s.batch_size == len(breast)
    assert len(set(s.values["rotate"].tolist())) == len(breast)
    # image i of a per-sample draw equals image i augmented alone with row i of that draw
    y = aug(breast, s)
    for i in (0, 5):
        si = AugSample(s.ops, {k: v[i : i + 1] for k, v in s.values.items()}, 2)
        torch.testing.assert_close(y[i : i + 1], aug(breast[i : i + 1], si), atol=1e-6, rtol=0)


def test_channels_last_and_strided_inputs(breast, he_rgb):
    """Channels-last (1- and 3-channel) and transposed inputs give the contiguous result and stay differentiable.

    A 1-channel channels-last tensor reports ``is_contiguous()``, which is how ``view`` after the reference's crop
    slipped through; the code therefore only uses ``reshape``/``flatten``, and so does this test downstream.
    """
    cases = [
        breast.contiguous(memory_format=torch.channels_last),
        he_rgb.contiguous(memory_format=torch.channels_last),
        he_rgb.transpose(-1, -2).contiguous().transpose(-1, -2),
    ]
    assert not cases[1].is_contiguous() and not cases[2].is_contiguous()
    for x in cases:
        x = x.detach().requires_grad_(True)
        for mode in ("S", "M"):
            aug = DiffAugment(FULL, mode=mode)
            for seed in range(6):
                y = aug(x, generator=gen(seed))
                torch.testing.assert_close(y, aug(x.contiguous(), generator=gen(seed)), atol=1e-6, rtol=0)
                y.flatten(1).sum().backward()  # downstream code flattens the batch for a linear head
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_result_matches_cpu(breast, adrenal):
    for x in (breast, adrenal):
        aug = DiffAugment(FULL, mode="M")
        xd = x.cuda().requires_grad_(True)
        yd = aug(xd, generator=gen(4))
        assert yd.device == xd.device
        torch.testing.assert_close(yd.cpu(), aug(x, generator=gen(4)), atol=1e-5, rtol=0)
        yd.sum().backward()
        assert torch.isfinite(xd.grad).all()
