"""Per-slide synthetic bags: seconds per slide, synthetic patches per slide, storage against the real patches.

Runs (or reuses) the MIL benchmark's cohort, tiling, real bags and per-slide Histo-DD bags (``benchmarks/mil.py
--no_training``: the same ``--out`` directory, so neither benchmark redoes the other's work) and writes
``benchmarks/results/synthetic_bags.md`` plus the PNG of one slide's bag beside its real patches.

Usage (repo root)::

    python benchmarks/synthetic_bags.py                      # 40 slides, ipc 10 and 50, quick preset
    python benchmarks/synthetic_bags.py --n_slides 12 --ipcs 10 --out runs/bench_sb_smoke \\
        --results runs/bench_sb_smoke/synthetic_bags.md      # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


def _bench_mil():
    """``benchmarks/mil.py`` as a module (its file name is the ``mil`` package's, so it is loaded by path)."""
    spec = importlib.util.spec_from_file_location("bench_mil", Path(__file__).with_name("mil.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _short(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_mil"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "synthetic_bags.md"))
    p.add_argument("--n_slides", type=int, default=40)
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--synthetic_args", default="--preset quick", help="extra arguments of the bundle, one string")
    p.add_argument("--note", default="", help="a paragraph written under the table (how to read this run)")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    bench_mil = _bench_mil()  # it drops benchmarks/ from sys.path, so ``mil`` is the package, not benchmarks/mil.py
    from mil.bags import compact_bags, load_bag

    bench_mil.main(["--out", str(out), "--n_slides", str(args.n_slides), "--make_synthetic",
                       *map(str, args.ipcs), "--synthetic_args", args.synthetic_args, "--no_training"])
    real = sorted((out / "real_bags" / "train" / "bags").glob("*.pt"))
    real_manifest = pd.read_csv(out / "real_bags" / "train" / "manifest.csv")
    rows = []
    for ipc in args.ipcs:
        d = out / f"synthetic_ipc{ipc}"
        m = pd.read_csv(d / "manifest.csv")
        done = m[m.status == "done"]
        bags = sorted((d / "bags").glob("*.pt"))
        # the same bags stored as uint8 in display space (Bag.compact): what `--storage uint8` would have written
        compact = sorted((compact_bags(d, out / f"synthetic_ipc{ipc}_uint8") / "bags").glob("*.pt"))
        dtype = str(load_bag(bags[0]).patches.dtype).removeprefix("torch.")
        rows.append(
            f"| {ipc} | {len(done)} / {len(m)} | {done.n_patches.mean():.0f} | {done.n_synthetic.mean():.1f} | "
            f"{done.seconds.mean():.1f} ± {done.seconds.std():.1f} | {done.seconds.sum() / 60:.1f} | "
            f"{_mb(bags):.2f} ({dtype}) | {_mb(real):.2f} | {_mb(real) / max(_mb(bags), 1e-9):.1f}× | "
            f"{_mb(compact):.2f} | {_mb(real) / max(_mb(compact), 1e-9):.1f}× | "
            f"{done.n_patches.sum() / max(done.n_synthetic.sum(), 1):.1f}× |"
        )
    first = out / f"synthetic_ipc{args.ipcs[0]}" / "png"
    png = sorted(first.glob("*.png"))[0] if first.is_dir() and any(first.glob("*.png")) else None
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if png is not None:
        shutil.copyfile(png, results.with_name(f"synthetic_bags_{png.stem}.png"))
    load = os.getloadavg()[0]
    lines = [
        "# Per-slide synthetic bags (Histo-DD on each slide's patches)",
        "",
        f"`python benchmarks/synthetic_bags.py {' '.join(sys.argv[1:])}`. Machine: {os.cpu_count()} CPU cores "
        f"({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, load average "
        f"{load:.1f} at the end; wall time of this call {(time.perf_counter() - start) / 60:.1f} min (bags already "
        "on disk are not re-timed).",
        "",
        f"Cohort and patches: those of `benchmarks/mil.py` (`{_short(out)}`, training split: {len(real_manifest)} "
        "slides). Distillation: `wsi_synthetic_bags` with "
        f"`{args.synthetic_args}` (Histo-DD, ResNetAP-10, stain normalisation, model augmentation, DSA). "
        "Seconds per slide are the slide's own distillation (reading its patches included); the cohort's shared "
        "stain template and model pool are fitted once before. Storage: bag files on disk (real bags hold uint8 "
        "patches; synthetic bags as written by the bundle, and the same bags stored as uint8 in display space, "
        "`mil.bags.compact_bags`, what `--storage uint8` writes).",
        "",
        "| ipc | slides done | real patches / slide | synthetic / slide | s / slide | total min | synthetic MB | "
        "real MB | storage ratio | uint8 synthetic MB | uint8 storage ratio | patch ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if png is not None:
        lines += [f"![bag of {png.stem}](synthetic_bags_{png.stem}.png)", "",
                  f"Rows, top to bottom: the synthetic bag of `{png.stem}` (ipc {args.ipcs[0]}), the real patches it "
                  "started from, other real patches of the same slide.", ""]
    if args.note:
        lines += [args.note, ""]
    results.write_text("\n".join(lines))
    print(results.read_text())


if __name__ == "__main__":
    main()
