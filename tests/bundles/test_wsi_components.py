"""Config components of the WSI bundles (issue 16): ``reader_def``, ``masker_def``, ``grid_def`` and ``writer_def``
replaced from the command line, on the two real slides of ``../shared/data/wsi``.

The defaults must tile exactly as the flat flags did before these entries existed: the patch counts and coordinate
digests below, and the resume fingerprints, were recorded with the code before the components (commit 8c8af17). A
component of the user's own comes from a module in a temporary folder on ``sys.path``, as a user's would from the
working directory; the bundle runs as ``monai.bundle run`` does (in process, or as a command where the one-line error
of an import must be seen on stderr).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from monai.bundle import ConfigParser

from wsi.components import PatchGridder, TilingWriter, TissueMasker
from wsi.grid import PatchGrid
from wsi.workflows import TilingWorkflow

from .helpers import REPO_ROOT, bundle_cmd

TILING = str(REPO_ROOT / "bundles" / "wsi_tiling" / "configs" / "train.json")
BAGS = str(REPO_ROOT / "bundles" / "wsi_synthetic_bags" / "configs" / "train.json")
CMU = "CMU-1-Small-Region"
TCGA = "TCGA-CR-7395-01A-01-TS1_histolab-fixture"
PREFIX = "monai-distill: error: "

# (n_patches, sha256 of [coords, tissue_fraction]) per slide, and the fingerprint, from the code before issue 16.
BEFORE_DEFAULTS = ({CMU: (33, "e7486f7b9a95420e"), TCGA: (155, "ea635b47af91e8e3")}, "5bbc2f855557acb1")
FLAT = {"patch_size": 128, "stride": 96, "tissue_threshold": 0.6, "mask_downsample": 16}
BEFORE_FLAT = ({CMU: (231, "642a62f9a327f47d"), TCGA: (1053, "190d449a29ee247d")}, "dd21ee45da505f59")

USER_MODULE = '''
import numpy as np

from wsi.components import TilingWriter
from wsi.reader import Slide

OPENED = []


class BoxMasker:
    """Tissue is the central box of the slide, whatever the pixels say."""

    calls = 0

    def __init__(self, margin=0.25):
        self.margin = margin

    def __call__(self, image):
        BoxMasker.calls += 1
        h, w = image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        mask[int(h * self.margin):int(h * (1 - self.margin)), int(w * self.margin):int(w * (1 - self.margin))] = True
        return mask


class CountingSlide(Slide):
    """The default reader, recording what it opens."""

    def __init__(self, path, backend="openslide"):
        OPENED.append(str(path))
        super().__init__(path, backend=backend)


class CsvWriter(TilingWriter):
    """The default files, plus a CSV of the kept corners."""

    def write(self, tiling):
        super().write(tiling)
        (self.output_dir / "csv").mkdir(exist_ok=True)
        np.savetxt(self.output_dir / "csv" / f"{tiling.grid.slide_id}.csv", tiling.grid.coords, fmt="%d",
                   delimiter=",")


def saturation_mask(image, threshold=0.1):
    """A masker as a plain function: the definition's arguments bound, the image given per slide."""
    rgb = image.astype(np.float32) / 255
    return rgb.max(-1) - rgb.min(-1) > threshold


class WrongShapeMasker:
    def __call__(self, image):
        return np.ones((3, 3), dtype=bool)


class NotAWriter:
    def __init__(self, output_dir):
        self.output_dir = output_dir

    def write(self, tiling):
        pass


class PathlessReader:
    def __init__(self, filename):
        self.filename = filename


class NoInfoReader:
    def __init__(self, path):
        self.path = path

    def read_region(self, x, y, width, height, level=0):
        return np.zeros((height, width, 3), dtype=np.uint8)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``wsi_user_parts`` in a temporary folder on ``sys.path`` (imported afresh for each test)."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "wsi_user_parts.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "wsi_user_parts", raising=False)
    import wsi_user_parts

    yield wsi_user_parts
    sys.modules.pop("wsi_user_parts", None)


@pytest.fixture(scope="module")
def wsi_dir(shared_data: Path) -> Path:
    return shared_data / "wsi"


@pytest.fixture
def small_slide(tmp_path: Path, wsi_dir: Path) -> Path:
    """A folder holding only the small real slide (a link: the data stay where they are)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / f"{CMU}.svs").symlink_to(wsi_dir / f"{CMU}.svs")
    return folder


def _run(config: str = TILING, **overrides) -> None:
    """``python -m monai.bundle run`` in this process; an error is the SystemExit of the project's one line."""
    from monai.bundle import run

    run(config_file=config, logging_file=False, progress=False, **overrides)


def _error(config: str = TILING, **overrides) -> str:
    from monai.bundle import run

    with pytest.raises(SystemExit) as exc:
        run(config_file=config, logging_file=False, progress=False, **overrides)
    return str(exc.value.code)


def _digests(out: Path) -> dict[str, tuple[int, str]]:
    found = {}
    for path in sorted((out / "coords").glob("*.json")):
        grid = json.loads(path.read_text())
        digest = hashlib.sha256(json.dumps([grid["coords"], grid["tissue_fraction"]]).encode()).hexdigest()[:16]
        found[path.stem] = (grid["n_patches"], digest)
    return found


def _tiling_config(out: Path) -> dict:
    return json.loads((out / "tiling_config.json").read_text())


@pytest.mark.parametrize(("flat", "before"), [({}, BEFORE_DEFAULTS), (FLAT, BEFORE_FLAT)], ids=["defaults", "flat"])
def test_defaults_tile_as_before(flat: dict, before: tuple, wsi_dir: Path, tmp_path: Path) -> None:
    """The default entries with the flat flags give the patches of the code before the components (and its resume
    fingerprint, so that earlier outputs are still finished); the same settings given as arguments of the default
    definitions give byte-identical grids and thumbnails."""
    out = tmp_path / "flat"
    _run(slides=str(wsi_dir), output_dir=str(out), **flat)
    assert (pd.read_csv(out / "manifest.csv").status == "done").all()
    assert _digests(out) == before[0]
    cfg = _tiling_config(out)
    assert cfg["fingerprint"] == before[1] and "components" not in cfg["config"]

    as_definitions = {("masker_def#" if k == "mask_downsample" else "grid_def#") + k: v for k, v in flat.items()}
    defined = tmp_path / "defined"
    _run(slides=str(wsi_dir), output_dir=str(defined), **as_definitions)
    assert _tiling_config(defined)["fingerprint"] == before[1]
    for sid in before[0]:
        for part in (f"coords/{sid}.json", f"thumbnails/{sid}.png"):
            assert (out / part).read_bytes() == (defined / part).read_bytes(), part


def test_user_masker_from_a_module_on_sys_path(user_module, small_slide: Path, tmp_path: Path) -> None:
    """``--masker_def#_target_ wsi_user_parts.BoxMasker`` with an argument of its own: the kept patches are those of
    its central box, and the definition is recorded in the grid, the run's config and its fingerprint."""
    out = tmp_path / "out"
    _run(slides=str(small_slide), output_dir=str(out),
         **{"masker_def#_target_": "wsi_user_parts.BoxMasker", "masker_def#margin": 0.3})
    assert user_module.BoxMasker.calls == 1
    grid = PatchGrid.load(out / "coords" / f"{CMU}.json")
    spec = {"_target_": "wsi_user_parts.BoxMasker", "margin": 0.3}
    assert grid.mask["config"] == {"masker_def": spec}
    cfg = _tiling_config(out)
    assert cfg["config"]["components"] == {"masker_def": spec} and cfg["fingerprint"] != BEFORE_DEFAULTS[1]
    # every kept patch lies mostly inside the box (its tissue fraction >= 0.5), and the box is covered
    w0, h0 = grid.info.dimensions[0]
    centres = grid.coords + grid.spec.footprint / 2
    slack = grid.spec.footprint / 2 + 64  # half a patch, plus a mask pixel on each side
    assert len(grid) > 0 and np.all(grid.tissue_fraction >= 0.5)
    assert np.all((centres[:, 0] > 0.3 * w0 - slack) & (centres[:, 0] < 0.7 * w0 + slack))
    assert np.all((centres[:, 1] > 0.3 * h0 - slack) & (centres[:, 1] < 0.7 * h0 + slack))

    # a rerun with the default masker does not take these grids for its own
    default = TilingWorkflow(small_slide, out, progress=False)
    assert default.config.fingerprint() == BEFORE_DEFAULTS[1]
    assert not default.is_finished(next(iter(_records(small_slide))))


def test_user_masker_function(user_module, small_slide: Path, tmp_path: Path) -> None:
    """A function ``masker(image, threshold=...)`` is the masker itself: the definition's argument is used."""
    grids = {}
    for threshold in (0.05, 0.2):
        out = tmp_path / f"t{threshold}"
        _run(slides=str(small_slide), output_dir=str(out),
             **{"masker_def#_target_": "wsi_user_parts.saturation_mask", "masker_def#threshold": threshold})
        grids[threshold] = PatchGrid.load(out / "coords" / f"{CMU}.json")
        assert grids[threshold].mask["config"] == {"masker_def": {"_target_": "wsi_user_parts.saturation_mask",
                                                                  "threshold": threshold}}
    assert grids[0.2].mask["tissue_fraction"] < grids[0.05].mask["tissue_fraction"]
    assert 0 < len(grids[0.2]) < len(grids[0.05])


def _records(slides: Path):
    from wsi.slides import list_slides

    return list_slides(slides)


def test_user_reader_and_writer(user_module, wsi_dir: Path, tmp_path: Path) -> None:
    """A reader (a subclass of wsi.reader.Slide, given the flat --backend) and a writer (a TilingWriter subclass with a
    CSV of its own) of the user's module: each is used, and they change nothing of the grids."""
    out = tmp_path / "out"
    _run(slides=str(wsi_dir), output_dir=str(out), **{"reader_def#_target_": "wsi_user_parts.CountingSlide",
                                                      "writer_def": "wsi_user_parts.CsvWriter"})
    assert sorted(Path(p).stem for p in user_module.OPENED) == sorted([CMU, TCGA])  # the thumbnails reuse the mask
    assert _digests(out) == BEFORE_DEFAULTS[0]
    for sid in (CMU, TCGA):
        grid = PatchGrid.load(out / "coords" / f"{sid}.json")
        assert np.array_equal(np.loadtxt(out / "csv" / f"{sid}.csv", delimiter=",", dtype=np.int64).reshape(-1, 2),
                              grid.coords)
        assert grid.info.backend == "openslide"  # filled in from --backend
    components = _tiling_config(out)["config"]["components"]
    assert components == {"reader_def": {"_target_": "wsi_user_parts.CountingSlide"},
                          "writer_def": {"_target_": "wsi_user_parts.CsvWriter"}}


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"masker_def#_target_": "wsi_user_parts.WrongShapeMasker"},
         ("--masker_def wsi_user_parts.WrongShapeMasker: returned shape (3, 3)", "boolean tissue mask")),
        ({"writer_def#_target_": "wsi_user_parts.NotAWriter"},
         ("--writer_def wsi_user_parts.NotAWriter: built a NotAWriter without remove(), is_written()",)),
        ({"reader_def#_target_": "wsi_user_parts.PathlessReader"},
         ("--reader_def wsi_user_parts.PathlessReader: a reader is called with the slide file as its 'path'",)),
        ({"reader_def#_target_": "wsi_user_parts.NoInfoReader"},
         ("--reader_def wsi_user_parts.NoInfoReader: opened", "without info (a wsi.reader.SlideInfo), read_level()")),
        ({"grid_def#_target_": "wsi_user_parts.BoxMasker"},
         ("--grid_def wsi_user_parts.BoxMasker: built a BoxMasker without spec(), positions()",)),
        ({"grid_def#strid": 64}, ("--grid_def wsi.components.PatchGridder takes no argument 'strid'",)),
        ({"masker_def#bogus": 1}, ("--masker_def wsi.components.TissueMasker: cannot be built",
                                   "unknown tissue mask option(s) ['bogus']")),
    ],
    ids=["masker-wrong-shape", "writer-without-methods", "reader-without-path", "reader-without-info",
         "grid-without-methods", "grid-unknown-argument", "masker-unknown-field"],
)
def test_wrong_interface_ends_with_one_line(overrides: dict, culprit: tuple[str, ...], user_module,
                                            small_slide: Path, tmp_path: Path) -> None:
    """A component that breaks its interface stops the run (it is no slide's failure) with one line naming it."""
    out = tmp_path / "out"
    last = _error(slides=str(small_slide), output_dir=str(out), **overrides)
    assert last.startswith(PREFIX) and "\n" not in last, last
    for text in culprit:
        assert text in last, f"{text!r} not in: {last}"
    assert not list(out.glob("coords/*.json")) and not (out / "manifest.csv").exists()


def test_target_that_cannot_be_imported_ends_with_one_line(small_slide: Path, tmp_path: Path) -> None:
    """MONAI resolves ``_target_`` before the workflow exists; the bundle still ends with the project's line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    cmd = bundle_cmd(TILING, slides=small_slide, output_dir=out, progress=False,
                     **{"masker_def#_target_": "no_such_module.Masker"})
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(PREFIX + "config entry 'masker_def': ModuleNotFoundError"), last
    assert "'no_such_module.Masker'" in last and "PYTHONPATH" in last
    assert not out.exists()


def test_synthetic_bags_tiles_with_the_components(user_module, wsi_dir: Path, tmp_path: Path) -> None:
    """``wsi_synthetic_bags`` hands its component entries to the tiling it runs on a slide CSV."""
    csv = tmp_path / "slides.csv"
    pd.DataFrame({"slide_path": [str(wsi_dir / f"{CMU}.svs"), str(wsi_dir / f"{TCGA}.svs")], "label": [0, 1],
                  "slide_id": [CMU, TCGA]}).to_csv(csv, index=False)
    parser = ConfigParser()
    parser.read_config(BAGS)
    parser.update({"slides": str(csv), "output_dir": str(tmp_path / "bags"), "device": "cpu", "progress": False,
                   "patch_size": 256, "masker_def#_target_": "wsi_user_parts.BoxMasker",
                   "grid_def#stride": 512})
    workflow = parser.get_parsed_content("workflow")()
    assert workflow.tiling["masker_def"] is user_module.BoxMasker
    grids, failed = workflow._grids()  # the tiling step of the run, without the distillation
    assert not failed and sorted(g.slide_id for g in grids) == sorted([CMU, TCGA])
    cfg = _tiling_config(tmp_path / "bags" / "tiling")
    assert cfg["config"]["components"] == {"masker_def": {"_target_": "wsi_user_parts.BoxMasker"}}
    assert cfg["config"]["stride"] == 512 and cfg["config"]["patch_size"] == 256 and user_module.BoxMasker.calls == 2


def test_default_components_by_hand(wsi_dir: Path, tmp_path: Path) -> None:
    """The default classes work alone, as the interfaces say (what a user's component imitates)."""
    from wsi.reader import Slide
    from wsi.tiling import TilingConfig, tile_slide

    cmu_svs = wsi_dir / f"{CMU}.svs"
    gridder, masker = PatchGridder(patch_size=128, stride=96, tissue_threshold=0.6), TissueMasker(mask_downsample=16)
    with Slide(cmu_svs) as slide:
        spec = gridder.spec(slide.info)
        positions = gridder.positions(slide.info, spec)
        image = slide.read_level(0)[::16, ::16]
    assert spec.footprint == 128 and spec.stride == 96 and positions.shape[1] == 2
    assert masker(image).shape == image.shape[:2] and masker(image).dtype == bool
    tiling = tile_slide(cmu_svs, TilingConfig(**FLAT))
    writer = TilingWriter(tmp_path, thumbnail_size=256)
    assert not writer.is_written(CMU)
    writer.write(tiling)
    assert writer.is_written(CMU) and (tmp_path / "thumbnails" / f"{CMU}.png").is_file()
    writer.remove(CMU)
    assert not writer.is_written(CMU) and not (tmp_path / "thumbnails" / f"{CMU}.png").exists()
