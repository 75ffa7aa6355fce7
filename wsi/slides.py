"""The slide list of a cohort run: a directory of slide files or a CSV ``slide_path,label[,split][,slide_id]``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .reader import SLIDE_SUFFIXES

__all__ = ["CSV_OPTIONAL_COLUMNS", "CSV_REQUIRED_COLUMNS", "SlideRecord", "check_slide_files", "list_slides"]

CSV_REQUIRED_COLUMNS = ("slide_path", "label")
CSV_OPTIONAL_COLUMNS = ("split", "slide_id")


@dataclass(frozen=True)
class SlideRecord:
    """One input slide.

    Attributes:
        slide_id: unique name used for output files.
        path: absolute path of the slide file (it may not exist; the run records that as a failure).
        label: slide label (``None`` for directory input).
        split: optional split name.
    """

    slide_id: str
    path: Path
    label: Any = None
    split: str | None = None


def _from_csv(csv_path: Path) -> list[SlideRecord]:
    try:
        # labels stay as written (strings); numeric labels are converted by whoever consumes them
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse slide list '{csv_path}' as CSV: {e}") from e
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in CSV_REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"slide list '{csv_path}' has no column(s) {missing}; expected columns "
            f"slide_path,label[,split][,slide_id], found {list(table.columns)}."
        )
    records = []
    for i, row in table.iterrows():
        raw = str(row["slide_path"]).strip()
        if not raw:
            raise ValueError(f"slide list '{csv_path}', row {int(i) + 2}: empty slide_path.")
        path = Path(raw).expanduser()
        if not path.is_absolute():  # relative paths are relative to the CSV, so a cohort folder can be moved
            path = csv_path.parent / path
        path = path.absolute()
        slide_id = str(row.get("slide_id", "") or "").strip() or path.stem
        label = str(row["label"]).strip()
        split = str(row.get("split", "") or "").strip() or None
        records.append(SlideRecord(slide_id=slide_id, path=path, label=label if label else None, split=split))
    return records


def _from_dir(directory: Path) -> list[SlideRecord]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
    return [SlideRecord(slide_id=p.stem, path=p.absolute()) for p in files]


def list_slides(slides: str | os.PathLike | list[SlideRecord]) -> list[SlideRecord]:
    """Read the slide list.

    Args:
        slides: a directory (every file with a slide suffix, sorted by name: ``.svs``, ``.tif(f)``, ``.ndpi``,
            ``.mrxs``, ...), a CSV file with columns ``slide_path,label`` and optional ``split``, ``slide_id`` (relative
            paths are relative to the CSV), or a list of records.

    Returns:
        Records in input order.

    Raises:
        FileNotFoundError: ``slides`` does not exist.
        ValueError: a CSV without the required columns, an empty list, or two slides with the same id.
    """
    if isinstance(slides, list):
        records = list(slides)
        source = "the given list"
    else:
        path = Path(slides).expanduser()
        source = f"'{path}'"
        if path.is_dir():
            records = _from_dir(path)
        elif path.is_file():
            if path.suffix.lower() != ".csv":
                raise ValueError(f"--slides '{path}' must be a directory of slides or a .csv slide list.")
            records = _from_csv(path)
        else:
            raise FileNotFoundError(f"--slides '{path}' does not exist (expected a directory of slides or a CSV).")
    if not records:
        raise ValueError(f"no slides in {source} (suffixes read from a directory: {', '.join(SLIDE_SUFFIXES)}).")
    seen: dict[str, Path] = {}
    for r in records:
        if r.slide_id in seen:
            raise ValueError(
                f"two slides in {source} have the id '{r.slide_id}' ('{seen[r.slide_id]}' and '{r.path}'); ids are "
                "file stems unless a CSV gives a slide_id column: rename one or add that column."
            )
        seen[r.slide_id] = r.path
    return records


def check_slide_files(records: list[SlideRecord], slides: str | os.PathLike | list[SlideRecord], option: str = "slides"
                      ) -> None:
    """Fail when no slide file of the list exists (a wrong folder, or CSV paths relative to another place).

    One missing slide among others is not an error here: it fails alone and is recorded in the manifest.

    Raises:
        FileNotFoundError: none of ``records`` exists; the message names the list and the first path looked for.
    """
    if not records or any(r.path.is_file() for r in records):
        return
    source = "the given list" if isinstance(slides, list) else f"'{slides}'"
    hint = (" (relative slide_path values are relative to the CSV's folder)"
            if not isinstance(slides, list) and Path(slides).suffix.lower() == ".csv" else "")
    raise FileNotFoundError(
        f"--{option} {source}: none of its {len(records)} slide file(s) exists, e.g. '{records[0].path}'{hint}."
    )
