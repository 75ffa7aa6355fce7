"""Annotation-free grouping of a slide's patches (``wsi_synthetic_bags --grouping cluster``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mil.grouping import GroupingConfig, embed_patches, group_patches, split_budget, train_cohort_encoder
from mil.synthetic_bags import SyntheticBagsWorkflow, annotation_patch_labels
from monai_distill.checks import OptionError
from wsi import TilingConfig, read_grid, tile_slide
from wsi.cohort import build_cohort, load_pools

SMALL_REGION = (0.05, 0.05)  # the positive region: 5 % of a positive slide's tissue


@pytest.fixture(scope="module")
def small_region_cohort(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("small_region")
    table = build_cohort(root, n_slides=6, size=(2048, 1536), seed=0, pools=load_pools(shared_data, piece_size=128),
                         minority_range=SMALL_REGION)
    return root, table


def test_cluster_split_keeps_a_five_percent_region(small_region_cohort) -> None:
    """The grouping encoder sees slide labels only; the annotation masks only score the split."""
    root, table = small_region_cohort
    slides = {}
    for row in table.itertuples():
        grid = tile_slide(root / row.slide_path, TilingConfig(patch_size=32, level=1)).grid
        region = annotation_patch_labels(np.asarray(Image.open(root / "annotations" / f"{row.slide_id}.png")), grid)
        slides[row.slide_id] = (torch.from_numpy(read_grid(grid)), int(row.label), region == 1)
    sample = torch.cat([px for px, _, _ in slides.values()]).float() / 255.0
    labels = torch.cat([torch.full((len(px),), y) for px, y, _ in slides.values()])
    cfg = GroupingConfig()
    encoder = train_cohort_encoder(sample, labels, 2, cfg, seed=0)
    kept = []
    for slide_id, (pixels, label, region) in slides.items():
        groups = group_patches(embed_patches(pixels, encoder), cfg, seed=0)
        assert groups.k == min(cfg.max_groups, len(pixels) // cfg.min_group_size) and sum(groups.sizes) == len(pixels)
        assert groups.sizes == sorted(groups.sizes, reverse=True)
        if label == 1:
            assert 0.02 < region.mean() < 0.1, (slide_id, region.mean())
            g = np.bincount(groups.labels[region]).argmax()
            precision, recall = region[groups.labels == g].mean(), (groups.labels[region] == g).mean()
            kept.append(precision >= 0.5 and recall >= 0.5)
    assert len(kept) == 3 and sum(kept) >= 2, kept


def test_group_patches_rules() -> None:
    rng = np.random.default_rng(0)
    bulk = rng.normal(0, 1, (60, 8)) + 10.0 * np.eye(8)[0]
    spot = rng.normal(0, 1, (4, 8)) + 10.0 * np.eye(8)[1]  # a small region of another kind
    groups = group_patches(np.concatenate([bulk, spot]), GroupingConfig(max_groups=3), seed=0)
    assert groups.k == 3 and groups.silhouette is not None
    spot_group = groups.labels[-4:]
    assert len(set(spot_group.tolist())) == 1 and (groups.labels[:60] != spot_group[0]).all()
    one = group_patches(rng.normal(0, 1, (7, 8)), GroupingConfig(min_group_size=4), seed=0)
    assert one.k == 1 and one.sizes == [7] and (one.labels == 0).all()
    assert split_budget(10, [50, 30, 4, 2]) == [3, 3, 3, 2]  # an equal share, capped by the group's size
    assert split_budget(10, [90]) == [10]
    with pytest.raises(OptionError, match="max_groups"):
        GroupingConfig.from_any({"max_groups": 0})
    with pytest.raises(OptionError, match="unknown setting"):
        GroupingConfig.from_any({"groups": 3})


def test_workflow_distils_each_group(tmp_path: Path, mil_tiling: Path) -> None:
    out = SyntheticBagsWorkflow(mil_tiling, tmp_path, ipc=4, method="random", split="train", progress=False,
                                grouping="cluster", grouping_options={"max_groups": 3, "encoder_epochs": 2}).run()
    assert (tmp_path / "cache" / "grouping_encoder.pt").is_file()
    for bag in out:
        sizes, budget = bag.meta["group_sizes"], bag.meta.get("group_ipc", [min(4, bag.meta["n_real_patches"])])
        assert sum(sizes) == bag.meta["n_real_patches"]
        assert len(bag) == sum(budget) == len(bag.meta["groups"])
        assert sorted(set(bag.meta["groups"])) == list(range(len(sizes)))
        if len(sizes) > 1:
            assert budget == split_budget(4, sizes)
    with pytest.raises(OptionError, match="--grouping"):
        SyntheticBagsWorkflow(mil_tiling, tmp_path / "x", grouping="kmeans")
