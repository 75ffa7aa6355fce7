"""What a synthetic set was made from and how: settings, seeds, versions, device and a fingerprint of the data.

The card's ``hash`` is a digest of the *settings* only (the run's config, which holds method, options, seeds,
preset and networks; the data fingerprint; the expert buffer's identity): rerunning with the same settings on the
same data gives the same hash whatever the machine or the wall time, and changing any setting changes it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["PACKAGES", "data_fingerprint", "file_digest", "package_versions", "settings_hash"]

PACKAGES = ("monai-distill", "monai", "torch", "numpy", "scikit-learn", "medmnist", "openslide-python")


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (cached per path, size and modification time), ``None`` if it is no file."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


def data_fingerprint(splits: Iterable[Any]) -> dict[str, Any]:
    """Source files with their digests and the size and class counts of each split (:class:`RealDataset` s)."""
    files: dict[str, str | None] = {}
    sizes: dict[str, dict[str, Any]] = {}
    for ds in splits:
        if ds is None:
            continue
        if ds.source:
            files[Path(ds.source).name] = file_digest(ds.source)
        sizes[ds.split] = {"n_images": len(ds), "class_counts": ds.class_counts() if not ds.is_multilabel else None}
    return {"files": files, "splits": sizes}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (those installed), plus Python's."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out.setdefault("torch", torch.__version__)
    return out


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A 16-hex digest of ``settings`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
