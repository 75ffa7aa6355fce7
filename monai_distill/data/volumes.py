"""3D CT/MR volumes listed in a CSV (``path,label[,split]``), read with MONAI transforms into a RealDataset.

Every volume goes through one MONAI pipeline (:func:`volume_transform`):

1. ``LoadImage(image_only=True, ensure_channel_first=True)`` — any format MONAI reads (NIfTI, NRRD, DICOM
   series, ...), as a (C, X, Y, Z) MetaTensor that keeps its affine.
2. ``Orientation("RAS")`` — scans are stored in different voxel orders (LAS, RAS, LPS, ...); without this one
   array axis would mean left-right in one volume and front-back in another.
3. ``ScaleIntensityRangePercentiles(0.5, 99.5, 0, 1, clip=True, channel_wise=True)`` — chosen over
   ``ScaleIntensity`` (min/max) because CT in Hounsfield units and MR in arbitrary scanner units must share one
   scale, and a few extreme voxels (metal, air padding, bias-field hot spots) would otherwise squash the tissue
   range. Percentiles map each volume's own 0.5–99.5 % range to [0, 1].
4. ``Resize(spatial_size, mode="area")`` — area averaging when shrinking (the usual case), so small structures
   are averaged rather than aliased.

The resulting [0, 1] volumes are then normalised per channel with the mean/std of the CSV's train rows, as the
MedMNIST loader does with its train split.
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checks import check_class_labels
from .dataset import DataError, RealDataset, normalise, split_stats
from .medmnist import SPLITS

if TYPE_CHECKING:
    from monai.transforms import Compose

__all__ = ["VolumeRow", "clear_volume_cache", "load_volume_csv", "read_volume_csv", "volume_transform"]

REQUIRED_COLUMNS = ("path", "label")

# Preprocessed volumes keyed by file identity and output size. Loading val/test needs the train rows too (for the
# normalisation statistics), so without this every split would re-read and re-sample the whole train set.
_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CACHE_MAX_BYTES = 2 * 2**30


@dataclass(frozen=True)
class VolumeRow:
    """One data row of a volume CSV.

    Attributes:
        row: 1-based data row number (the header is not counted; file line = row + 1).
        path: the file, resolved against the CSV's directory or ``root``.
        label: class index.
        split: ``train``, ``val`` or ``test``.
    """

    row: int
    path: Path
    label: int
    split: str


def clear_volume_cache() -> None:
    """Forget all preprocessed volumes held in memory."""
    _CACHE.clear()


def _require_3d(img: torch.Tensor) -> torch.Tensor:
    # Checked straight after reading: a 2D image would otherwise pass through Orientation/Resize with only warnings.
    if img.ndim != 4:
        raise DataError(f"not a 3D volume: read as shape {tuple(img.shape)} (channels first), expected (C, X, Y, Z).")
    return img


def volume_transform(spatial_size: Sequence[int]) -> Compose:
    """The MONAI pipeline that turns a volume file into a float (C, *spatial_size) tensor in [0, 1].

    Args:
        spatial_size: output size (three ints).
    """
    # Imported here: monai.transforms takes about a second to import and only this loader needs it.
    from monai.transforms import Compose, EnsureType, LoadImage, Orientation, Resize, ScaleIntensityRangePercentiles

    return Compose(
        [
            LoadImage(image_only=True, ensure_channel_first=True),
            _require_3d,
            # labels=None: axis labels follow the MetaTensor's "space" (MONAI's new default, stated to avoid its
            # FutureWarning on every call).
            Orientation(axcodes="RAS", labels=None),
            ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True, channel_wise=True),
            Resize(spatial_size=tuple(spatial_size), mode="area"),
            # Plain tensors: the dataset stacks thousands of these, and metadata would only ride along unused.
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def _parse_label(text: str, row: int, csv_path: Path) -> int:
    try:
        number = float(text.strip())
    except ValueError:
        number = math.nan
    # "1.0" is accepted because spreadsheet/pandas exports write integer columns with a NaN as floats.
    if not math.isfinite(number) or not number.is_integer() or number < 0:
        raise DataError(f"'{csv_path}': row {row} has label '{text}'; labels must be integers >= 0 (class indices).")
    return int(number)


def read_volume_csv(csv_path: str | Path, root: str | Path | None = None) -> tuple[list[VolumeRow], bool]:
    """Parse and check a volume CSV (header ``path,label`` and optionally ``split``).

    Args:
        csv_path: the CSV file.
        root: directory that relative paths resolve against; default: the CSV's directory.

    Returns:
        ``(rows, has_split_column)``; without a ``split`` column every row is ``train``.

    Raises:
        FileNotFoundError: the CSV does not exist.
        DataError: missing columns, no rows, bad labels or split names.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"volume CSV '{csv_path}' does not exist.")
    base = Path(root) if root is not None else csv_path.parent
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would stick to the first column name.
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(c.strip() for c in header):
            raise DataError(f"'{csv_path}' is empty; expected a header with the columns {list(REQUIRED_COLUMNS)}.")
        columns = [c.strip().lower() for c in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(
                f"'{csv_path}' lacks the column(s) {missing}; found columns {columns}. "
                "Expected a header 'path,label' (optionally ',split')."
            )
        has_split = "split" in columns
        col = {c: columns.index(c) for c in (*REQUIRED_COLUMNS, "split") if c in columns}
        rows = []
        for i, values in enumerate(reader, start=1):
            if not any(v.strip() for v in values):
                continue
            if len(values) < len(columns):
                raise DataError(f"'{csv_path}': row {i} has {len(values)} values for the columns {columns}.")
            path_text = values[col["path"]].strip()
            if not path_text:
                raise DataError(f"'{csv_path}': row {i} has an empty path.")
            path = Path(path_text).expanduser()
            split = values[col["split"]].strip().lower() if has_split else "train"
            if split not in SPLITS:
                raise DataError(f"'{csv_path}': row {i} has split '{split}'; expected one of {SPLITS}.")
            label = _parse_label(values[col["label"]], i, csv_path)
            rows.append(VolumeRow(row=i, path=path if path.is_absolute() else base / path, label=label, split=split))
    if not rows:
        raise DataError(f"'{csv_path}' has a header but no data rows.")
    return rows, has_split


def _load_rows(rows: list[VolumeRow], spatial_size: tuple[int, ...], csv_path: Path, cache: bool) -> torch.Tensor:
    absent = [r for r in rows if not r.path.is_file()]
    if absent:
        listed = "; ".join(f"row {r.row}: '{r.path}'" for r in absent[:10])
        more = f" (and {len(absent) - 10} more)" if len(absent) > 10 else ""
        raise FileNotFoundError(f"'{csv_path}' lists files that do not exist: {listed}{more}.")
    transform = None
    volumes = []
    for r in rows:
        st = r.path.stat()
        key = (str(r.path.resolve()), st.st_mtime_ns, st.st_size, spatial_size)
        vol = _CACHE.get(key) if cache else None
        if vol is None:
            transform = transform or volume_transform(spatial_size)
            try:
                vol = transform(str(r.path))
            except Exception as e:
                # MONAI wraps reader errors in "applying transform ..." RuntimeErrors; the innermost cause is
                # the one that tells the user what is wrong with the file.
                cause = e
                while cause.__cause__ is not None:
                    cause = cause.__cause__
                raise DataError(
                    f"'{csv_path}': row {r.row}: cannot read '{r.path}' as an image volume "
                    f"({type(cause).__name__}: {str(cause)[:300]})."
                ) from e
            n_bad = int((~torch.isfinite(vol)).sum())
            if n_bad:
                # One NaN voxel turns the percentile scaling of the whole volume into NaN (and a distilled set with
                # it): the volume is rejected, as the .npz loader rejects non-finite images.
                raise DataError(
                    f"'{csv_path}': row {r.row}: '{r.path}' contains NaN or infinite voxel values ({n_bad} of "
                    f"{vol.numel()} after preprocessing); fix the volume or remove its row."
                )
            if cache:
                _cache_put(key, vol)
        if volumes and vol.shape[0] != volumes[0].shape[0]:
            raise DataError(
                f"'{csv_path}': row {r.row}: '{r.path}' has {vol.shape[0]} channel(s), "
                f"row {rows[0].row} has {volumes[0].shape[0]}; all volumes must have the same channels."
            )
        volumes.append(vol)
    return torch.stack(volumes)


def _cache_put(key: tuple, vol: torch.Tensor) -> None:
    _CACHE[key] = vol
    total = sum(v.numel() * v.element_size() for v in _CACHE.values())
    while len(_CACHE) > 1 and total > _CACHE_MAX_BYTES:
        _, old = _CACHE.popitem(last=False)
        total -= old.numel() * old.element_size()


def load_volume_csv(
    csv_path: str | Path,
    split: str = "train",
    spatial_size: Sequence[int] = (64, 64, 64),
    root: str | Path | None = None,
    class_names: list[str] | None = None,
    cache: bool = True,
) -> RealDataset:
    """Load the volumes of one split of a CSV as a normalised 3D :class:`RealDataset`.

    The CSV has a header with ``path`` and ``label`` and optionally ``split`` (``train``/``val``/``test``).
    Without a ``split`` column all rows are ``train``. Volumes are preprocessed by :func:`volume_transform`
    and normalised with the mean/std of the train rows (also when another split is loaded).

    Args:
        csv_path: the CSV file.
        split: ``train``, ``val`` or ``test``.
        spatial_size: output size (D, H, W) of every volume.
        root: directory that relative paths resolve against; default: the CSV's directory.
        class_names: one name per class; default ``["0", "1", ...]`` up to the largest train label (every class up
            to it must have train rows, and val/test labels must lie among them).
        cache: keep preprocessed volumes in memory (keyed by file, modification time and size), so that loading
            several splits or reloading reads each file once.

    Raises:
        FileNotFoundError: the CSV, or a file listed for this split or the train split, does not exist.
        DataError: missing columns (the message names those found), non-integer labels, unknown split names, a
            file that cannot be read as a 3D volume or holds NaN/infinite voxels (names row and path), no rows for
            the split, labels outside ``class_names`` or the train rows' classes.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'.")
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"spatial_size must be three positive ints (D, H, W), got {tuple(spatial_size)}.")
    csv_path = Path(csv_path)
    rows, has_split = read_volume_csv(csv_path, root)
    if not has_split and split != "train":
        raise DataError(
            f"'{csv_path}' has no 'split' column, so all its rows are train data and there is no {split} split; "
            "add a 'split' column (train/val/test) to the CSV, or list the other split in a CSV of its own."
        )
    chosen = [r for r in rows if r.split == split]
    train_rows = [r for r in rows if r.split == "train"]
    if not chosen:
        raise DataError(f"'{csv_path}' has no rows with split '{split}'.")
    if not train_rows:
        raise DataError(f"'{csv_path}' has no train rows, which are needed for the normalisation mean/std.")
    if class_names is not None:
        k = len(class_names)
        outside = [r for r in rows if r.label >= k]
        if outside:
            listed = ", ".join(f"row {r.row}: {r.label}" for r in outside[:10])
            raise DataError(
                f"'{csv_path}': labels must lie in [0, {k - 1}] for the {k} class_names given; found {listed}."
            )
    else:
        # The train rows define the classes; a label of a val/test row outside them is a typo, named with its rows.
        by_split = {s: [r.label for r in rows if r.split == s] for s in SPLITS if any(r.split == s for r in rows)}
        try:
            k = check_class_labels(by_split, str(csv_path), key="{split} labels")
        except DataError as e:
            train_k = max(by_split.get("train") or [0]) + 1
            bad = [r for r in rows if r.split != "train" and r.label >= train_k]
            listed = ", ".join(f"row {r.row}: {r.split} label {r.label}" for r in bad[:10])
            rows_text = f" ({listed})" if bad else ""
            raise DataError(f"{str(e).rstrip('.')}{rows_text}.") from None
    x = _load_rows(chosen, size, csv_path, cache)
    train_x = x if split == "train" else _load_rows(train_rows, size, csv_path, cache)
    mean, std = split_stats(train_x)
    del train_x
    if len(mean) != x.shape[1]:
        raise DataError(f"'{csv_path}': train volumes have {len(mean)} channel(s), {split} volumes {x.shape[1]}.")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    return RealDataset(
        # torch.stack copied the (possibly cached) volumes, so normalising the stack in place leaves the cache as is.
        images=normalise(x, mean, std, inplace=True),
        labels=torch.tensor([r.label for r in chosen], dtype=torch.long),
        num_classes=k,
        class_names=names,
        mean=mean,
        std=std,
        name=csv_path.stem,
        split=split,
        task="binary-class" if k == 2 else "multi-class",
        source=str(csv_path),
        extra={
            "spatial_size": list(size),
            "preprocessing": "LoadImage, Orientation(RAS), ScaleIntensityRangePercentiles(0.5, 99.5 -> 0..1), "
            f"Resize({size}, area)",
        },
    )
