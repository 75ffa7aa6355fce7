"""Shared by the trajectory benchmarks: run a bundle in a subprocess (resumable), format results, name the machine.

Every run is ``python -m monai.bundle run`` with the distillation bundle of its dataset, exactly the user's command.
A run whose ``metrics.json`` exists is skipped; an unfinished one continues from its checkpoint (``--resume true``),
so an interrupted benchmark picks up where it stopped. Each run is its own process, so ``peak_memory_mb`` (peak
resident set size on CPU, ``torch.cuda.max_memory_allocated`` on a GPU) belongs to that run alone.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from monai_distill.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist"
BUNDLE = {2: "bundles/medmnist2d_distillation/configs", 3: "bundles/organmnist3d_distillation/configs"}
NOTES_OPEN, NOTES_CLOSE = "<!-- notes -->", "<!-- /notes -->"
# What a table cell needs of a run's metrics.json; the record keeps only these, so it stays small enough to commit.
RECORD_KEYS = ("test_acc_mean", "test_acc_std", "test_balanced_acc_mean", "test_balanced_acc_std", "test_auc_mean",
               "test_auc_std", "test_acc_prior_mean", "test_acc_prior_std", "distill_seconds", "learned_lr",
               "eval_seconds", "peak_memory_mb", "n_eval_models", "eval_epochs", "iterations", "device", "machine")


def dims(flag: str) -> int:
    return 3 if flag.endswith("3d") else 2


def machine(device: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    runs = f"{threads} torch threads per run"
    return f"{platform.system()} {cpu}, {os.cpu_count()} CPUs ({runs}){gpu}, torch {torch.__version__}"


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options every trajectory benchmark shares: preset, budget, evaluation and where it runs."""
    p.add_argument("--preset", default="quick")
    p.add_argument("--iterations", type=int, default=None, help="default: the config's num_iterations")
    p.add_argument("--eval_models", type=int, default=5)
    p.add_argument("--eval_epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--width", type=int, default=None, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--dataset_dir", default=str(DATA))


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Bundle overrides from :func:`add_run_arguments`'s options (the unset ones keep the preset's values)."""
    common = {"preset": args.preset, "seed": args.seed, "device": args.device, "dataset_dir": args.dataset_dir,
              "eval_models": args.eval_models}
    if args.eval_epochs:
        common["eval_epochs"] = args.eval_epochs
    if args.width:
        common["preset_overrides"] = {"width": args.width}
    return common


def flat_expert_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """``method_options`` of a trajectory run: the shared flat (GSAM) experts and ``--iterations`` if given."""
    opts = {"buffers": {"flat": True}, **extra}
    if args.iterations:
        opts["num_iterations"] = args.iterations
    return opts


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
        # Progress on: run.log is not a terminal, so it gets a line every 10 % of each long step (with its ETA)
        # instead of silence until the step ends (a 3D full bound ran an hour with nothing in its log).
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg,
               "--output_dir", str(out), "--progress", "True"]
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


def retire(out: Path) -> Path | None:
    """Move a finished or partial run folder aside (``<name>.replacedN``) so that the next run starts afresh.

    :func:`run_bundle` reuses a folder that holds its metrics; a ``--rerun`` (after a settings change) must not.
    The old folder is kept, not deleted: it is the evidence of the cell it replaces.
    """
    if not out.exists():
        return None
    n = 1
    while out.with_name(f"{out.name}.replaced{n}").exists():
        n += 1
    target = out.with_name(f"{out.name}.replaced{n}")
    out.rename(target)
    return target


def fmt(m: dict[str, Any], key: str = "acc") -> str:
    return f"{100 * m[f'test_{key}_mean']:.1f} ± {100 * m[f'test_{key}_std']:.1f}"


def write_md(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def kept_notes(path: Path) -> list[str]:
    """Hand-written notes between ``<!-- notes -->`` markers of an existing table survive a rewrite."""
    if not path.exists():
        return []
    text = path.read_text()
    start, end = text.find(NOTES_OPEN), text.find(NOTES_CLOSE)
    if start < 0 or end < start:
        return []
    return [text[start : end + len(NOTES_CLOSE)], ""]


@contextmanager
def _locked_json(path: Path, write: bool) -> Iterator[dict[str, Any]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            record = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"benchmark record '{path}' is not valid JSON ({e}); restore it from git.") from e
        if not isinstance(record, dict):
            raise ValueError(f"benchmark record '{path}' must hold a JSON object of cells, "
                             f"found {type(record).__name__}.")
        yield record
        if write:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


# (dataset, row, ipc) or (dataset, row, ipc, seed): the parts after the row are integers.
Cell = tuple


class ResultsRecord:
    """The committed record of a table's finished cells, ``"dataset|row|ipc"`` -> the run's headline metrics.

    Run directories are not committed (``runs/`` is ignored), so without the record a later session that runs one
    column would lose every other column of the table. Several benchmark processes may share one record: each
    update re-reads it under an exclusive lock, merges its own cell and writes it atomically.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @staticmethod
    def _cells(record: dict[str, Any]) -> dict[Cell, dict[str, Any]]:
        return {(d, row, *map(int, rest)): v for (d, row, *rest), v in ((k.split("|"), v) for k, v in record.items())}

    def cells(self) -> dict[Cell, dict[str, Any]]:
        with _locked_json(self.path, write=False) as record:
            return self._cells(record)

    def put(self, cell: Cell, metrics: dict[str, Any], keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None
            ) -> dict[Cell, dict[str, Any]]:
        """Store one finished cell (``keep(metrics)``, default :func:`record_entry`); return every cell (other
        processes may have added some meanwhile)."""
        with _locked_json(self.path, write=True) as record:
            record["|".join(map(str, cell))] = (keep or record_entry)(metrics)
            return self._cells(record)


def record_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in RECORD_KEYS if k in metrics}
