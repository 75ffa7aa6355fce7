"""PTM ablation (seed 000, Sec. 5.2): PTM with each of its parts switched off, same buffer, budget and seed.

Variants: ``full``; ``no-progressive`` (MTT's random start window and fixed segment instead of matching from θ^D_0
with a growing end step); ``no-overlap`` (no L_overlap; retraining stays); ``no-retrain`` (no dynamic retraining;
L_overlap stays); ``no-overlap-retrain``; ``no-L_c`` (no cross-entropy term in the image loss); with ``--variants``
also ``T=4``/``T=2`` (PTM's last end step, which the seeds do not give, instead of the configs' 10). Writes
``benchmarks/results/ptm_ablation.md`` and ``ptm_ablation.png``. Resumable; by default it reuses the expert
buffers of ``benchmarks/trajectory.py`` (same ``--buffer_dir``), so the numbers line up with that table.

Usage (repo root)::

    python benchmarks/ptm_ablation.py
    python benchmarks/ptm_ablation.py --datasets breastmnist --ipcs 2 --iterations 10 --width 8 --eval_epochs 20 \\
        --work_dir runs/bench_abl_check --buffer_dir runs/bench_abl_check/buffers --out runs/bench_abl_check/a.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from trajectory_common import BUNDLE, DATA, REPO, dims, fmt, machine, run_bundle, write_md

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
}
ABLATIONS = ["full", "no-progressive", "no-overlap", "no-retrain", "no-overlap-retrain", "no-L_c"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--ipcs", nargs="+", type=int, default=[2, 10])
    p.add_argument("--variants", nargs="+", default=ABLATIONS, choices=list(VARIANTS))
    p.add_argument("--preset", default="quick")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--eval_models", type=int, default=5)
    p.add_argument("--eval_epochs", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dataset_dir", default=str(DATA))
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_ptm_ablation"))
    p.add_argument("--buffer_dir", default=str(REPO / "runs" / "bench_trajectory" / "buffers"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ptm_ablation.md"))
    args = p.parse_args()
    work, out_md = Path(args.work_dir), Path(args.out)
    start = time.perf_counter()
    common = {"preset": args.preset, "seed": args.seed, "device": args.device, "dataset_dir": args.dataset_dir,
              "eval_models": args.eval_models, "buffer_dir": args.buffer_dir}
    if args.eval_epochs:
        common["eval_epochs"] = args.eval_epochs
    if args.width:
        common["preset_overrides"] = {"width": args.width}
    cols = [(d, i) for d in args.datasets for i in args.ipcs]
    results: dict[tuple[str, str, int], dict] = {}

    def write() -> None:
        lines = [
            "# PTM ablation: test accuracy %, mean ± std over evaluation networks",
            "",
            f"Preset `{args.preset}`{f' (width {args.width})' if args.width else ''}, seed {args.seed}, "
            f"{args.eval_models} evaluation networks per cell, same flat expert buffer and iteration budget"
            + (f" ({args.iterations} iterations)" if args.iterations else " (the configs' num_iterations)")
            + f" for every variant, machine: {machine(args.device, args.threads)}. Command: "
            f"`python benchmarks/ptm_ablation.py`. Wall time of this invocation "
            f"{(time.perf_counter() - start) / 60:.1f} min (runs already on disk are not re-timed).",
            "",
            "| variant | " + " | ".join(f"{d} ipc {i}" for d, i in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for v in args.variants:
            cells = [fmt(results[(d, v, i)]) if (d, v, i) in results else "–" for d, i in cols]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines += ["", f"![ablation]({out_md.stem}.png)"]
        write_md(out_md, lines)
        xs = list(range(len(cols)))
        series = {v: (xs, [100 * results[(d, v, i)]["test_acc_mean"] if (d, v, i) in results else float("nan")
                           for d, i in cols]) for v in args.variants}
        line_plot(series, out_md.with_suffix(".png"), markers=True, ylabel="accuracy %",
                  title="PTM ablation; x: " + ", ".join(f"{k}={d} ipc {i}" for k, (d, i) in enumerate(cols)))

    for d, ipc in cols:
        for v in args.variants:
            opts = {"buffers": {"flat": True}, **VARIANTS[v]}
            if args.iterations:
                opts["num_iterations"] = args.iterations
            name = v.replace("-", "_").replace("=", "")
            results[(d, v, ipc)] = run_bundle(work / d / f"ptm_{name}_ipc{ipc}", f"{BUNDLE[dims(d)]}/train.json",
                                              args.threads, dataset=d, method="ptm", ipc=ipc, method_options=opts,
                                              **common)
            write()
            print(d, ipc, v, fmt(results[(d, v, ipc)]), flush=True)


if __name__ == "__main__":
    main()
