"""The real-tissue cohort: pyramidal TIFFs openslide reads, known labels, a minority region of the other source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

from wsi.cohort import build_cohort

from .helpers import COHORT_SIZE, COHORT_SLIDES


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_labels_splits_and_fractions(cohort) -> None:
    _, table = cohort
    assert len(table) == COHORT_SLIDES and table.slide_id.is_unique
    assert (table.label == 1).sum() == (table.label == 0).sum() == COHORT_SLIDES // 2
    for cls in (0, 1):  # both classes in both splits
        assert set(table[table.label == cls].split) == {"train", "test"}
    pos, neg = table[table.label == 1], table[table.label == 0]
    assert pos.minority_fraction.between(0.1, 0.3).all()
    assert (neg.minority_fraction == 0).all()
    assert (pos.minority == "cmu").all() and (table.majority == "tcga").all()


def test_openslide_sees_every_level_and_mpp(cohort) -> None:
    root, table = cohort
    for rel in table.slide_path:
        with openslide.OpenSlide(str(root / rel)) as s:
            assert s.properties["openslide.vendor"] == "generic-tiff"
            assert s.level_count == 3
            w, h = COHORT_SIZE
            assert s.level_dimensions == ((w, h), (w // 4, h // 4), (w // 16, h // 16))
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert s.properties["tiff.ImageDescription"].startswith("monai-distill real-tissue cohort slide")


def test_annotation_matches_label_and_minority_is_visually_distinct(cohort) -> None:
    root, table = cohort
    for row in table.itertuples():
        ann = np.asarray(Image.open(root / "annotations" / f"{row.slide_id}.png"))
        tissue = ann > 0
        assert 0.25 < tissue.mean() < 0.7
        share = (ann == 2).sum() / tissue.sum()
        assert share == pytest.approx(row.minority_fraction, abs=0.02)
        if row.label == 1:
            with openslide.OpenSlide(str(root / row.slide_path)) as s:  # level 1 = annotation resolution (1/4)
                rgb = np.asarray(s.read_region((0, 0), 1, s.level_dimensions[1]).convert("RGB")).astype(float)
            bluish = rgb[..., 2] - rgb[..., 0]
            # CMU skin (hematoxylin-rich epidermis) is bluer than the eosin-rich TCGA tissue around it
            assert bluish[ann == 2].mean() > bluish[ann == 1].mean() + 10


def test_same_seed_same_bytes(tmp_path: Path, tissue_pools: dict) -> None:
    kwargs = {"n_slides": 2, "size": (512, 512), "downsamples": (1, 4), "pools": tissue_pools}
    a = build_cohort(tmp_path / "a", seed=7, **kwargs)
    b = build_cohort(tmp_path / "b", seed=7, **kwargs)
    build_cohort(tmp_path / "c", seed=8, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    for rel in a.slide_path:
        assert _sha(tmp_path / "a" / rel) == _sha(tmp_path / "b" / rel)
    assert any(_sha(tmp_path / "a" / r) != _sha(tmp_path / "c" / r) for r in a.slide_path)


def test_pools_are_real_tissue(tissue_pools: dict) -> None:
    assert set(tissue_pools) == {"tcga", "cmu"}
    for pool in tissue_pools.values():
        assert len(pool) > 500
        piece = pool.sample(np.random.default_rng(0))
        assert piece.shape == (128, 128, 3) and piece.mean() < 220  # mostly stained tissue, not glass


def test_unknown_source(tmp_path: Path, tissue_pools: dict) -> None:
    with pytest.raises(KeyError, match="unknown tissue source 'ovary'"):
        build_cohort(tmp_path, n_slides=2, minority="ovary", pools=tissue_pools)
