"""Run bundles exactly as users do: ``python -m monai.bundle run --config_file ... --key value``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Tiny evaluation settings keep the suite fast; the quick preset itself runs in benchmarks/. The trust card has its
# own tests (tests/monai_distill/trust), so the bundle contracts run without it.
FAST = {"eval_models": 1, "eval_epochs": 10,
        "preset_overrides": "{'width': 8, 'embed_epochs': 1, 'forgetting_epochs': 1}", "progress": False,
        "card": False}
TIMING_KEYS = {"distill_seconds", "eval_seconds", "card_seconds", "peak_memory_mb", "machine"}


def bundle_cmd(config: str | list[str], **overrides) -> list[str]:
    if isinstance(config, list):
        config = "[" + ",".join(f"'{c}'" for c in config) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def run_bundle(config: str | list[str], check: bool = True, **overrides) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(bundle_cmd(config, **overrides), cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"bundle failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def numbers(metrics_path: Path) -> dict:
    """metrics.json without its timings (which differ run to run)."""
    m = json.loads(Path(metrics_path).read_text())
    return {k: v for k, v in m.items() if k not in TIMING_KEYS}
