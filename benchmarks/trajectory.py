"""Trajectory-matching table: random, herding, MTT, FTD, DATM, HoP-TM, PTM and full train on real MedMNIST.

BreastMNIST and PneumoniaMNIST (2D) and AdrenalMNIST3D (3D) at ipc 2 and 10, mean ± std test accuracy over
``--eval_models`` (≥ 5) evaluation networks. Every trajectory method uses the same expert buffer (flat GSAM experts
of the dataset's ``configs/`` entry, one directory per dataset) and the same iteration budget (``num_iterations`` of
the preset's config, or ``--iterations``). Writes ``benchmarks/results/trajectory.md`` and one PNG per dataset
(accuracy against ipc). Resumable: finished runs are skipped, unfinished ones continue from their checkpoint.

Every finished cell also goes into ``benchmarks/results/trajectory.json`` (committed, unlike ``runs/``), and the
table is written from that record: a later session (or a second process, on the other core) may run one column
with ``--datasets ...`` and the other columns stay in the table. Notes between ``<!-- notes -->`` markers survive.

Usage (repo root)::

    python benchmarks/trajectory.py                       # the full table, quick preset (hours on a 2-core CPU)
    python benchmarks/trajectory.py --datasets breastmnist --ipcs 2 --iterations 10 --width 8 \\
        --eval_epochs 20 --work_dir runs/bench_traj_check --out runs/bench_traj_check/trajectory.md   # a check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import trajectory_common as bench
from trajectory_common import (
    BUNDLE,
    REPO,
    dims,
    fmt,
    kept_notes,
    machine,
    run_bundle,
    write_md,
)

from monai_distill.plotting import line_plot

TRAJECTORY = ("mtt", "ftd", "datm", "hoptm", "ptm")
DATASETS = ("breastmnist", "pneumoniamnist", "adrenalmnist3d")
METHODS = ("random", "herding", *TRAJECTORY)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), help="the datasets to run; the table also "
                   "keeps every other dataset found in the record")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--ipcs", nargs="+", type=int, default=[2, 10])
    bench.add_run_arguments(p)
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_trajectory"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "trajectory.md"))
    p.add_argument("--record", default=None, help="default: --out with .json")
    p.add_argument("--skip_full", action="store_true", help="do not run the full-train row (e.g. in a second "
                   "process that shares the record)")
    p.add_argument("--table_only", action="store_true", help="write the table from the runs on disk, run nothing")
    args = p.parse_args()
    work, out_md = Path(args.work_dir), Path(args.out)
    start = time.perf_counter()
    common = bench.run_overrides(args)
    record = bench.ResultsRecord(Path(args.record) if args.record else out_md.with_suffix(".json"))
    results = record.cells()

    def options(method: str) -> dict:
        # The same (flat) experts for every trajectory method.
        return bench.flat_expert_options(args) if method in TRAJECTORY else {}

    def remember(dataset: str, method: str, ipc: int, metrics: dict) -> None:
        results.update(record.put((dataset, method, ipc), metrics))

    def write() -> None:
        # Rows and columns: what this invocation runs plus everything the record holds.
        known = {d for d, _, _ in results} | set(args.datasets)
        datasets = [d for d in DATASETS if d in known] + sorted(known - set(DATASETS))
        known = {m for _, m, _ in results if m != "full"} | set(args.methods)
        methods = [m for m in METHODS if m in known] + sorted(known - set(METHODS))
        ipcs = sorted({i for _, m, i in results if m != "full"} | set(args.ipcs))
        cols = [(d, i) for d in datasets for i in ipcs]
        lines = [
            "# Trajectory matching on MedMNIST (real data): test accuracy %, mean ± std over evaluation networks",
            "",
            f"Preset `{args.preset}`{f' (width {args.width})' if args.width else ''}, seed {args.seed}, "
            f"{args.eval_models} evaluation networks per cell, machine: {machine(args.device, args.threads)}. "
            "Command: `python benchmarks/trajectory.py` (cells may come from several invocations; the record "
            f"`{record.path.name}` holds them)."
            + ("" if args.table_only else f" Wall time of the last invocation {(time.perf_counter() - start) / 60:.1f}"
               " min (runs already on disk are not re-timed)."),
            "",
            "Every trajectory method uses the same flat (GSAM) expert buffer per dataset and the iteration budget of "
            "the dataset's `configs/` entry" + (f" overridden to {args.iterations}" if args.iterations else "")
            + "; FTD therefore differs from MTT only by its EMA of the images. `full` trains on the whole train "
            "split (`eval_epochs_full` epochs).",
            "",
            "| method | " + " | ".join(f"{d} ipc {i}" for d, i in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for method in [*methods, "full"]:
            cells = []
            for d, i in cols:
                m = results.get((d, method, i if method != "full" else 0))
                cells.append(fmt(m) if m else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Balanced accuracy % (mean per-class recall; BreastMNIST and PneumoniaMNIST are imbalanced, so "
                  "plain accuracy rewards predicting the majority class):", "",
                  "| method | " + " | ".join(f"{d} ipc {i}" for d, i in cols) + " |", "|---|" + "---|" * len(cols)]
        for method in [*methods, "full"]:
            cells = []
            for d, i in cols:
                m = results.get((d, method, i if method != "full" else 0))
                cells.append(fmt(m, "balanced_acc") if m else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Distillation seconds (experts excluded after the first run that builds them):", "",
                  "| method | " + " | ".join(f"{d} ipc {i}" for d, i in cols) + " |", "|---|" + "---|" * len(cols)]
        for method in methods:
            cells = [f"{results[(d, method, i)]['distill_seconds']:.0f}" if (d, method, i) in results else "–"
                     for d, i in cols]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "## Target: PTM at ipc 2 at least as good as every other method (seed 000's central claim)", ""]
        for d in datasets:
            ptm = results.get((d, "ptm", 2))
            others = {m: results[(d, m, 2)] for m in methods if m != "ptm" and (d, m, 2) in results}
            if not ptm or not others:
                lines.append(f"- {d}: not run yet.")
                continue
            best = max(others, key=lambda m: others[m]["test_acc_mean"])
            gap = 100 * (ptm["test_acc_mean"] - others[best]["test_acc_mean"])
            verdict = "met" if gap >= 0 else f"missed by {-gap:.1f} points"
            lines.append(f"- {d}: PTM {fmt(ptm)} vs best other `{best}` {fmt(others[best])}: {verdict}.")
        lines += ["", *kept_notes(out_md)]
        write_md(out_md, lines)
        for d in datasets:
            series = {m: (ipcs, [100 * results[(d, m, i)]["test_acc_mean"] if (d, m, i) in results
                                 else float("nan") for i in ipcs]) for m in methods}
            line_plot(series, out_md.with_name(f"{out_md.stem}_{d}.png"), title=f"{d}: test accuracy",
                      xlabel="ipc", ylabel="accuracy %", markers=True)

    for d in args.datasets:
        config = BUNDLE[dims(d)]
        buffer_dir = work / "buffers"
        for ipc in args.ipcs:
            for method in args.methods:
                out = work / d / f"{method}_ipc{ipc}"
                if args.table_only:
                    if (out / "metrics.json").is_file():
                        remember(d, method, ipc, json.loads((out / "metrics.json").read_text()))
                    continue
                remember(d, method, ipc, run_bundle(
                    out, f"{config}/train.json", args.threads, dataset=d, method=method, ipc=ipc,
                    buffer_dir=buffer_dir, method_options=options(method), **common))
                write()
                print(d, method, ipc, fmt(results[(d, method, ipc)]), flush=True)
        if args.skip_full:
            continue
        if args.table_only:
            if (work / d / "full" / "metrics.json").is_file():
                remember(d, "full", 0, json.loads((work / d / "full" / "metrics.json").read_text()))
            continue
        remember(d, "full", 0, run_bundle(work / d / "full", f"{config}/evaluate.json", args.threads,
                                          synthetic="full", dataset=d, **common))
        write()
    write()


if __name__ == "__main__":
    main()
