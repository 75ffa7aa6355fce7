"""Coreset table: random / herding / forgetting at several ipc and the full-train upper bound.

Every run goes through the distillation bundles (``monai.bundle.run`` in-process, the same code path as
``python -m monai.bundle run``). Finished runs are kept under ``--work_dir`` and skipped on a rerun, so an
interrupted benchmark resumes where it stopped.

Usage (repo root)::

    python benchmarks/coresets.py                      # the full table, quick preset
    python benchmarks/coresets.py --datasets breastmnist --ipcs 1 10 --methods random
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from monai.bundle import run
from trajectory_common import BUNDLE, REPO, fmt, kept_notes
from trajectory_common import dims as _dims


def _run_once(out: Path, config: str, table_only: bool = False, **overrides) -> dict | None:
    metrics = out / "metrics.json"
    if not metrics.is_file():
        if table_only:
            return None
        run(config_file=str(REPO / config), output_dir=str(out), progress=False, **overrides)
    return json.loads(metrics.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist", "adrenalmnist3d"])
    p.add_argument("--methods", nargs="+", default=["random", "herding", "forgetting"])
    p.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--preset", default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "medmnist"))
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_coresets"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "coresets.md"))
    p.add_argument("--table_only", action="store_true", help="write the table from finished runs; others 'pending'")
    args = p.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = {"preset": args.preset, "seed": args.seed, "device": device, "dataset_dir": args.dataset_dir}
    rows: list[str] = []
    start = time.perf_counter()

    notes = kept_notes(Path(args.out))

    def write() -> None:
        machine = f"{platform.system()} {platform.machine()}, {torch.get_num_threads()} torch threads, device {device}"
        head = [
            "# Coresets on MedMNIST (real data), evaluation protocol mean ± std over the evaluation networks",
            "",
            f"Preset `{args.preset}` (see `monai_distill/presets.py`), seed {args.seed}, machine: {machine}, "
            f"torch {torch.__version__}. Command: `python benchmarks/coresets.py`. Wall time so far "
            f"{(time.perf_counter() - start) / 60:.1f} min (runs already on disk are not re-timed).",
            "",
            *notes,
            "Accuracy, balanced accuracy and macro AUC in %. `full` trains on the whole train split "
            "(upper bound; `eval_epochs_full` epochs). Columns `distill s` / `eval s` are seconds.",
            "",
            "| dataset | method | ipc | accuracy | balanced acc | AUC | K | epochs | distill s | eval s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(head + rows) + "\n")

    for flag in args.datasets:
        cfg = BUNDLE[_dims(flag)]
        for method in args.methods:
            for ipc in args.ipcs:
                out = Path(args.work_dir) / flag / f"{method}_ipc{ipc}"
                m = _run_once(out, f"{cfg}/train.json", args.table_only, dataset=flag, method=method, ipc=ipc, **common)
                if m is None:
                    rows.append(f"| {flag} | {method} | {ipc} | pending | | | | | | |")
                    continue
                rows.append(
                    f"| {flag} | {method} | {ipc} | {fmt(m, 'acc')} | {fmt(m, 'balanced_acc')} | {fmt(m, 'auc')} "
                    f"| {m['n_eval_models']} | {m['eval_epochs']} | {m['distill_seconds']:.1f} "
                    f"| {m['eval_seconds']:.0f} |"
                )
                write()
                print(rows[-1], flush=True)
        out = Path(args.work_dir) / flag / "full"
        m = _run_once(out, f"{cfg}/evaluate.json", args.table_only, synthetic="full", dataset=flag, **common)
        if m is None:
            rows.append(f"| {flag} | full | all | pending | | | | | | |")
            write()
            continue
        rows.append(
            f"| {flag} | full | all ({m['n_train_images']}) | {fmt(m, 'acc')} | {fmt(m, 'balanced_acc')} "
            f"| {fmt(m, 'auc')} | {m['n_eval_models']} | {m['eval_epochs']} | – | {m['eval_seconds']:.0f} |"
        )
        write()
        print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
