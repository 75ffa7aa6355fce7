"""The bag file format: round trips, validation errors that name the file and key, bag directories and manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mil.bags import (
    BAG_MANIFEST_COLUMNS,
    Bag,
    BagDirectory,
    BagError,
    compact_bags,
    load_bag,
    save_bag,
    write_bag_manifest,
)
from monai_distill.data import SyntheticSet


def _bag(slide_id: str = "s1", label: int = 1, n: int = 5, **kw) -> Bag:
    g = torch.Generator().manual_seed(0)
    patches = kw.pop("patches", torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g))
    return Bag(slide_id, label, patches=patches, **kw)


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    bag = _bag(coords=torch.arange(10).reshape(5, 2), features=torch.randn(5, 4), meta={"level": 1, "a": [1, 2]})
    path = save_bag(bag, tmp_path / "bags" / "s1.pt")
    back = load_bag(path)
    assert (back.slide_id, back.label, back.source, back.meta) == ("s1", 1, "real", {"level": 1, "a": [1, 2]})
    for key in ("patches", "features", "coords"):
        assert torch.equal(getattr(back, key), getattr(bag, key))
    assert back.digest() == bag.digest()
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write leaves no temporary file


def test_pixel_units() -> None:
    u8 = _bag(patches=torch.full((2, 3, 4, 4), 255, dtype=torch.uint8))
    assert torch.allclose(u8.pixels(), torch.ones(2, 3, 4, 4))
    normalised = Bag("s", 0, patches=torch.zeros(2, 3, 4, 4), source="synthetic",
                     meta={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]})
    assert torch.allclose(normalised.pixels()[:, 1], torch.full((2, 4, 4), 0.4))
    with pytest.raises(BagError, match=r"features only"):
        Bag("s", 0, features=torch.randn(3, 4)).pixels()


def test_from_synthetic_set_keeps_units_and_label() -> None:
    images = torch.randn(4, 3, 8, 8)
    synthetic = SyntheticSet(images, torch.tensor([0, 0, 1, 1]), meta={"method": "histodd", "mean": [0.5] * 3,
                                                                       "std": [0.25] * 3})
    bag = Bag.from_synthetic_set(synthetic, "slide_7", label=1, meta={"ipc": 2})
    assert bag.source == "synthetic" and bag.label == 1 and bag.meta["method"] == "histodd" and bag.meta["ipc"] == 2
    assert torch.allclose(bag.pixels(), images * 0.25 + 0.5)


def test_compact_storage_sizes_and_units(tmp_path: Path) -> None:
    """float16 halves and uint8 quarters the file of a synthetic bag; both keep the pixels within their rounding."""
    images = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2
    syn = SyntheticSet(images, torch.zeros(40, dtype=torch.long), meta={"mean": [0.5] * 3, "std": [0.25] * 3})
    bag = Bag.from_synthetic_set(syn, "s", label=1)
    sizes = {}
    for storage in ("float32", "float16", "uint8"):
        back = load_bag(save_bag(bag.compact(storage), tmp_path / f"{storage}.pt"))
        sizes[storage] = (tmp_path / f"{storage}.pt").stat().st_size
        err = (back.pixels() - bag.pixels().clamp(0, 1)).abs().max().item()
        assert err <= {"float32": 0.0, "float16": 2e-3, "uint8": 0.5 / 255 + 1e-6}[storage], storage
    assert back.patches.dtype == torch.uint8 and "mean" not in back.meta and back.meta["storage"] == "uint8"
    assert sizes["float16"] < 0.55 * sizes["float32"] and sizes["uint8"] < 0.3 * sizes["float32"]
    with pytest.raises(BagError, match="storage must be one of"):
        bag.compact("int4")


def test_compact_bags_copies_a_directory(tmp_path: Path) -> None:
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    src = tmp_path / "src"
    for i in range(2):
        syn = SyntheticSet(images * 2 - 1, torch.zeros(6, dtype=torch.long), meta={"mean": [0.5] * 3, "std": [0.5] * 3})
        save_bag(Bag.from_synthetic_set(syn, f"slide_{i}", label=i), src / "bags" / f"slide_{i}.pt")
    (src / "manifest.csv").write_text("slide_id,label\nslide_0,0\nslide_1,1\n")
    out = compact_bags(src, tmp_path / "dst")
    for i in range(2):
        back = load_bag(out / "bags" / f"slide_{i}.pt")
        assert back.patches.dtype == torch.uint8 and back.label == i
        assert (back.pixels() - images).abs().max() <= 0.5 / 255 + 1e-6  # within one grey level
    assert (out / "manifest.csv").read_text() == (src / "manifest.csv").read_text()
    with pytest.raises(BagError, match="no bags"):
        compact_bags(tmp_path / "empty_dir_that_is_missing", tmp_path / "x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patches": torch.zeros(3, 8, 8)}, r"'patches' must be a tensor \(N, C, H, W\)"),
        ({"patches": torch.zeros(2, 3, 4, 4, dtype=torch.int32)}, r"uint8 \[0, 255\] or float"),
        ({"patches": torch.full((2, 3, 4, 4), float("nan"))}, "NaN"),
        ({"patches": torch.zeros(0, 3, 4, 4)}, "empty"),
        ({"features": torch.randn(4, 2)}, "5 patches but 4 feature rows"),
        ({"coords": torch.zeros(5, 3, dtype=torch.long)}, r"'coords' must be an integer tensor \(5, 2\)"),
        ({"label": -1}, "'label' must be a class index"),
        ({"label": 0.5}, "'label' must be a class index"),
        ({"source": "fake"}, "'source' must be one of"),
        ({"slide_id": "a/b"}, "path separators"),
        ({"meta": {"x": torch.zeros(1)}}, "JSON values"),
        ({"meta": {"mean": [0.5]}}, "only one of 'mean' and 'std'"),
        ({"patches": None}, "both are missing"),
    ],
)
def test_invalid_bags_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(BagError, match=message):
        _bag(**kwargs)


def test_label_types_are_normalised() -> None:
    assert _bag(label=torch.tensor(1)).label == 1 and _bag(label=1.0).label == 1
    assert type(_bag(label=np.int64(1)).label) is int


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing.pt"):
        load_bag(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a tensor file")
    with pytest.raises(BagError, match=r"text.pt' is not a readable bag file"):
        load_bag(tmp_path / "text.pt")
    torch.save({"images": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(BagError, match=r"other.pt' is not a monai-distill-bag file"):
        load_bag(tmp_path / "other.pt")
    state = _bag().state()
    torch.save({**state, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(BagError, match=r"bag format 99"):
        load_bag(tmp_path / "future.pt")
    torch.save({k: v for k, v in state.items() if k != "label"}, tmp_path / "nolabel.pt")
    with pytest.raises(BagError, match=r"missing keys \['label'\]"):
        load_bag(tmp_path / "nolabel.pt")
    torch.save({**state, "coords": torch.zeros(2, 2, dtype=torch.long)}, tmp_path / "badcoords.pt")
    with pytest.raises(BagError, match=r"badcoords.pt': 'coords'"):
        load_bag(tmp_path / "badcoords.pt")


def _write_dir(root: Path, rows: list[dict] | None, ids=("a", "b", "c")) -> Path:
    for i, sid in enumerate(ids):
        save_bag(_bag(sid, label=i % 2), root / "bags" / f"{sid}.pt")
    if rows is not None:
        write_bag_manifest(root / "manifest.csv", rows)
    return root


def _row(sid: str, label: int, status: str = "done", error: str = "") -> dict:
    return {"slide_id": sid, "label": label, "n_patches": 50, "n_synthetic": 5, "status": status, "seconds": 1.0,
            "error": error}


def test_directory_without_manifest_reads_every_bag(tmp_path: Path) -> None:
    root = _write_dir(tmp_path, None)
    for where in (root, root / "bags"):
        bags = BagDirectory(where)
        assert bags.slide_ids == ["a", "b", "c"] and bags.manifest_path is None
        assert [b.label for b in bags] == [0, 1, 0]


def test_manifest_one_level_up_skips_rows_not_done(tmp_path: Path) -> None:
    root = _write_dir(tmp_path, [_row("a", 0), _row("b", 1, "failed", "RuntimeError: boom"), _row("c", 0)])
    assert list(pd.read_csv(root / "manifest.csv").columns) == list(BAG_MANIFEST_COLUMNS)
    bags = BagDirectory(root / "bags")  # the contract passes OUT/bags; the manifest is OUT/manifest.csv
    assert bags.manifest_path == root / "manifest.csv"
    assert bags.slide_ids == ["a", "c"]
    assert "boom" in bags.skipped["b"]


def test_manifest_errors(tmp_path: Path) -> None:
    root = _write_dir(tmp_path / "missing", [_row("a", 0), _row("zz", 1)])
    with pytest.raises(BagError, match=r"says slide 'zz' is done but .*zz.pt' does not exist"):
        BagDirectory(root)
    root = _write_dir(tmp_path / "label", [_row("a", 1)], ids=("a",))
    with pytest.raises(BagError, match=r"has label 0 but .*manifest.csv' says 1"):
        BagDirectory(root)[0]
    root = _write_dir(tmp_path / "cols", None, ids=("a",))
    pd.DataFrame({"id": ["a"]}).to_csv(root / "manifest.csv", index=False)
    with pytest.raises(BagError, match=r"no column\(s\) \['slide_id', 'status'\]"):
        BagDirectory(root)
    root = _write_dir(tmp_path / "none", [_row("a", 0, "failed")], ids=("a",))
    with pytest.raises(BagError, match=r"no row with status 'done'"):
        BagDirectory(root)
    root = _write_dir(tmp_path / "renamed", None, ids=("a",))
    (root / "bags" / "a.pt").rename(root / "bags" / "b.pt")
    with pytest.raises(BagError, match=r"holds slide 'a'"):
        BagDirectory(root)[0]
    with pytest.raises(FileNotFoundError, match=r"bag directory"):
        BagDirectory(tmp_path / "nowhere")
