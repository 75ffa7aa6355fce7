"""Per-slide status records and the cohort ``manifest.csv`` merged from them.

Every processed slide leaves ``status/<slide_id>.json`` (written atomically). Records make a rerun skip finished
slides and let rank 0 merge the manifest of a sharded run without talking to the other ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from monai_distill.utils import atomic_path, atomic_write_json

from .slides import SlideRecord

__all__ = [
    "DONE",
    "FAILED",
    "MANIFEST_COLUMNS",
    "NO_TISSUE",
    "PENDING",
    "read_status",
    "status_path",
    "write_manifest",
    "write_status",
]

DONE, FAILED, NO_TISSUE, PENDING = "done", "failed", "no_tissue", "pending"
MANIFEST_COLUMNS = ("slide_id", "path", "label", "split", "n_patches", "status", "seconds", "error")


def status_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    return Path(output_dir) / "status" / f"{slide_id}.json"


def write_status(output_dir: str | os.PathLike, row: dict[str, Any], fingerprint: str) -> Path:
    """Write one slide's manifest row plus the tiling fingerprint (atomic)."""
    path = status_path(output_dir, row["slide_id"])
    atomic_write_json({**row, "fingerprint": fingerprint}, path)
    return path


def read_status(output_dir: str | os.PathLike, slide_id: str) -> dict[str, Any] | None:
    """The slide's status record, or ``None`` when absent or unreadable (then the slide is simply redone)."""
    path = status_path(output_dir, slide_id)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_manifest(output_dir: str | os.PathLike, records: Sequence[SlideRecord]) -> pd.DataFrame:
    """Merge the status records of ``records`` (input order, one row each) into ``manifest.csv`` (atomic).

    Slides without a record (not reached yet) are listed as ``pending``.
    """
    rows = []
    for rec in records:
        st = read_status(output_dir, rec.slide_id)
        if st is None:
            st = {"slide_id": rec.slide_id, "path": str(rec.path), "label": rec.label, "split": rec.split,
                  "n_patches": 0, "status": PENDING, "seconds": 0.0, "error": ""}
        rows.append({c: st.get(c) for c in MANIFEST_COLUMNS})
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    with atomic_path(Path(output_dir) / "manifest.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table
