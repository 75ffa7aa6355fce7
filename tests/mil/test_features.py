"""Frozen-encoder features: cache reuse and invalidation, checkpoints, determinism, resizing, feature-only bags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mil.bags import Bag, BagDirectory, BagError
from mil.features import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, FeatureExtractor, FrozenEncoder
from monai_distill.networks import get_network

from .conftest import PATCH_SIZE


def _extractor(cache: Path | None, **kw) -> FeatureExtractor:
    return FeatureExtractor(cache_dir=cache, device="cpu", progress=False, **kw)


def test_default_features(feature_bags: list[Bag], real_bags: BagDirectory) -> None:
    assert len(feature_bags) == len(real_bags)
    for fb, bag in zip(feature_bags, real_bags):
        assert fb.patches is None and fb.features.shape == (len(bag), 128) and torch.isfinite(fb.features).all()
        assert fb.label == bag.label and torch.equal(fb.coords, bag.coords)
        assert fb.meta["encoder_key"].startswith(f"resnetap10-{PATCH_SIZE}px-")


def test_cache_is_reused(feature_bags: list[Bag], real_bags: BagDirectory, feature_cache: Path) -> None:
    fx = _extractor(feature_cache)
    again = fx.extract(real_bags)
    assert fx.stats["cached"] == len(real_bags) and fx.stats["encoded"] == 0
    assert all(torch.equal(a.features, b.features) for a, b in zip(again, feature_bags))
    assert (feature_cache / fx.key / "encoder.json").is_file()


def test_another_encoder_does_not_reuse_the_cache(real_bags: BagDirectory, feature_cache: Path) -> None:
    bags = [real_bags[0], real_bags[1]]
    default = _extractor(feature_cache)
    default.extract(bags)
    other = _extractor(feature_cache, encoder={"name": "resnetap10", "options": {"width": 8, "norm": "none"}})
    feats = other.extract(bags)
    assert other.key != default.key and other.stats["encoded"] == 2 and feats[0].features.shape[1] == 64
    reseeded = _extractor(feature_cache, encoder={"seed": 1})
    reseeded.extract(bags)
    assert reseeded.key not in (default.key, other.key) and reseeded.stats["encoded"] == 2


def test_changed_or_synthetic_bags_miss_the_cache(real_bags: BagDirectory, tmp_path: Path) -> None:
    bag = real_bags[0]
    fx = _extractor(tmp_path)
    first = fx.encode(bag)
    flipped = Bag(bag.slide_id, bag.label, bag.patches.flip(-1), coords=bag.coords, meta=bag.meta)
    synthetic = Bag(bag.slide_id, bag.label, bag.patches, source="synthetic")
    assert not torch.equal(fx.encode(flipped), first)
    torch.testing.assert_close(fx.encode(synthetic), first)  # same pixels, its own entry
    assert fx.stats["encoded"] == 3
    assert (tmp_path / fx.key / "synthetic" / f"{bag.slide_id}.pt").is_file()
    fx.cache.path(bag).write_bytes(b"damaged")
    torch.testing.assert_close(fx.encode(bag), first)  # a damaged entry is recomputed
    assert fx.stats["encoded"] == 4


def test_random_encoder_is_seeded_and_leaves_the_global_rng_alone() -> None:
    cfg = EncoderConfig()
    x = torch.rand(4, 3, PATCH_SIZE, PATCH_SIZE)
    state = torch.get_rng_state()
    a, b = FrozenEncoder(cfg, 3, PATCH_SIZE), FrozenEncoder(cfg, 3, PATCH_SIZE)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a(x), b(x)) and a.key == b.key
    assert not any(p.requires_grad for p in a.parameters())


def test_state_dict_checkpoint(tmp_path: Path, real_bags: BagDirectory) -> None:
    torch.manual_seed(5)
    net = get_network("resnetap10", 2, 3, 7, PATCH_SIZE, width=16, norm="none").eval()
    path = tmp_path / "encoder.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    fx = _extractor(tmp_path / "cache", encoder={"checkpoint": str(path)})
    bag = real_bags[0]
    feats = fx.encode(bag)
    assert fx.key != _extractor(None).setup(3, PATCH_SIZE).key
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(feats, net.embed((bag.pixels() - mean) / std))
    with pytest.raises(ValueError, match="does not fit network 'resnetap10'"):
        _extractor(None, encoder={"checkpoint": str(path), "options": {"width": 8, "norm": "none"}}).setup(3, 32)
    with pytest.raises(FileNotFoundError, match="encoder checkpoint"):
        EncoderConfig(checkpoint=str(tmp_path / "nope.pt"))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # still supported
def test_program_checkpoints(tmp_path: Path, real_bags: BagDirectory) -> None:
    """Whole encoders saved with torch.export (.pt2, dynamic batch) or TorchScript."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    example = torch.rand(2, 3, PATCH_SIZE, PATCH_SIZE)
    exported = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(exported, str(tmp_path / "encoder.pt2"))
    with pytest.warns(DeprecationWarning):  # TorchScript still loads, but torch deprecates it
        torch.jit.save(torch.jit.trace(module, example), str(tmp_path / "encoder.ts"))
    for name in ("encoder.pt2", "encoder.ts"):
        fx = _extractor(None, encoder={"name": None, "checkpoint": str(tmp_path / name)})
        with torch.no_grad():
            expected = module((real_bags[0].pixels() - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                              / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        torch.testing.assert_close(fx.encode(real_bags[0]), expected)
        assert fx.key.startswith("program-")
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"not a torch\.export"):
        _extractor(None, encoder={"name": None, "checkpoint": str(tmp_path / "junk.pt2")}).setup(3, PATCH_SIZE)


def test_other_patch_sizes_are_resized(real_bags: BagDirectory) -> None:
    fx = _extractor(None)
    fx.setup(3, PATCH_SIZE)
    big = Bag("big", 0, patches=torch.rand(3, 3, 48, 48), source="synthetic")
    assert fx.encode(big).shape == (3, 128)


def test_feature_only_bags(feature_bags: list[Bag]) -> None:
    fx = _extractor(None)
    fx.setup(3, PATCH_SIZE)
    given = feature_bags[0]
    assert torch.equal(fx.encode(given), given.features)
    alien = Bag("x", 0, features=torch.randn(3, 128), meta={"encoder_key": "vit-224px-abc"})
    with pytest.raises(BagError, match="holds features of encoder 'vit-224px-abc'"):
        fx.encode(alien)
    with pytest.raises(BagError, match="has 5 features per instance"):
        fx.encode(Bag("y", 0, features=torch.randn(3, 5)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_match_cpu(real_bags: BagDirectory) -> None:
    cpu = _extractor(None).encode(real_bags[0])
    gpu = FeatureExtractor(device="cuda", amp=False, progress=False).encode(real_bags[0])
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)
