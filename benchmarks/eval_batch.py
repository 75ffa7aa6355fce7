"""The full-data bound's batch size, chosen on the **val** split: one table row per dataset and candidate batch.

The ``standard`` preset trains the ``full`` row (the whole real train split, the bound every method is read against)
with ``eval_batch`` images per SGD step, each network tested at the epoch that scores best on val. This benchmark
trains that row once per candidate batch size and ranks the candidates by the val balanced accuracy of each
network's chosen epoch (mean over the preset's networks). Test figures are listed beside them as
the outcome; they choose nothing. Resumable: each run keeps its ``metrics.json``.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/eval_batch.py --datasets breastmnist pneumoniamnist --batches 64 256
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from trajectory_common import (
    BUNDLE,
    REPO,
    add_run_arguments,
    dims,
    kept_notes,
    machine,
    run_bundle,
    run_overrides,
    write_md,
)

OUT = REPO / "benchmarks" / "results" / "eval_batch.md"


def val_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """Mean ± std over the networks of their val balanced accuracy at the chosen epoch (in %), and that epoch."""
    per = metrics["per_model"]
    if any("val_balanced_acc" not in m for m in per):
        raise ValueError("the run selected no epoch on val (no val split?); its networks carry no val score.")
    bal = np.array([100 * m["val_balanced_acc"] for m in per])
    return {"val_bal": float(bal.mean()), "val_bal_std": float(bal.std()),
            "epoch": float(np.mean([m["best_epoch"] for m in per]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--work_dir", default=str(REPO / "runs" / "eval_batch"))
    add_run_arguments(p)
    p.set_defaults(preset="standard")
    args = p.parse_args()
    common = run_overrides(args)
    lines = [
        f"# Full-bound batch size chosen on val, preset `{args.preset}`",
        "",
        f"Machine: {machine(args.device, args.threads)}. Command: `OMP_NUM_THREADS=1 python benchmarks/eval_batch.py "
        f"--datasets {' '.join(args.datasets)} --batches {' '.join(map(str, args.batches))} --preset {args.preset}`.",
        "",
        "Each row trains the preset's `full` bound (every network at the epoch of its best val balanced accuracy) "
        "with `eval_batch` set to the row's batch. **Chosen on val**: the best mean val balanced accuracy of the "
        "chosen epochs. Test columns are the outcome, never the choice.",
        "",
        "| dataset | eval_batch | val balanced acc | mean chosen epoch | test balanced acc | test acc | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for flag in args.datasets:
        rows = []
        for batch in args.batches:
            out = Path(args.work_dir) / args.preset / flag / f"batch{batch}"
            overrides = {**common.get("preset_overrides", {}), "eval_batch": batch}
            m = run_bundle(out, f"{BUNDLE[dims(flag)]}/evaluate.json", args.threads, synthetic="full", dataset=flag,
                           **{**common, "preset_overrides": overrides})
            v = val_summary(m)
            rows.append((v["val_bal"], batch))
            lines.append(
                f"| {flag} | {batch} | {v['val_bal']:.1f} ± {v['val_bal_std']:.1f} | {v['epoch']:.0f} | "
                f"{100 * m['test_balanced_acc_mean']:.1f} ± {100 * m['test_balanced_acc_std']:.1f} | "
                f"{100 * m['test_acc_mean']:.1f} ± {100 * m['test_acc_std']:.1f} | {m['eval_seconds'] / 60:.1f} |")
            print(lines[-1], flush=True)
        best = max(rows)
        verdicts.append(f"- {flag}: val chooses `eval_batch` {best[1]} ({best[0]:.1f} mean val balanced accuracy).")
    write_md(OUT, [*lines, "", *verdicts, "", *kept_notes(OUT)])
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
