"""Whole-slide image pipeline: read slides with MONAI ``WSIReader``, tissue mask, patch grid, patch datasets.

Slides are tiled into patch grids (:mod:`wsi.tiling`, cohort runs in :mod:`wsi.workflows`); later steps distil each
slide into a small synthetic bag. :mod:`wsi.cohort` writes a labelled test cohort made of real tissue.

Modules:
    reader: :class:`Slide` / :class:`SlideInfo` over ``monai.data.WSIReader`` (openslide, tifffile, cucim).
    tissue: HSV-saturation/Otsu tissue mask with pen-mark removal and morphology (skimage).
    grid: level/mpp resolution (:class:`PatchSpec`), grid positions, tissue fraction per patch, :class:`PatchGrid`.
    tiling: :func:`tile_slide` (mask + grid of one slide).
    workflows: :class:`TilingWorkflow`, the cohort run of the ``wsi_tiling`` bundle (resumable, sharded by rank).
    components: the reader, tissue masker, patch grid and writer a bundle config can replace (``reader_def``,
        ``masker_def``, ``grid_def``, ``writer_def``) and their defaults.
    datasets: :class:`SlidePatchDataset` (MONAI ``PatchWSIDataset`` over saved grids).
    patches: :func:`read_grid` / :func:`iter_grid_batches`, every patch of a grid from one open slide into uint8
        arrays (the fast path: no per-patch metadata objects).
    cohort: :func:`build_cohort`, pyramidal TIFF slides of real tissue with a known label
        (command line: ``python -m wsi cohort OUT --n_slides 12``).
"""

from .cohort import Centre, build_centres, build_cohort, load_pools, shared_data_dir, write_pyramid_tiff
from .datasets import SlidePatchDataset, grid_to_data, load_grids
from .grid import PatchGrid, PatchSpec, resolve_patch_spec
from .patches import iter_grid_batches, read_grid
from .reader import Slide, SlideInfo, SlideReadError, open_slide
from .slides import SlideRecord, list_slides
from .tiling import NoTissueError, SlideTiling, TilingConfig, tile_slide
from .tissue import TissueMaskConfig, tile_tissue_fraction, tissue_fraction, tissue_mask
from .workflows import TilingWorkflow

__all__ = [
    "Centre",
    "NoTissueError",
    "PatchGrid",
    "PatchSpec",
    "Slide",
    "SlideInfo",
    "SlidePatchDataset",
    "SlideReadError",
    "SlideRecord",
    "SlideTiling",
    "TilingConfig",
    "TilingWorkflow",
    "TissueMaskConfig",
    "build_centres",
    "build_cohort",
    "grid_to_data",
    "iter_grid_batches",
    "list_slides",
    "load_grids",
    "load_pools",
    "open_slide",
    "read_grid",
    "resolve_patch_spec",
    "shared_data_dir",
    "tile_slide",
    "tile_tissue_fraction",
    "tissue_fraction",
    "tissue_mask",
    "write_pyramid_tiff",
]
