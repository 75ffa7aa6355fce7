"""Which class does a set's network lean to? Per-class recall on the val split of networks trained on each set.

Balanced accuracy far below AUC (PneumoniaMNIST: MTT ipc 10 68.2 % at AUC 93.1) means the networks rank well but
put their threshold in the wrong place. This trains ``--models`` evaluation networks on each set with the protocol
(``standard`` preset, the set's learned lr) and reports, on the **val** split only, each class's recall, the mean
predicted probability of the last class and the median logit margin (last class minus first). Nothing is chosen
from it; it explains a table cell.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/class_recall.py --dataset pneumoniamnist \\
        --sets mtt=runs/bench_trajectory/standard/pneumoniamnist/mtt_ipc10/seed0 \\
               dm=runs/bench_trajectory/standard/pneumoniamnist/dm_ipc10/seed0
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch
import trajectory_common as bench

from monai_distill.data import SyntheticSet, load_dataset
from monai_distill.evaluation import evaluate_synthetic, predict
from monai_distill.presets import get_preset
from monai_distill.runtime import configure_threads


def lean(syn: SyntheticSet, val, preset, models: int, seed: int) -> dict:
    """Per-class recall (mean over ``models`` networks), mean p(last class) and median logit margin on ``val``."""
    rows: list[tuple[list[float], float, float]] = []

    def on_model(_: int, net: torch.nn.Module) -> None:
        p = predict(net, val.images, torch.device("cpu"))
        pred = p.argmax(1)
        recall = [float((pred[val.labels == c] == c).float().mean()) for c in range(p.shape[1])]
        margin = torch.log(p[:, -1].clamp_min(1e-12)) - torch.log(p[:, 0].clamp_min(1e-12))
        rows.append((recall, float(p[:, -1].mean()), float(margin.median())))

    res = evaluate_synthetic(syn, val, "convnet", preset, seed, torch.device("cpu"), num_models=models,
                             progress=False, on_model=on_model)
    k = len(rows[0][0])
    return {"recall": [sum(r[0][c] for r in rows) / len(rows) for c in range(k)],
            "p_last": sum(r[1] for r in rows) / len(rows), "margin": sum(r[2] for r in rows) / len(rows),
            "balanced_acc": sum(m["balanced_acc"] for m in res.per_model) / len(res.per_model)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--sets", nargs="+", required=True, help="NAME=DIR of a run holding synthetic.pt")
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset_dir", default=str(bench.DATA))
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results" / "class_recall.md"))
    args = p.parse_args()
    configure_threads(1)
    start = time.perf_counter()
    val = load_dataset(args.dataset, split="val", dataset_dir=args.dataset_dir, size=28)
    preset = get_preset("standard", val.spatial_dims)
    names = val.class_names or [str(c) for c in range(val.num_classes)]
    rows = []
    for item in args.sets:
        name, _, folder = item.partition("=")
        path = Path(folder) / "synthetic.pt"
        if not path.is_file():
            raise SystemExit(f"--sets {item}: no synthetic set at '{path}'.")
        r = lean(SyntheticSet.load(path), val, preset, args.models, args.seed)
        rows.append(f"| {name} | {' | '.join(f'{100 * v:.1f}' for v in r['recall'])} | {100 * r['balanced_acc']:.1f} "
                    f"| {r['p_last']:.2f} | {r['margin']:.2f} |")
        print(rows[-1], flush=True)
    out = Path(args.out)
    default_out = p.get_default("out")
    out_arg = "" if args.out == default_out else f" --out {shlex.quote(args.out)}"
    bench.write_md(out, [
        f"# Class lean of networks trained on distilled sets ({args.dataset}, val split)", "",
        f"Machine: {bench.machine('cpu', 1)}. Command: `OMP_NUM_THREADS=1 python benchmarks/class_recall.py "
        f"--dataset {args.dataset}{out_arg} --sets {' '.join(map(shlex.quote, args.sets))}` "
        f"({args.models} networks per set, preset `standard`, "
        f"evaluation seed {args.seed}; {(time.perf_counter() - start) / 60:.0f} min). Val split: "
        f"{', '.join(f'{n} {c}' for n, c in zip(names, val.class_counts()))} images. Margin: median over val images "
        f"of log p({names[-1]}) - log p({names[0]}).", "",
        f"| set | {' | '.join(f'recall {n}' for n in names)} | balanced acc | mean p({names[-1]}) | margin |",
        "|---" * (len(names) + 4) + "|", *rows, "", *bench.kept_notes(out)])


if __name__ == "__main__":
    main()
