"""Trust cards of synthetic bag cohorts: per slide, how near the synthetic patches sit to that slide's real patches.

Each slide's card (``OUT/cards/<slide_id>.json``) holds the pixel nearness of its synthetic patches to its own real
patches (display units [0, 1], RMS per value; SSIM to the nearest) with the near-copy threshold set by the slide's
real patches (:func:`~monai_distill.trust.nearness.pixel_nearness`). The cohort card (``OUT/card.json``,
``OUT/card.md``) gathers them with the settings hash, package versions and the slide files' identity (name and
size; slides are too large to hash on every run). Membership inference is not measured for bags: a slide-level
attack needs many held-out slides and MIL heads trained per target, which a cohort run does not have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils import atomic_path, atomic_write_json
from .nearness import pixel_nearness
from .provenance import package_versions, settings_hash

__all__ = ["BAG_CARD_DIR", "slide_card", "slide_card_path", "write_cohort_card"]

BAG_CARD_DIR = "cards"


def slide_card_path(output_dir: str | Path, slide_id: str) -> Path:
    """Where the card of ``slide_id``'s synthetic bag is written."""
    return Path(output_dir) / BAG_CARD_DIR / f"{slide_id}.json"


def slide_card(slide_id: str, synthetic: torch.Tensor, real: torch.Tensor, quantile: float = 0.01,
               n_reference: int = 200, seed: int = 0) -> dict[str, Any]:
    """The card of one synthetic bag against its slide's real patches (both (N, C, H, W) in [0, 1] units)."""
    near = pixel_nearness(synthetic, real, neighbours=1, quantile=quantile, n_reference=n_reference, seed=seed)
    return {"slide_id": slide_id, "n_synthetic": int(synthetic.shape[0]), "n_real": int(real.shape[0]),
            "units": "display [0, 1], RMS per value", **near.summary(quantile)}


def _slide_identity(paths: Sequence[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for p in paths:
        path = Path(p)
        out[path.name] = path.stat().st_size if path.is_file() else None
    return out


def write_cohort_card(output_dir: str | Path, settings: Mapping[str, Any], slide_paths: Sequence[str],
                      provenance: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Gather ``OUT/cards/*.json`` into ``OUT/card.json`` and ``OUT/card.md``; ``None`` when no slide has a card."""
    out = Path(output_dir)
    slides = [json.loads(p.read_text()) for p in sorted((out / BAG_CARD_DIR).glob("*.json"))]
    if not slides:
        return None
    near = [s["n_near_copies"] for s in slides]
    card = {
        "hash": settings_hash({"settings": dict(settings), "slides": _slide_identity(slide_paths)}),
        "reproducibility": {"settings": dict(settings), "slides": _slide_identity(slide_paths),
                            "packages": package_versions(), **dict(provenance or {})},
        "n_slides": len(slides),
        "n_synthetic": int(sum(s["n_synthetic"] for s in slides)),
        "n_near_copies": int(sum(near)),
        "slides_with_near_copies": [s["slide_id"] for s in slides if s["n_near_copies"]],
        "median_min_pixel_rms": float(np.median([s["synthetic"]["pixel_rms"]["min"] for s in slides])),
        "median_real_to_real_pixel_rms": float(np.median([s["real_to_real"]["pixel_rms"]["median"] for s in slides])),
        "membership": {"skipped": "not measured for bags (needs many held-out slides and a MIL head per target)"},
        "slides": slides,
    }
    atomic_write_json(card, out / "card.json")
    lines = [
        f"# Trust card: synthetic bags of {len(slides)} slide(s)", "",
        f"Settings hash `{card['hash']}` (distillation settings and slide files by name and size).", "",
        f"**{card['n_near_copies']} of {card['n_synthetic']} synthetic patches are near-copies of a real patch of "
        f"their slide** (in {len(card['slides_with_near_copies'])} slide(s)). A patch is a near-copy when it is "
        "closer to one of its slide's real patches than 99 % of those real patches are to their nearest other one "
        "(RMS per value, display units).", "",
        "| slide | synthetic / real patches | near-copies | pixel RMS to nearest real (min / median) | "
        "real to real (median) | SSIM to nearest (max) |",
        "|---|---|---|---|---|---|",
    ]
    for s in slides:
        lines.append(f"| {s['slide_id']} | {s['n_synthetic']} / {s['n_real']} | {s['n_near_copies']} | "
                     f"{s['synthetic']['pixel_rms']['min']:.3f} / {s['synthetic']['pixel_rms']['median']:.3f} | "
                     f"{s['real_to_real']['pixel_rms']['median']:.3f} | {s['synthetic']['ssim']['max']:.2f} |")
    lines += ["", "Membership inference: not measured for bags (a slide-level attack needs many held-out slides and a "
              "MIL head per target). This card is evidence, not a guarantee.", ""]
    with atomic_path(out / "card.md") as tmp:
        tmp.write_text("\n".join(lines))
    return card
