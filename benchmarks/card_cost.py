"""What the trust card costs: card seconds against the distillation's wall time at the ``quick`` preset.

Runs the distillation bundle (card on, its defaults) per method on one dataset and reads ``metrics.json``: the
card's own seconds (building it and scoring the evaluation networks it reuses) against the distillation seconds and
against the whole run (distillation + evaluation). Resumable: finished runs are read back.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/card_cost.py
    OMP_NUM_THREADS=1 python benchmarks/card_cost.py --methods dm ptm --ipc 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import trajectory_common as bench

TARGET = 0.10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--methods", nargs="+", default=["random", "herding", "dc", "dm", "mtt", "ptm"])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset_dir", default=str(bench.DATA))
    p.add_argument("--work_dir", default="runs/bench_card_cost")
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results" / "card_cost.md"))
    args = p.parse_args()
    start = time.perf_counter()
    rows = []
    for method in args.methods:
        out = Path(args.work_dir) / args.dataset / f"{method}_ipc{args.ipc}"
        m = bench.run_bundle(out, f"{bench.BUNDLE[bench.dims(args.dataset)]}/train.json", args.threads,
                             dataset=args.dataset, dataset_dir=args.dataset_dir, method=method, ipc=args.ipc,
                             seed=args.seed, device=args.device, preset="quick",
                             buffer_dir=str(Path(args.work_dir) / "buffers"))
        distil, total = m["distill_seconds"], m["distill_seconds"] + m.get("eval_seconds", 0.0)
        card_file = out / "card.json"
        parts = json.loads(card_file.read_text()).get("seconds", {}) if card_file.is_file() else {}
        # The real-data networks come from <buffer_dir>/card_networks after the first card of this data and seed.
        reused = "reused" if parts and parts.get("subset_networks", 1.0) < 0.5 else "trained"
        rows.append((method, distil, total, m.get("card_seconds"), reused))
        print(method, rows[-1], flush=True)
    lines = [
        f"# Trust card cost at `quick` ({args.dataset}, ipc {args.ipc}, seed {args.seed})", "",
        f"Machine: {bench.machine(args.device, args.threads)}. Command: `OMP_NUM_THREADS=1 python "
        f"benchmarks/card_cost.py` ({(time.perf_counter() - start) / 60:.0f} min; runs already on disk are read "
        "back). Card seconds: the card's own work (real-data network unless an expert is reused, calibration "
        "reference, equal-size real subset networks, nearness, attacks), not the evaluation networks it reuses. "
        f"Target: card <= {100 * TARGET:.0f} % of the distillation's wall time.", "",
        "| method | real-data networks | distillation s | distillation + evaluation s | card s | card / distillation "
        "| card / whole run | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, distil, total, card, reused in rows:
        if card is None:
            lines.append(f"| {method} | – | {distil:.1f} | {total:.1f} | – | – | – | no card |")
            continue
        ratio = card / max(distil, 1e-9)
        lines.append(f"| {method} | {reused} | {distil:.1f} | {total:.1f} | {card:.1f} | {100 * ratio:.0f} % | "
                     f"{100 * card / total:.0f} % | {'met' if ratio <= TARGET else 'missed'} |")
    lines += ["", "Methods run in the order listed with one `buffer_dir`, so the first card trains the real-data "
              "networks (full-data target, calibration reference, real subset) and later cards of the same data "
              "and seed reuse them (`reused`). Coresets distil in seconds, so no card that trains anything stays "
              "under a tenth of their time."]
    bench.write_md(Path(args.out), lines)


if __name__ == "__main__":
    main()
