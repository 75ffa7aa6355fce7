"""PTM ablation (seed 000, Sec. 5.2): PTM with each of its parts switched off, same buffer, budget and seed.

Variants: ``full``; ``no-progressive`` (MTT's random start window and fixed segment instead of matching from θ^D_0
with a growing end step); ``no-overlap`` (no L_overlap; retraining stays); ``no-retrain`` (no dynamic retraining;
L_overlap stays); ``no-overlap-retrain``; ``no-L_c`` (no cross-entropy term in the image loss); with ``--variants``
also ``T=4``/``T=2`` (PTM's last end step, which the seeds do not give, instead of the configs' 10), ``L_c=1``,
``grow=0.5`` and ``beta2=1`` (other weights and schedules the seeds leave open). Writes
``benchmarks/results/ptm_ablation.md`` and ``ptm_ablation.png``, from the committed record ``ptm_ablation.json``
(every finished cell; a later run of some variants keeps the others in the table). Resumable; by default it reuses
the expert buffers of ``benchmarks/trajectory.py`` (same ``--buffer_dir``), so the numbers line up with that table.

Usage (repo root)::

    python benchmarks/ptm_ablation.py
    python benchmarks/ptm_ablation.py --datasets breastmnist --ipcs 2 --iterations 10 --width 8 --eval_epochs 20 \\
        --work_dir runs/bench_abl_check --buffer_dir runs/bench_abl_check/buffers --out runs/bench_abl_check/a.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import trajectory_common as bench
from trajectory_common import BUNDLE, REPO, dims, fmt, kept_notes, machine, run_bundle, write_md

from monai_distill.plotting import line_plot

VARIANTS = {
    "full": {},
    "no-progressive": {"progressive": False},
    "no-overlap": {"overlap": False},
    "no-retrain": {"retrain": False},
    "no-overlap-retrain": {"overlap": False, "retrain": False},
    "no-L_c": {"ce_weight": 0.0},
    # Sensitivity to T, the last end step (the seeds do not give it): not an ablation, run with --variants.
    "T=4": {"max_end_epoch": 4},
    "T=2": {"max_end_epoch": 2},
    # Eq. 5 read literally: L_c at weight 1 beside β1·L_match (the package's default ce_weight is 0.1).
    "L_c=1": {"ce_weight": 1.0},
    # The end step reaches T at half the budget (default: at the end), so half the iterations match all of T.
    "grow=0.5": {"grow_fraction": 0.5},
    # Overlap weight β2 (the seeds do not give it; default 0.1).
    "beta2=1": {"beta2": 1.0},
}
ABLATIONS = ["full", "no-progressive", "no-overlap", "no-retrain", "no-overlap-retrain", "no-L_c"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--ipcs", nargs="+", type=int, default=[2, 10])
    p.add_argument("--variants", nargs="+", default=ABLATIONS, choices=list(VARIANTS))
    bench.add_run_arguments(p)
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_ptm_ablation"))
    p.add_argument("--buffer_dir", default=str(REPO / "runs" / "bench_trajectory" / "buffers"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ptm_ablation.md"))
    p.add_argument("--record", default=None, help="default: --out with .json")
    p.add_argument("--table_only", action="store_true", help="write the table from the record, run nothing")
    args = p.parse_args()
    work, out_md = Path(args.work_dir), Path(args.out)
    start = time.perf_counter()
    common = {**bench.run_overrides(args), "buffer_dir": args.buffer_dir}
    record = bench.ResultsRecord(Path(args.record) if args.record else out_md.with_suffix(".json"))
    results = record.cells()

    def write() -> None:
        # Rows and columns: what this invocation runs plus everything the record holds.
        datasets = list(dict.fromkeys([*(d for d, _, _ in sorted(results)), *args.datasets]))
        ipcs = sorted({i for _, _, i in results} | set(args.ipcs))
        cols = [(d, i) for d in datasets for i in ipcs if any((d, v, i) in results for v in VARIANTS)
                or (d in args.datasets and i in args.ipcs)]
        variants = [v for v in VARIANTS if v in args.variants or any(k[1] == v for k in results)]
        lines = [
            "# PTM ablation: test accuracy %, mean ± std over evaluation networks",
            "",
            f"Preset `{args.preset}`{f' (width {args.width})' if args.width else ''}, seed {args.seed}, "
            f"{args.eval_models} evaluation networks per cell, same flat expert buffer and iteration budget"
            + (f" ({args.iterations} iterations)" if args.iterations else " (the configs' num_iterations)")
            + f" for every variant, machine: {machine(args.device, args.threads)}. Command: "
            "`python benchmarks/ptm_ablation.py` (cells may come from several invocations; the record "
            f"`{record.path.name}` holds them)."
            + ("" if args.table_only else f" Wall time of the last invocation {(time.perf_counter() - start) / 60:.1f}"
               " min (runs already on disk are not re-timed)."),
            "",
            "| variant | " + " | ".join(f"{d} ipc {i}" for d, i in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for v in variants:
            cells = [fmt(results[(d, v, i)]) if (d, v, i) in results else "–" for d, i in cols]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines += ["", f"![ablation]({out_md.stem}.png)", "", *kept_notes(out_md)]
        write_md(out_md, lines)
        xs = list(range(len(cols)))
        series = {v: (xs, [100 * results[(d, v, i)]["test_acc_mean"] if (d, v, i) in results else float("nan")
                           for d, i in cols]) for v in variants}
        line_plot(series, out_md.with_suffix(".png"), markers=True, ylabel="test accuracy %",
                  title="PTM ablation: test accuracy per variant", xticklabels=[f"{d} ipc {i}" for d, i in cols])

    if args.table_only:
        write()
        return
    for d, ipc in [(d, i) for d in args.datasets for i in args.ipcs]:
        for v in args.variants:
            opts = bench.flat_expert_options(args, **VARIANTS[v])
            name = v.replace("-", "_").replace("=", "")
            results.update(record.put((d, v, ipc), run_bundle(
                work / d / f"ptm_{name}_ipc{ipc}", f"{BUNDLE[dims(d)]}/train.json", args.threads, dataset=d,
                method="ptm", ipc=ipc, method_options=opts, **common)))
            write()
            print(d, ipc, v, fmt(results[(d, v, ipc)]), flush=True)


if __name__ == "__main__":
    main()
