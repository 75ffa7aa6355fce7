"""Shared by the trajectory benchmarks: run a bundle in a subprocess (resumable), format results, name the machine.

Every run is ``python -m monai.bundle run`` with the distillation bundle of its dataset, exactly the user's command.
A run whose ``metrics.json`` exists is skipped; an unfinished one continues from its checkpoint (``--resume true``),
so an interrupted benchmark picks up where it stopped. Each run is its own process, so ``peak_memory_mb`` (peak
resident set size on CPU, ``torch.cuda.max_memory_allocated`` on a GPU) belongs to that run alone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist"
BUNDLE = {2: "bundles/medmnist2d_distillation/configs", 3: "bundles/organmnist3d_distillation/configs"}


def dims(flag: str) -> int:
    return 3 if flag.endswith("3d") else 2


def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    runs = f"{threads} torch threads per run"
    return f"{platform.system()} {cpu}, {os.cpu_count()} CPUs ({runs}){gpu}, torch {torch.__version__}"


def _arg(v: Any) -> str:
    # monai.bundle parses CLI values with Python literals: dicts as "{'a': True}".
    return repr(v) if isinstance(v, (dict, list)) else str(v)


def run_bundle(
    out: Path, config: str | list[str], threads: int, metrics_name: str = "metrics.json", **overrides: Any
) -> dict[str, Any]:
    """Run ``config`` (one file or a list merged in order) with ``overrides`` into ``out`` unless it finished
    before; return the JSON it writes (``metrics.json``, or ``buffers.json`` for the buffers stage)."""
    metrics = out / metrics_name
    if not metrics.is_file():
        out.mkdir(parents=True, exist_ok=True)
        files = [config] if isinstance(config, str) else list(config)
        config_arg = "[" + ",".join(f"'{REPO / c}'" for c in files) + "]" if len(files) > 1 else str(REPO / files[0])
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg,
               "--output_dir", str(out), "--progress", "False"]
        if (out / "checkpoint.pt").is_file():
            cmd += ["--resume", "true"]
        for k, v in overrides.items():
            cmd += [f"--{k}", _arg(v)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONWARNINGS": "ignore"}
        with open(out / "run.log", "a") as fh:
            proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"run failed ({proc.returncode}), see {out / 'run.log'}: {' '.join(cmd)}")
    return json.loads(metrics.read_text())


def fmt(m: dict[str, Any], key: str = "acc") -> str:
    return f"{100 * m[f'test_{key}_mean']:.1f} ± {100 * m[f'test_{key}_std']:.1f}"


def write_md(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
