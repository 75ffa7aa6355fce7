"""Command line of the ``wsi`` package (``fire``).

    python -m wsi cohort OUT --n_slides 12 --size "(4096, 3072)" --seed 0   # real-tissue test cohort
    python -m wsi centres OUT --n_slides 18                                 # two centres: other tissue and stain

Tiling itself runs through the ``wsi_tiling`` bundle (``python -m monai.bundle run --config_file ...``).
"""

from __future__ import annotations

from typing import Any

import fire
import pandas as pd

from .cohort import build_centres, build_cohort


def _show(result: Any) -> Any:
    return result.to_string(index=False) if isinstance(result, pd.DataFrame) else result


def main() -> None:
    fire.Fire({"cohort": build_cohort, "centres": build_centres}, serialize=_show)


if __name__ == "__main__":
    main()
