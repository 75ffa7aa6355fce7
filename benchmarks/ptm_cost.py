"""PTM's cost claim (seed 000, Sec. 5.1.2): balanced accuracy against distillation wall-clock time and peak memory
for PTM, FTD and MTT, in one invocation on the same machine, with the same expert buffer and iteration budget.

The experts are built first (``buffers.json``) so that no run pays for them; each method then runs in its own process
with ``--eval_every`` evaluations (``metrics.json["eval_history"]``: balanced accuracy at distillation seconds,
evaluations excluded). The target is the balanced accuracy of the ``herding`` coreset of the same seed and preset (a
bar below the best coreset would measure nothing). Reported: the final balanced accuracy, the first time each method
reaches herding's, seconds per iteration and the process's peak memory (peak RSS on CPU, max allocated on CUDA).
Writes ``benchmarks/results/ptm_cost.md`` and ``ptm_cost.png``, and the record ``ptm_cost.json`` they are drawn
from (``--table_only`` writes them again from it, running nothing). Resumable like the other benchmarks.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/ptm_cost.py                 # breastmnist ipc 2, standard preset
    python benchmarks/ptm_cost.py --iterations 12 --eval_every 4 --width 8 --eval_epochs 20 \\
        --work_dir runs/bench_cost_check --buffer_dir runs/bench_cost_check/buffers \\
        --out runs/bench_cost_check/ptm_cost.md                                     # a check
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import trajectory_common as bench
from trajectory_common import BUNDLE, REPO, dims, fmt, machine, run_bundle, write_md

from monai_distill.plotting import line_plot
from monai_distill.utils import atomic_path

METHODS = ("ptm", "ftd", "mtt")


KEY = "test_balanced_acc_mean"


def first_at(history: list[dict], target: float, field: str = "distill_seconds") -> float | int | None:
    """``field`` (distillation seconds, or ``"iteration"``) of the first evaluation at or above ``target``.

    ``None`` if no evaluation reached it, or for a record written before the field was kept.
    """
    return next((e.get(field) for e in history if e[KEY] >= target - 1e-12), None)


# What the record keeps of each run's metrics.json (enough to write the table and draw the figure again).
RECORD_KEYS = (KEY, "test_balanced_acc_std", "distill_seconds", "iterations", "peak_memory_mb")


def _kept(m: dict) -> dict:
    kept = {k: m[k] for k in RECORD_KEYS if k in m}
    if "eval_history" in m:
        kept["eval_history"] = [{"iteration": e.get("iteration"), "distill_seconds": e["distill_seconds"], KEY: e[KEY]}
                                for e in m["eval_history"]]
    return kept


def _resolution_note(results: dict, target: float, eval_every: int) -> list[str]:
    """A caveat when methods reach ``target`` at their first evaluation after the start: the evaluation grid then
    bounds their times from above, and the ratio of two such times is only the ratio of their per-iteration costs."""
    early = [m for m, r in results.items()
             if len(r["eval_history"]) > 1 and first_at(r["eval_history"], target) == r["eval_history"][1][
                 "distill_seconds"]]
    if not early:
        return []
    if eval_every == 1:  # no finer grid exists: one update was enough
        return [f"- Resolution: {', '.join(f'`{m}`' for m in early)} reached the target after a single update "
                "(evaluated after every iteration, the finest grid); its time is set-up plus one iteration."]
    return [f"- Resolution: {', '.join(f'`{m}`' for m in early)} reached the target at the first evaluation after "
            f"the start (iteration {eval_every}), so each reached it somewhere within its first {eval_every} "
            "iterations; their times are upper bounds, and a ratio between two of them is the ratio of their "
            "seconds per iteration, not of their times to the target. A finer `--eval_every` resolves it."]


def run_minutes(folders: list[Path]) -> float:
    """Wall-clock minutes the runs in ``folders`` took, from their ``status.json`` (a resumed call runs nothing)."""
    total = 0.0
    for folder in folders:
        status = json.loads((folder / "status.json").read_text())
        if status.get("started") and status.get("ended"):
            total += (datetime.fromisoformat(status["ended"])
                      - datetime.fromisoformat(status["started"])).total_seconds()
    return total / 60


def write_results(record: dict, out_md: Path) -> None:
    """``out_md`` and its PNG from a record (:func:`main` writes one beside ``out_md`` after the runs)."""
    cfg, herding, results = record["settings"], record["herding"], record["results"]
    target = herding[KEY]
    ftd = results["ftd"]
    ftd_reach = first_at(ftd["eval_history"], target)
    ftd_time = ftd_reach if ftd_reach is not None else ftd["distill_seconds"]
    rows = []
    for method, m in results.items():
        reach = first_at(m["eval_history"], target)
        per_it = m["distill_seconds"] / max(1, m["iterations"])
        ratio = f"{reach / ftd_time:.2f}" if reach is not None else "never"
        its = first_at(m["eval_history"], target, "iteration")
        rows.append(f"| {method} | {fmt(m, 'balanced_acc')} | {m['distill_seconds']:.0f} | {per_it:.2f} | "
                    f"{'–' if reach is None else f'{reach:.1f}'} | {'–' if its is None else its} | {ratio} | "
                    f"{m['peak_memory_mb']:.0f} |")
    ptm = results["ptm"]
    reach = first_at(ptm["eval_history"], target)
    time_ok = reach is not None and reach <= ftd_time / 6
    mem_ok = ptm["peak_memory_mb"] <= ftd["peak_memory_mb"]
    width = f" (width {cfg['width']})" if cfg.get("width") else ""
    lines = [
        f"# PTM cost: accuracy over distillation time and peak memory ({cfg['dataset']}, ipc {cfg['ipc']})",
        "",
        f"Preset `{cfg['preset']}`{width}, "
        f"seed {cfg['seed']}, {cfg['eval_models']} evaluation networks per point, evaluation every "
        f"{cfg['eval_every']} iterations, same flat expert buffer and iteration budget for the three methods, device "
        f"`{cfg['device']}`, machine: {cfg['machine']}. "
        f"Command: `{cfg.get('command', 'python benchmarks/ptm_cost.py')}` (this table and "
        f"figure: `--table_only`, from the record `{out_md.with_suffix('.json').name}`). " + (
            f"The runs took {cfg['run_minutes']:.1f} min of wall-clock (their `status.json`; a finished run is read "
            "back, an interrupted one resumes)." if "run_minutes" in cfg else
            f"Wall time of the call that wrote the record {cfg['wall_minutes']:.1f} min (runs finished before it are "
            "read back, an interrupted run resumes).")
        + " Seconds are distillation wall-clock (set-up included, evaluations "
        "excluded); peak memory is the run's process peak (RSS on CPU: it includes the data and the evaluation "
        "networks, identical for the three).",
        "",
        f"Target: herding's balanced accuracy with the same seed and preset, {fmt(herding, 'balanced_acc')} %. "
        "FTD's time is its time to reach it" + ("" if ftd_reach is not None else " (FTD never did: its whole run)")
        + ".",
        "",
        "| method | final balanced accuracy % | distill s | s / iteration | s to reach herding's balanced accuracy | "
        "iterations to reach it | that / FTD's time | peak memory MiB |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Targets",
        "",
        f"- PTM reaches herding's balanced accuracy ({100 * target:.1f} %) in at most 1/6 of FTD's time (seed 000's "
        "claim): " + ("**met**" if time_ok else "**missed**")
        + (f" ({reach:.1f} s vs FTD's {ftd_time:.1f} s, ratio {reach / ftd_time:.2f})."
           if reach is not None else " (PTM never reached it within the budget)."),
        f"- PTM's peak memory at or below FTD's: {'**met**' if mem_ok else '**missed**'} "
        f"({ptm['peak_memory_mb']:.0f} vs "
        f"{ftd['peak_memory_mb']:.0f} MiB).",
        *_resolution_note(results, target, cfg["eval_every"]),
        "",
        f"![accuracy over time]({out_md.stem}.png)",
    ]
    write_md(out_md, lines)
    series = {m: ([e["distill_seconds"] for e in r["eval_history"]], [100 * e[KEY] for e in r["eval_history"]])
              for m, r in results.items()}
    series["herding (target)"] = ([0, max(r["distill_seconds"] for r in results.values())], [100 * target] * 2)
    line_plot(series, out_md.with_suffix(".png"),
              title=f"{cfg['dataset']} ipc {cfg['ipc']}: balanced accuracy over time",
              xlabel="distillation seconds", ylabel="balanced accuracy %", markers=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--ipc", type=int, default=2)
    p.add_argument("--eval_every", type=int, default=20)
    bench.add_run_arguments(p)
    p.set_defaults(preset="standard")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_ptm_cost"))
    p.add_argument("--buffer_dir", default=str(REPO / "runs" / "bench_trajectory" / "buffers"),
                   help="shared with benchmarks/trajectory.py by default, so the experts are the same")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ptm_cost.md"))
    p.add_argument("--record", default=None, help="default: --out with .json")
    p.add_argument("--table_only", action="store_true",
                   help="write the table and the figure from the record, run nothing")
    args = p.parse_args()
    work, out_md = Path(args.work_dir), Path(args.out)
    record_path = Path(args.record) if args.record else out_md.with_suffix(".json")
    if args.table_only:
        if not record_path.is_file():
            raise SystemExit(f"no record '{record_path}': run the benchmark once (it writes the record) first.")
        write_results(json.loads(record_path.read_text()), out_md)
        return
    config = BUNDLE[dims(args.dataset)]
    start = time.perf_counter()
    common = {**bench.run_overrides(args), "dataset": args.dataset, "ipc": args.ipc, "buffer_dir": args.buffer_dir,
              "method_options": bench.flat_expert_options(args)}
    run_bundle(work / "buffers_build", [f"{config}/train.json", f"{config}/buffers.json"], args.threads,
               method="ptm", metrics_name="buffers.json", **common)
    herding = run_bundle(work / "herding", f"{config}/train.json", args.threads, method="herding",
                         **{k: v for k, v in common.items() if k != "method_options"})
    results = {}
    for method in METHODS:
        results[method] = run_bundle(work / method, f"{config}/train.json", args.threads, method=method,
                                     eval_every=args.eval_every, **common)
        print(method, fmt(results[method], "balanced_acc"), f"{results[method]['distill_seconds']:.0f}s", flush=True)
    settings = {"dataset": args.dataset, "ipc": args.ipc, "eval_every": args.eval_every, "preset": args.preset,
                "width": args.width, "seed": args.seed, "eval_models": args.eval_models, "device": args.device,
                "machine": machine(args.device, args.threads),
                "command": "OMP_NUM_THREADS=1 python " + " ".join(map(shlex.quote, sys.argv)),
                "wall_minutes": (time.perf_counter() - start) / 60,
                "run_minutes": run_minutes([work / "buffers_build", work / "herding", *(work / m for m in METHODS)])}
    record = {"settings": settings, "herding": _kept(herding), "results": {m: _kept(r) for m, r in results.items()}}
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    write_results(record, out_md)


if __name__ == "__main__":
    main()
