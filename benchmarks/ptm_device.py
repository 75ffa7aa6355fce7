"""PTM per device: seconds per distillation iteration and peak memory on AdrenalMNIST3D 64³ (the issue's GPU check).

One short PTM run per device through the 3D bundle (``--size 64``), each in its own process, after the expert buffer
is built in a separate step so that the seconds are distillation only. The experts are few and short (``--experts``
× ``--expert_epochs`` epochs, plain SGD) because this measures cost, not accuracy: a distillation iteration costs the
same whatever the experts learned. PTM's end step grows over the run (``max_end_epoch`` = ``--expert_epochs``), so
the mean covers short and full-length matchings alike; evaluation is one network for one epoch and is not timed.

Rows go into the committed record ``ptm_device.json``, so a machine with a GPU adds its ``cuda`` row beside the CPU
row measured elsewhere. Peak memory: process RSS on CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

Usage (repo root)::

    python benchmarks/ptm_device.py                      # cpu, and cuda when available
    python benchmarks/ptm_device.py --devices cuda       # only the GPU row (e.g. on a lent GPU machine)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from trajectory_common import BUNDLE, DATA, REPO, ResultsRecord, kept_notes, machine, run_bundle, write_md

DATASET = "adrenalmnist3d"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ipc", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--experts", type=int, default=1)
    p.add_argument("--expert_epochs", type=int, default=2, help="expert training epochs = PTM's T")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the CPU run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset_dir", default=str(DATA))
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_ptm_device"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ptm_device.md"))
    args = p.parse_args()
    work, out_md = Path(args.work_dir), Path(args.out)
    config = BUNDLE[3]
    buffers = {"flat": False, "num_experts": args.experts, "epochs": args.expert_epochs}
    opts = {"buffers": buffers, "num_iterations": args.iterations, "max_end_epoch": args.expert_epochs,
            "expert_epochs": 1, "max_start_epoch": args.expert_epochs - 1}
    common = {"dataset": DATASET, "size": args.size, "ipc": args.ipc, "preset": "quick", "seed": args.seed,
              "dataset_dir": args.dataset_dir, "method": "ptm", "method_options": opts}
    record = ResultsRecord(out_md.with_suffix(".json"))
    name = f"{DATASET}_{args.size}"
    for device in args.devices:
        out = work / device
        threads = args.threads if device == "cpu" else 1
        run_bundle(out / "buffers_build", [f"{config}/train.json", f"{config}/buffers.json"], threads,
                   metrics_name="buffers.json", device=device, buffer_dir=str(out / "buffers"), **common)
        m = run_bundle(out / "ptm", f"{config}/train.json", threads, device=device, buffer_dir=str(out / "buffers"),
                       eval_models=1, eval_epochs=1, **common)
        m["machine"] = machine(device, threads)
        record.put((name, device, args.ipc), m)
        print(device, f"{m['distill_seconds'] / max(1, m['iterations']):.2f} s/iteration",
              f"{m['peak_memory_mb']:.0f} MiB", flush=True)

    cells = record.cells()
    rows = []
    for (dataset, device, ipc), m in sorted(cells.items()):
        per_it = m["distill_seconds"] / max(1, m["iterations"])
        rows.append(f"| {dataset} | {device} | {ipc} | {m['iterations']} | {per_it:.2f} | {m['distill_seconds']:.0f} "
                    f"| {m['peak_memory_mb']:.0f} | {m['machine']} |")
    if not any(device.startswith("cuda") for _, device, _ in cells):
        rows.append(f"| {name} | cuda | {args.ipc} | – | not run: no CUDA GPU was available | | | |")
    lines = [
        f"# PTM cost per device: AdrenalMNIST3D {args.size}³, ipc {args.ipc}",
        "",
        f"Command: `python benchmarks/ptm_device.py` (rows may come from different machines; the record "
        f"`{record.path.name}` holds them). PTM with the 3D bundle's quick preset (width 16, syn_steps 10), "
        f"{args.iterations} iterations with the end step growing to T = {args.expert_epochs}, {args.experts} "
        f"plain-SGD expert(s) of {args.expert_epochs} epochs built beforehand (not timed). Seconds per iteration are "
        "distillation wall-clock over all iterations (set-up included); peak memory is the run's process RSS on CPU "
        "(data, network, synthetic set and unrolled graph) and `torch.cuda.max_memory_allocated` on a GPU.",
        "",
        "| data | device | ipc | iterations | s / iteration | distill s | peak memory MiB | machine |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *kept_notes(out_md),
    ]
    write_md(out_md, lines)


if __name__ == "__main__":
    main()
