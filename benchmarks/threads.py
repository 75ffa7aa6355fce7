"""Thread defaults on a shared machine: the README's main command quiet, beside two CPU-bound processes, and with
torch's old default of one thread per core beside them; and a 3D ``random`` ipc-10 quick run.

Each case is the user's command through ``python -m monai.bundle run`` with ``$OMP_NUM_THREADS`` unset (so the
bundle's automatic choice applies unless the case sets ``--num_threads``), a fresh expert buffer directory (the
experts are part of the command's cost) and its own output directory. The "busy" processes are plain Python loops,
started ``--warmup`` seconds before the run so that the load average sees them, as it would see any other job.
Results go to ``benchmarks/results/threads.json`` (one entry per case, reused on a rerun) and ``threads.md``.

    python benchmarks/threads.py                 # every case not in the record yet
    python benchmarks/threads.py --cases quiet   # one case again (its entry is replaced)
    python benchmarks/threads.py --table_only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trajectory_common import DATA, REPO, kept_notes, write_md

from monai_distill.runtime import available_cores
from monai_distill.utils import atomic_write_json

RESULTS = REPO / "benchmarks" / "results"
RECORD = RESULTS / "threads.json"
TABLE = RESULTS / "threads.md"
MAIN = "bundles/medmnist2d_distillation/configs/train.json"
TRAIN_3D = "bundles/organmnist3d_distillation/configs/train.json"
BUSY = "while True:\n    pass\n"

# case -> (what it is, config, overrides, number of busy processes beside it)
CASES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "quiet": ("README main command, quiet machine, automatic threads", MAIN, {}, 0),
    "loaded": ("README main command beside 2 busy processes, automatic threads", MAIN, {}, 2),
    "loaded_default": ("README main command beside 2 busy processes, one thread per core (torch's default)", MAIN,
                       {"num_threads": 0}, 2),
    "random3d": ("3D random ipc 10, AdrenalMNIST3D 28³, quick, quiet machine, automatic threads", TRAIN_3D,
                 {"dataset": "adrenalmnist3d", "method": "random", "ipc": 10}, 0),
}


def _run_case(name: str, work: Path, limit: float, warmup: float) -> dict[str, Any]:
    what, config, overrides, n_busy = CASES[name]
    out = work / name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    overrides = dict(overrides)
    if overrides.get("num_threads") == 0:  # torch's default: as many threads as cores
        overrides["num_threads"] = available_cores()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / config), "--output_dir", str(out),
           "--buffer_dir", str(out / "buffers"), "--dataset_dir", str(DATA), "--progress", "True"]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONWARNINGS"] = "ignore"
    if not n_busy:  # a quiet case waits for the load of earlier work (a test suite, the last case) to decay
        deadline = time.monotonic() + 600
        while os.getloadavg()[0] > 0.3 and time.monotonic() < deadline:
            time.sleep(10)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n_busy)]
    try:
        if busy:
            time.sleep(warmup)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        with open(out / "run.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
        wall = time.perf_counter() - start
    finally:
        for p in busy:
            p.kill()
            p.wait()
    text = (out / "run.log").read_text()
    threads = re.search(r"torch threads: (\d+) \((.*)\)$", text, flags=re.MULTILINE)
    entry: dict[str, Any] = {"what": what, "command": " ".join(cmd[1:]), "busy_processes": n_busy,
                             "load_at_start": round(load, 2), "wall_seconds": round(wall, 1),
                             "threads": int(threads.group(1)) if threads else None,
                             "threads_reason": threads.group(2) if threads else None,
                             "finished": rc == 0, "stopped_at_limit": rc is None}
    if rc not in (0, None):
        raise RuntimeError(f"case {name} failed ({rc}), see {out / 'run.log'}")
    if rc == 0:
        m = json.loads((out / "metrics.json").read_text())
        entry.update(test_acc=m["test_acc_mean"], test_balanced_acc=m["test_balanced_acc_mean"],
                     test_auc=m["test_auc_mean"], machine=m["machine"])
    return entry


def _table(record: dict[str, Any]) -> list[str]:
    lines = ["# Thread defaults on a shared 2-core machine", "",
             "Produced by `python benchmarks/threads.py` (record: `threads.json`). Each case is the user's command "
             "through `python -m monai.bundle run` with `$OMP_NUM_THREADS` unset, a fresh expert buffer and output "
             "directory; busy processes are Python loops started before the run.", "",
             f"Machine (first case's metrics): {next((e['machine'] for e in record.values() if 'machine' in e), '')}"
             f", {available_cores()} cores available. A quiet case waits until the one-minute load average is below "
             "0.3; `load at start` is that average when the command started.", "",
             "| case | busy processes | load at start | torch threads (why) | wall s | test acc % | balanced acc % |",
             "|---|---|---|---|---|---|---|"]
    for name in CASES:
        e = record.get(name)
        if e is None:
            lines.append(f"| {CASES[name][0]} | | | not run | | | |")
            continue
        wall = f"> {e['wall_seconds']:.0f} (stopped)" if e["stopped_at_limit"] else f"{e['wall_seconds']:.0f}"
        acc = (f"{100 * e['test_acc']:.1f}", f"{100 * e['test_balanced_acc']:.1f}") if e["finished"] else ("", "")
        lines.append(f"| {e['what']} | {e['busy_processes']} | {e['load_at_start']:.2f} | "
                     f"{e['threads']} ({e['threads_reason']}) | {wall} | {acc[0]} | {acc[1]} |")
    quiet, loaded = record.get("quiet"), record.get("loaded")
    lines.append("")
    if quiet and loaded and loaded["finished"]:
        ratio = loaded["wall_seconds"] / quiet["wall_seconds"]
        verdict = "met" if ratio <= 2 else "missed"
        lines.append(f"Target: main command beside two CPU-bound processes <= 2x its quiet wall time: "
                     f"{ratio:.2f}x, **{verdict}**.")
    r3 = record.get("random3d")
    if r3 and r3["finished"]:
        verdict = "met" if r3["wall_seconds"] <= 300 else "missed"
        lines.append(f"Target: 3D random ipc-10 quick run <= 5 min: {r3['wall_seconds'] / 60:.1f} min, **{verdict}**.")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=None, help="default: those not in the record")
    p.add_argument("--work", default=str(REPO / "runs" / "bench_threads"))
    p.add_argument("--warmup", type=float, default=60.0, help="seconds the busy processes run before the command")
    p.add_argument("--limit_factor", type=float, default=3.0,
                   help="a loaded case is stopped after this many times the quiet case's wall time")
    p.add_argument("--table_only", action="store_true")
    args = p.parse_args()
    record = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    if not args.table_only:
        todo = args.cases or [c for c in CASES if c not in record]
        for name in todo:
            quiet = record.get("quiet", {}).get("wall_seconds")
            limit = args.limit_factor * quiet if (quiet and CASES[name][3]) else 3600.0
            print(f"[threads] {name}: {CASES[name][0]}", flush=True)
            record[name] = _run_case(name, Path(args.work), limit, args.warmup)
            print(f"[threads] {name}: {record[name]['wall_seconds']} s, {record[name]['threads']} thread(s)",
                  flush=True)
            atomic_write_json(record, RECORD)
    write_md(TABLE, [*_table(record), "", *kept_notes(TABLE)])
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
