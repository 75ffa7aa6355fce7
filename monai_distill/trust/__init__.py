"""Trust cards: evidence on how reproducible a synthetic set is, how near it sits to real patients' images, and
how much a network trained on it leaks about membership of the source data.

A card is evidence, not a guarantee. It does not bound privacy (no differential-privacy accounting), its attacks
are two of many (a stronger attack may succeed where these fail), and nearness is measured in two metrics against
the train split only.
"""

from .card import CARD_FILES, CardOptions, TrustCard, card_markdown, write_card
from .membership import AttackResult, attack, per_example_loss, tpr_at_fpr
from .nearness import NEAR_COPY_FLOOR, NearestNeighbours, near_copy_threshold, nearest_neighbours, ssim_pairs
from .provenance import data_fingerprint, file_digest, package_versions, settings_hash

__all__ = [
    "CARD_FILES",
    "NEAR_COPY_FLOOR",
    "AttackResult",
    "CardOptions",
    "NearestNeighbours",
    "TrustCard",
    "attack",
    "card_markdown",
    "data_fingerprint",
    "file_digest",
    "near_copy_threshold",
    "nearest_neighbours",
    "package_versions",
    "per_example_loss",
    "settings_hash",
    "ssim_pairs",
    "tpr_at_fpr",
    "write_card",
]
