"""The bag file format shared by real bags (patches of a tiled slide) and synthetic bags (per-slide distillation).

One slide is one bag, one file ``bags/<slide_id>.pt``: a plain dict of tensors and JSON-able values that
``torch.load(weights_only=True)`` reads. A bag holds its instances as image patches (N, C, H, W), as features
(N, F), or both, plus the slide label, where it came from (``"real"`` or ``"synthetic"``) and free metadata (tiling
or distillation settings). Real and synthetic bags therefore go through the same loading, feature extraction and
training code.

Pixel units: ``patches`` are uint8 in [0, 255] or floating point in [0, 1] (RGB, channel first). Synthetic patches
learned in normalised units record ``meta["mean"]`` and ``meta["std"]`` (per channel) as
:class:`~monai_distill.data.SyntheticSet` does; :meth:`Bag.pixels` undoes that, so every consumer sees [0, 1]
units. Synthetic patches may leave [0, 1] slightly; they are not clipped.

A bag directory is ``DIR/<slide_id>.pt`` (or ``DIR/bags/<slide_id>.pt``) with an optional ``manifest.csv`` beside
the bags or one level up (the per-slide distillation writes ``OUT/bags/`` and ``OUT/manifest.csv``). With a
manifest, only rows whose ``status`` is ``done`` are read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from monai_distill.utils import atomic_path, atomic_torch_save, load_torch_file

if TYPE_CHECKING:
    from monai_distill.data import SyntheticSet

# How synthetic bags may store their patches (see Bag.compact).
BAG_STORAGE = ("float32", "float16", "uint8")

__all__ = [
    "BAG_FORMAT",
    "BAG_FORMAT_VERSION",
    "BAG_MANIFEST_COLUMNS",
    "BAG_STORAGE",
    "SOURCES",
    "Bag",
    "BagDirectory",
    "BagError",
    "bag_file_intact",
    "compact_bags",
    "load_bag",
    "save_bag",
    "write_bag_manifest",
]

logger = logging.getLogger(__name__)

BAG_FORMAT = "monai-distill-bag"
BAG_FORMAT_VERSION = 1
SOURCES = ("real", "synthetic")
# The per-slide manifest of the Histo-DD issue; extra columns (split, path, ...) are allowed and ignored.
BAG_MANIFEST_COLUMNS = ("slide_id", "label", "n_patches", "n_synthetic", "status", "seconds", "error")
DONE = "done"


class BagError(ValueError):
    """A bag or bag directory that cannot be used; the message names the file/key and what was expected."""


@dataclass
class Bag:
    """The instances of one slide.

    Attributes:
        slide_id: the slide's identifier; also the file stem in a bag directory (no path separators).
        label: slide class index (>= 0).
        patches: (N, C, H, W) uint8 [0, 255] or float [0, 1] patches (see the module doc for normalised ones).
        features: (N, F) float per-instance features (from a frozen encoder).
        coords: (N, 2) int64 level-0 ``(x, y)`` top-left corners of the patches on the slide (real bags; heatmaps).
        source: ``"real"`` or ``"synthetic"``.
        meta: JSON-able settings: tiling (``slide_path``, ``footprint``, ``level0_size``, ``mpp``, ...), distillation
            method settings, ``mean``/``std`` of normalised patches, ``encoder_key`` of stored features.
    """

    slide_id: str
    label: int
    patches: torch.Tensor | None = None
    features: torch.Tensor | None = None
    coords: torch.Tensor | None = None
    source: str = "real"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        return int(self.patches.shape[0] if self.patches is not None else self.features.shape[0])  # type: ignore[union-attr]

    @property
    def patch_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of the patches, or ``None`` for a feature-only bag."""
        return None if self.patches is None else tuple(int(s) for s in self.patches.shape[1:])  # type: ignore[return-value]

    def validate(self, where: str | None = None) -> None:
        """Check types and shapes; raise :class:`BagError` naming the bag (or file) and the key that is wrong."""
        src = where or f"bag '{self.slide_id}'"
        if not isinstance(self.slide_id, str) or not self.slide_id or any(c in self.slide_id for c in "/\\"):
            raise BagError(
                f"{src}: 'slide_id' must be a non-empty string without path separators, got {self.slide_id!r}."
            )
        self.label = _class_index(self.label, src)
        if self.source not in SOURCES:
            raise BagError(f"{src}: 'source' must be one of {SOURCES}, got {self.source!r}.")
        if self.patches is None and self.features is None:
            raise BagError(f"{src}: a bag needs 'patches' (N, C, H, W) or 'features' (N, F); both are missing.")
        n = None
        if self.patches is not None:
            p = self.patches
            if not isinstance(p, torch.Tensor) or p.ndim != 4:
                raise BagError(f"{src}: 'patches' must be a tensor (N, C, H, W), got {_describe(p)}.")
            if not (p.is_floating_point() or p.dtype == torch.uint8):
                raise BagError(f"{src}: 'patches' must be uint8 [0, 255] or float [0, 1], got {p.dtype}.")
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise BagError(f"{src}: 'patches' contain NaN or inf.")
            n = int(p.shape[0])
        if self.features is not None:
            f = self.features
            if not isinstance(f, torch.Tensor) or f.ndim != 2 or not f.is_floating_point():
                raise BagError(f"{src}: 'features' must be a float tensor (N, F), got {_describe(f)}.")
            if not bool(torch.isfinite(f).all()):
                raise BagError(f"{src}: 'features' contain NaN or inf.")
            if n is not None and int(f.shape[0]) != n:
                raise BagError(f"{src}: {n} patches but {f.shape[0]} feature rows; they must match.")
            n = int(f.shape[0])
        if n == 0:
            raise BagError(f"{src}: the bag is empty (N = 0); a slide without instances cannot be a bag.")
        if self.coords is not None:
            c = self.coords
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (n, 2) or c.is_floating_point():
                raise BagError(f"{src}: 'coords' must be an integer tensor ({n}, 2) of (x, y), got {_describe(c)}.")
        if not isinstance(self.meta, dict):
            raise BagError(f"{src}: 'meta' must be a dict, got {type(self.meta).__name__}.")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise BagError(f"{src}: 'meta' must hold JSON values only (str, number, bool, list, dict): {e}.") from e
        mean, std = self.meta.get("mean"), self.meta.get("std")
        if (mean is None) != (std is None):
            raise BagError(f"{src}: meta gives only one of 'mean' and 'std'; normalised patches need both.")

    def pixels(self) -> torch.Tensor:
        """Patches as float32 in [0, 1] units (uint8 divided by 255; normalised patches de-normalised).

        Raises:
            BagError: a feature-only bag.
        """
        if self.patches is None:
            raise BagError(f"bag '{self.slide_id}' has features only, no patches to show or encode.")
        x = self.patches.float()
        if self.patches.dtype == torch.uint8:
            return x / 255.0
        mean, std = self.meta.get("mean"), self.meta.get("std")
        if mean is not None:
            shape = (1, -1, 1, 1)
            x = x * torch.as_tensor(std, dtype=x.dtype).reshape(shape) + torch.as_tensor(mean, dtype=x.dtype).reshape(
                shape
            )
        return x

    def digest(self) -> str:
        """SHA-256 of what determines the bag's features (source, instances); a cache key for derived data."""
        h = hashlib.sha256(f"{self.slide_id}|{self.source}".encode())
        for name in ("patches", "features"):
            t = getattr(self, name)
            if t is not None:
                h.update(f"|{name}{tuple(t.shape)}{t.dtype}|".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        for key in ("mean", "std"):
            h.update(f"|{key}={self.meta.get(key)}".encode())
        return h.hexdigest()

    def compact(self, storage: str) -> Bag:
        """A copy whose patches are stored as ``storage`` (:data:`BAG_STORAGE`): ``float32`` as they are,
        ``float16`` (half the bytes, normalised units kept) or ``uint8`` (a quarter: display units [0, 1] rounded to
        1/255, as real bags are; values outside [0, 1] are clipped and ``mean``/``std`` dropped from meta).

        Raises:
            BagError: an unknown ``storage``.
        """
        if storage not in BAG_STORAGE:
            raise BagError(f"bag storage must be one of {BAG_STORAGE}, got {storage!r}.")
        if self.patches is None or (storage == "float32" and self.patches.dtype == torch.float32):
            return self
        meta = {**self.meta, "storage": storage}
        if storage == "uint8":
            patches = (self.pixels().clamp(0, 1) * 255).round().to(torch.uint8)
            meta = {k: v for k, v in meta.items() if k not in ("mean", "std")}
        else:
            patches = self.patches.to(torch.float16 if storage == "float16" else torch.float32)
        return Bag(self.slide_id, self.label, patches, self.features, self.coords, self.source, meta)

    def with_features(self, features: torch.Tensor, **meta: Any) -> Bag:
        """A feature-only copy (patches dropped to save memory), keeping label, coords, source and meta."""
        return Bag(self.slide_id, self.label, None, features, self.coords, self.source, {**self.meta, **meta})

    # ------------------------------------------------------------------ file I/O
    def state(self) -> dict[str, Any]:
        def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu().contiguous().clone()

        return {
            "format": BAG_FORMAT,
            "format_version": BAG_FORMAT_VERSION,
            "slide_id": self.slide_id,
            "label": int(self.label),
            "source": self.source,
            "patches": cpu(self.patches),
            "features": cpu(self.features),
            "coords": cpu(self.coords),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_synthetic_set(
        cls, synthetic: SyntheticSet, slide_id: str, label: int, meta: dict[str, Any] | None = None
    ) -> Bag:
        """The synthetic bag of one slide from the :class:`~monai_distill.data.SyntheticSet` distilled from it.

        The set's mean/std (its normalised units) and meta travel with the bag; the set's per-patch labels (patch
        classes) are not the slide label, which is given.
        """
        set_meta = {k: v for k, v in synthetic.meta.items() if _jsonable(v)}
        return cls(
            slide_id=slide_id,
            label=int(label),
            patches=synthetic.images.detach().float().cpu(),
            source="synthetic",
            meta={**set_meta, **(meta or {})},
        )


def save_bag(bag: Bag, path: str | os.PathLike) -> Path:
    """Write ``bag`` atomically (temporary file, then rename), so a reader never sees a partial bag."""
    bag.validate()
    path = Path(path)
    atomic_torch_save(bag.state(), path)
    return path


def load_bag(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Bag:
    """Read and validate a bag file written by :func:`save_bag`.

    Raises:
        FileNotFoundError: no such file.
        BagError: not a bag file, a newer format, a missing key, or invalid contents (the message names the file).
    """
    path = Path(path)
    state = load_torch_file(path, "bag", BagError, map_location)
    if not isinstance(state, dict) or state.get("format") != BAG_FORMAT:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise BagError(
            f"'{path}' is not a {BAG_FORMAT} file (expected a dict with format='{BAG_FORMAT}'; found {found})."
        )
    version = state.get("format_version", BAG_FORMAT_VERSION)
    if not isinstance(version, int) or version > BAG_FORMAT_VERSION:
        raise BagError(f"'{path}' has bag format {version}; this version reads up to {BAG_FORMAT_VERSION}.")
    missing = [k for k in ("slide_id", "label", "source") if k not in state]
    if missing:
        raise BagError(f"'{path}': missing keys {missing}; found {sorted(state)}.")
    bag = Bag.__new__(Bag)
    bag.slide_id, bag.label, bag.source = state["slide_id"], state["label"], state["source"]
    bag.patches, bag.features, bag.coords = state.get("patches"), state.get("features"), state.get("coords")
    bag.meta = state.get("meta") or {}
    bag.validate(where=f"'{path}'")
    return bag


def compact_bags(source: str | os.PathLike, target: str | os.PathLike, storage: str = "uint8") -> Path:
    """Copy a bag directory with every bag stored as ``storage`` (:meth:`Bag.compact`), manifest included.

    For bags written before ``--storage`` existed, or to measure what a smaller storage costs a head. Bags already in
    ``target`` are kept (a rerun finishes an interrupted copy).

    Returns:
        ``target``, a bag directory (``target/bags/<slide_id>.pt``, ``target/manifest.csv``).
    """
    source, target = Path(source), Path(target)
    folder = source / "bags" if (source / "bags").is_dir() else source
    files = sorted(folder.glob("*.pt"))
    if not files:
        raise BagError(f"no bags (*.pt) in '{folder}'.")
    (target / "bags").mkdir(parents=True, exist_ok=True)
    for f in files:
        out = target / "bags" / f.name
        if not bag_file_intact(out):
            save_bag(load_bag(f).compact(storage), out)
    if (source / "manifest.csv").is_file():
        with atomic_path(target / "manifest.csv") as tmp:
            tmp.write_bytes((source / "manifest.csv").read_bytes())
    return target


def bag_file_intact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole ``torch.save`` archive (cheap: the zip directory at its end is read, not the
    tensors); a resumed run redoes a bag whose file was truncated instead of keeping it as finished."""
    path = Path(path)
    return path.is_file() and zipfile.is_zipfile(path)


def write_bag_manifest(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Write a bag ``manifest.csv`` (atomic): the :data:`BAG_MANIFEST_COLUMNS` first, then any extra columns."""
    extra = [c for r in rows for c in r if c not in BAG_MANIFEST_COLUMNS]
    columns = list(BAG_MANIFEST_COLUMNS) + list(dict.fromkeys(extra))
    table = pd.DataFrame([{c: r.get(c, "") for c in columns} for r in rows], columns=columns)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


@dataclass(frozen=True)
class BagEntry:
    """One bag of a :class:`BagDirectory`: where it is and what the manifest says about it."""

    slide_id: str
    path: Path
    label: int | None = None


class BagDirectory(Sequence[Bag]):
    """The bags of a directory, loaded (and validated) lazily one at a time.

    Layout: ``root/<slide_id>.pt`` or ``root/bags/<slide_id>.pt``; ``manifest.csv`` beside the bags, or beside the
    ``bags`` folder. With a manifest, its ``done`` rows are the bags (in manifest order) and other rows are listed in
    :attr:`skipped`; without one, every ``*.pt`` file is a bag (sorted by name).

    Args:
        root: the directory.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        BagError: no bags, a manifest without ``slide_id``/``status`` columns, a ``done`` row without its file, or a
            duplicated slide id.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"bag directory '{root}' does not exist (expected DIR/<slide_id>.pt files).")
        self.bag_dir = root / "bags" if (root / "bags").is_dir() else root
        self.root = root
        candidates = [self.bag_dir / "manifest.csv"]
        if self.bag_dir.name == "bags":
            candidates.append(self.bag_dir.parent / "manifest.csv")
        self.manifest_path: Path | None = next((p for p in candidates if p.is_file()), None)
        self.skipped: dict[str, str] = {}
        self.entries = self._from_manifest() if self.manifest_path else self._from_files()
        if not self.entries:
            where = f"'{self.manifest_path}' (no row with status 'done')" if self.manifest_path else f"'{self.bag_dir}'"
            raise BagError(f"no bags in {where}; expected <slide_id>.pt files written by save_bag.")

    def _from_files(self) -> list[BagEntry]:
        return [BagEntry(p.stem, p) for p in sorted(self.bag_dir.glob("*.pt"))]

    def _from_manifest(self) -> list[BagEntry]:
        path = self.manifest_path
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise BagError(f"cannot parse bag manifest '{path}' as CSV: {e}") from e
        table.columns = [str(c).strip() for c in table.columns]
        missing = [c for c in ("slide_id", "status") if c not in table.columns]
        if missing:
            raise BagError(
                f"bag manifest '{path}' has no column(s) {missing}; expected {', '.join(BAG_MANIFEST_COLUMNS)}, "
                f"found {list(table.columns)}."
            )
        entries, seen = [], set()
        for i, row in table.iterrows():
            sid, status = str(row["slide_id"]).strip(), str(row["status"]).strip()
            if sid in seen:
                raise BagError(f"bag manifest '{path}': slide '{sid}' is listed twice (row {int(i) + 2}).")
            seen.add(sid)
            if status != DONE:
                self.skipped[sid] = f"status '{status}'" + (f": {row['error']}" if row.get("error") else "")
                continue
            file = self.bag_dir / f"{sid}.pt"
            if not file.is_file():
                raise BagError(f"bag manifest '{path}' says slide '{sid}' is done but '{file}' does not exist.")
            label = _int_or_none(row.get("label", ""))
            entries.append(BagEntry(sid, file, label))
        if self.skipped:
            logger.info("%s: skipping %d slide(s) not done: %s", path, len(self.skipped), self.skipped)
        return entries

    # ------------------------------------------------------------------ sequence
    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Bag:  # type: ignore[override]
        entry = self.entries[index]
        bag = load_bag(entry.path)
        if bag.slide_id != entry.slide_id:
            raise BagError(f"'{entry.path}' holds slide '{bag.slide_id}'; a bag file must be named <slide_id>.pt.")
        if entry.label is not None and entry.label != bag.label:
            raise BagError(
                f"'{entry.path}' has label {bag.label} but '{self.manifest_path}' says {entry.label} for "
                f"slide '{entry.slide_id}'."
            )
        return bag

    def __iter__(self) -> Iterator[Bag]:
        for i in range(len(self)):
            yield self[i]

    @property
    def slide_ids(self) -> list[str]:
        return [e.slide_id for e in self.entries]

    def __repr__(self) -> str:
        return f"BagDirectory('{self.bag_dir}', {len(self)} bag(s), {len(self.skipped)} skipped)"


def _class_index(label: Any, where: str) -> int:
    """``label`` as a plain int class index (numpy/torch scalars and integral floats accepted)."""
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    try:
        index = operator.index(label)
    except TypeError:
        index = -1
    if isinstance(label, bool) or index < 0:
        raise BagError(f"{where}: 'label' must be a class index (int >= 0), got {label!r}.")
    return int(index)


def _int_or_none(value: Any) -> int | None:
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return None  # text labels are checked against the bag's own label only when numeric
    return int(number) if number.is_integer() else None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
