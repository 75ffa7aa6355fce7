"""The wsi_tiling bundle: metadata validates offline, the README command runs, every CLI key reaches the workflow."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from monai.bundle import ConfigParser, verify_metadata

from wsi.workflows import TilingWorkflow

from .helpers import BUNDLE, REPO_ROOT, run_cli


@pytest.mark.filterwarnings("ignore:No hash value provided")  # the schema is a local file, on purpose
def test_metadata_verifies_offline() -> None:
    schema = REPO_ROOT / "bundles" / "schema" / "meta_schema.json"
    assert schema.is_file(), "bundles/schema/meta_schema.json must exist so that verification needs no download"
    verify_metadata(meta_file=str(BUNDLE / "metadata.json"), filepath=str(schema))


def test_readme_command(tmp_path: Path, wsi_dir: Path) -> None:
    """python -m monai.bundle run --config_file bundles/wsi_tiling/configs/train.json --slides ../shared/data/wsi ..."""
    slides = "../shared/data/wsi" if wsi_dir.resolve() == (REPO_ROOT.parent / "shared/data/wsi").resolve() else wsi_dir
    out = tmp_path / "OUT"
    run_cli(["-m", "monai.bundle", "run", "--config_file", "bundles/wsi_tiling/configs/train.json",
             "--slides", str(slides), "--output_dir", str(out)])
    manifest = pd.read_csv(out / "manifest.csv")
    assert (manifest.status == "done").all() and len(manifest) == 2
    for sid in manifest.slide_id:
        assert (out / "coords" / f"{sid}.json").is_file() and (out / "thumbnails" / f"{sid}.png").is_file()


def test_cli_keys_reach_the_workflow(tmp_path: Path) -> None:
    overrides = {"slides": "x.csv", "output_dir": str(tmp_path), "patch_size": 128, "mpp": 1.0, "stride": 64,
                 "tissue_threshold": 0.3, "backend": "tifffile", "mask_downsample": 16,
                 "mask_options": {"min_saturation": 0.1}, "retry_failed": False, "progress": False}
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser.update(overrides)
    wf = parser.get_parsed_content("workflow")()  # "_mode_": "callable": the bundle builds it inside cli_main
    assert isinstance(wf, TilingWorkflow)
    c = wf.config
    assert (c.patch_size, c.level, c.mpp, c.stride, c.tissue_threshold, c.backend, c.mask_downsample) == (
        128, None, 1.0, 64, 0.3, "tifffile", 16.0)
    assert c.mask.min_saturation == 0.1 and wf.retry_failed is False and wf.progress is False
    assert os.fspath(wf.slides) == "x.csv"
    parser.update({"mpp": None, "level": 1})
    assert parser.get_parsed_content("workflow", lazy=False)().config.level == 1


def test_multi_gpu_config_keeps_the_workflow() -> None:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "train.json"), str(BUNDLE / "multi_gpu_train.json")])
    assert "workflow" in parser.config and any("init_process_group" in s for s in parser["initialize"])
    assert parser["run"] == ["$monai_distill.runs.cli_main(@workflow)"]
