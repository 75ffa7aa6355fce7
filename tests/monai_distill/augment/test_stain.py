"""Differentiable Macenko stain normalisation against torchstain's own normaliser, on the real H&E tiles.

Stated tolerance: torchstain truncates its float result to integers, so on every pixel our output × 255 lies in
``[torchstain, torchstain + 1]`` up to 0.01 grey levels of float32 noise, and ``floor`` of it equals torchstain's
value on at least 99.5 % of the pixels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchstain
from PIL import Image

from monai_distill.augment import MacenkoNormalizer, StainTemplate, select_template_index

DATA = Path(os.environ.get("MONAI_DISTILL_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
TILES = DATA / "he_tiles"
TISSUE_TILES = [
    "torchstain_source.png",
    "histolab_tissue-level0-4302-10273-4814-10785.png",
    "histolab_tissue-level0-7352-11762-7864-12274.png",
    "histolab_tissue-level2-1784-6289-5880-10386.png",
    "histolab_low-nuclei-score-level1.png",
]


def rgb(name: str, crop: int | None = None) -> np.ndarray:
    """A real tile as (H, W, 3) uint8, optionally its central ``crop`` x ``crop`` square (keeps the test fast)."""
    im = np.array(Image.open(TILES / name).convert("RGB"))
    if crop:
        y, x = (im.shape[0] - crop) // 2, (im.shape[1] - crop) // 2
        im = im[y : y + crop, x : x + crop]
    return np.ascontiguousarray(im)


def chw(im: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(im).permute(2, 0, 1)


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return rgb("torchstain_target.png")


@pytest.fixture(scope="module")
def reference(target):
    ref = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    ref.fit(chw(target))
    return ref


@pytest.fixture(scope="module")
def template(target) -> StainTemplate:
    return StainTemplate.fit(target, source="torchstain_target.png")


def test_template_is_torchstains_fit_and_round_trips(template, reference, tmp_path):
    assert torch.allclose(template.stain_matrix_tensor.float(), reference.HERef)
    assert torch.allclose(template.max_concentrations_tensor.float(), reference.maxCRef)
    path = template.save(tmp_path / "stain_template.json")
    assert path.stat().st_size < 1000  # a small file
    assert StainTemplate.load(path) == template
    with pytest.raises(FileNotFoundError, match="not found"):
        StainTemplate.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"stain_matrix": [[1, 2]], "max_concentrations": [1, 1]}')
    with pytest.raises(ValueError, match="not a stain template"):
        StainTemplate.load(tmp_path / "bad.json")


@pytest.mark.parametrize("name", TISSUE_TILES)
def test_matches_torchstain_on_real_tiles(name, template, reference):
    im = rgb(name, crop=256)
    expected = reference.normalize(chw(im), stains=False)[0].numpy().astype(np.float64)  # (H, W, 3) int
    ours = MacenkoNormalizer(template)(chw(im)[None].float() / 255)[0].permute(1, 2, 0).double().numpy() * 255
    diff = ours - expected
    assert diff.min() >= -0.01 and diff.max() <= 1.01, (diff.min(), diff.max())
    assert (np.floor(ours + 1e-3) == expected).mean() >= 0.995
    assert np.abs(ours - (expected + 0.5)).mean() < 0.3  # truncation error is uniform: mean |.| ~ 0.25


def test_gradcheck_on_real_pixels(template):
    """torch.autograd.gradcheck in float64 on two 6x6 crops of a real tile (a tiny dither breaks ties between
    identical uint8 pixels, where a percentile's derivative is one-sided)."""
    im = rgb("histolab_tissue-level0-7352-11762-7864-12274.png")
    crops = [im[200:206, 200:206], im[300:306, 120:126]]
    x = torch.stack([chw(c).double() / 255 for c in crops])
    x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 255
    norm = MacenkoNormalizer(template)
    od = -torch.log((x * 255 + 1) / template.io)
    assert ((od - template.beta).abs() > 1e-4).all()  # no pixel sits on the tissue threshold
    assert (od >= template.beta).all(1).float().mean() > 0.5
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(norm, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_gradient_reaches_every_pixel_of_a_patch_batch(template):
    im = rgb("torchstain_source.png", crop=128)
    patches = chw(im).float().div(255).unfold(1, 32, 32).unfold(2, 32, 32).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
    x = patches.clone().requires_grad_(True)
    y = MacenkoNormalizer(template)(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()


def test_background_tile_is_defined_and_warns(template):
    bg = chw(rgb("histolab_no-tissue.png", crop=256)).float().div(255)
    tissue = chw(rgb("torchstain_source.png", crop=256)).float().div(255)
    x = torch.stack([bg, tissue]).requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="1 of 2 image.* 1 hold too little tissue"):
        y = MacenkoNormalizer(template)(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0], x[0])  # background is passed through unchanged
    assert not torch.allclose(y[1], x[1])  # the tissue tile is normalised
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[0], torch.ones_like(bg))  # identity on the background tile
    with pytest.raises(ValueError, match="no image of background gives a Macenko stain estimate"):
        StainTemplate.fit_dataset(bg[None], source="background")


def test_dataset_units_and_template_choice(template):
    """``apply_normalised`` works in (x - mean) / std units; the dataset template is the most typical image."""
    tiles = [rgb(n, crop=64) for n in ("torchstain_source.png", "torchstain_target.png", "histolab_no-tissue.png")]
    x = torch.stack([chw(t).float() / 255 for t in tiles])
    mean, std = [0.7, 0.6, 0.8], [0.15, 0.2, 0.1]
    norm = MacenkoNormalizer(template)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the background tile
        direct = norm(x)
        units = norm.apply_normalised((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1),
                                      mean, std)
    back = units * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(back, direct, atol=1e-5)
    order = select_template_index(x, k=3)
    assert sorted(order) == [0, 1, 2]
    fitted = StainTemplate.fit_dataset(x[:2], source="two tiles")
    assert fitted.source in ("two tiles[0]", "two tiles[1]")


def test_bad_inputs(template):
    norm = MacenkoNormalizer(template)
    with pytest.raises(ValueError, match="RGB batches"):
        norm(torch.rand(2, 1, 8, 8))
    with pytest.raises(TypeError, match="float"):
        norm(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not usable"):
        StainTemplate(stain_matrix=((float("nan"), 0), (0, 1), (1, 0)), max_concentrations=(1.0, 1.0))
