"""A realistic-scale row: slides of thousands of kept patches, real bags against per-slide synthetic bags.

The cohorts of ``mil.md`` hold about 90 patches per slide; real slides hold thousands. This benchmark builds a small
cohort of large slides (``wsi.build_cohort``, real H&E tissue, default 4 slides of 4096x3072 px, 32 px patches at
level 0: several thousand kept patches each) and measures, per slide and for the cohort:

* tiling: tissue mask + grid + every kept patch read (``wsi.tile_slide`` + ``wsi.read_grid``, the slide opened once),
  patches per second;
* real bags (``mil.make_real_bags``, uint8) and their megabytes on disk;
* per-slide distillation (the ``wsi_synthetic_bags`` bundle, the settings of ``synthetic_bags.md``: Histo-DD
  ``quick``, ipc 10, 10 iterations) seconds per slide, and the synthetic bags' megabytes as float32 and as uint8
  (``--storage``);
* MIL: seconds per training epoch of CLAM-SB on the real bags against the synthetic bags (features from the frozen
  default encoder, encoded once and timed apart), a fixed number of epochs without early stopping.

Targets (issue 15): synthetic bags >= 10x smaller on disk than real bags; MIL epochs >= 3x faster on synthetic bags.
With 4 slides the AUC means nothing and is not reported; ``mil.md``/``mil_hard.md`` rank the bags.

Usage (repo root; each step resumable)::

    OMP_NUM_THREADS=1 python benchmarks/realistic_scale.py     # -> benchmarks/results/realistic_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mil.bags import BagDirectory, compact_bags  # noqa: E402
from mil.real_bags import make_real_bags  # noqa: E402
from mil.workflows import MILTrainWorkflow  # noqa: E402
from monai_distill.utils import atomic_path, atomic_write_json  # noqa: E402
from wsi import TilingConfig, TilingWorkflow, build_cohort, load_pools, open_slide, read_grid, tile_slide  # noqa: E402

REPO = _HERE.parent
SYNTHETIC_BUNDLE = REPO / "bundles" / "wsi_synthetic_bags" / "configs" / "train.json"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def tiling_rates(csv: Path, cfg: TilingConfig) -> list[dict[str, float]]:
    """Per slide: kept patches and patches per second of tile + read (slide opened once)."""
    rows = []
    root = csv.parent
    for row in pd.read_csv(csv).itertuples():
        path = root / row.slide_path
        t0 = time.perf_counter()
        with open_slide(path) as slide:
            tiling = tile_slide(path, cfg, slide=slide)
            n = len(read_grid(tiling.grid, slide=slide))
        seconds = time.perf_counter() - t0
        rows.append({"slide_id": row.slide_id, "kept": n, "candidates": tiling.n_candidates, "seconds": seconds,
                     "rate": n / seconds})
    return rows


def mil_epochs(out: Path, train_dir: Path, test_dir: Path, epochs: int) -> dict[str, float]:
    """CLAM-SB trained ``epochs`` epochs (no early stopping, no validation split) on ``train_dir``."""
    run = out / "mil" / train_dir.parent.name
    metrics = run / "metrics.json"
    if not metrics.is_file():
        MILTrainWorkflow(train_bags=str(train_dir), test_slides=str(test_dir), output_dir=run, model="clam_sb",
                         epochs=epochs, patience=None, val_fraction=0.0, seed=0, device="cpu", num_threads=1,
                         feature_cache=str(out / "features"), n_heatmaps=0, progress=False,
                         allow_overlap=True).run()
    m = json.loads(metrics.read_text())
    return {"seconds_per_epoch": m["seconds_per_epoch"], "epochs": m["epochs"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_scale"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "realistic_scale.md"))
    p.add_argument("--n_slides", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=(4096, 3072))
    p.add_argument("--patch_size", type=int, default=32)
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--mil_epochs", type=int, default=5)
    p.add_argument("--synthetic_args", nargs="*", default=["--preset", "quick", "--method_options",
                                                            "{'iterations': 10}"])
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = Path(args.out)
    csv = out / "cohort" / "cohort.csv"
    if not csv.is_file():
        _log(f"building {args.n_slides} slides of {args.size[0]}x{args.size[1]} px")
        build_cohort(out / "cohort", n_slides=args.n_slides, size=tuple(args.size), seed=0, pools=load_pools(),
                     test_ratio=0.0, progress=True)
    cfg = TilingConfig(patch_size=args.patch_size, level=args.level)
    _log("tiling rates")
    tiles = tiling_rates(csv, cfg)
    TilingWorkflow(csv, out / "tiling", patch_size=args.patch_size, level=args.level, thumbnail_size=512,
                   progress=False).run()
    _log("real bags")
    t0 = time.perf_counter()
    make_real_bags(out / "tiling", out / "real", progress=False)
    real_seconds = time.perf_counter() - t0
    synthetic = out / "synthetic"
    _log("synthetic bags")
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(SYNTHETIC_BUNDLE),
                    "--slides", str(out / "tiling"), "--output_dir", str(synthetic), "--ipc", str(args.ipc),
                    "--progress", "False", *args.synthetic_args], cwd=REPO, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    compact = compact_bags(synthetic, out / "synthetic_uint8", "uint8")
    manifest = pd.read_csv(synthetic / "manifest.csv")
    real_files = sorted((out / "real" / "bags").glob("*.pt"))
    real_mb, syn_mb = _mb(real_files), _mb(sorted((synthetic / "bags").glob("*.pt")))
    syn8_mb = _mb(sorted((compact / "bags").glob("*.pt")))
    _log("MIL epochs")
    mil_real = mil_epochs(out, out / "real" / "bags", out / "real", args.mil_epochs)
    mil_syn = mil_epochs(out, synthetic / "bags", out / "real", args.mil_epochs)
    n = len(real_files)
    real_patches = [len(b) for b in BagDirectory(out / "real")]
    rows = [f"| {t['slide_id']} | {t['kept']} / {t['candidates']} | {t['rate']:.0f} | "
            f"{_mb([out / 'real' / 'bags' / (t['slide_id'] + '.pt')]):.1f} | "
            f"{manifest.set_index('slide_id').loc[t['slide_id'], 'seconds']:.0f} | "
            f"{_mb([synthetic / 'bags' / (t['slide_id'] + '.pt')]):.2f} |" for t in tiles]
    storage, storage8 = real_mb / syn_mb, real_mb / syn8_mb
    speed = mil_real["seconds_per_epoch"] / mil_syn["seconds_per_epoch"]
    load = os.getloadavg()[0]
    lines = [
        "# Realistic scale: slides of thousands of patches, real bags vs per-slide synthetic bags",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/realistic_scale.py` ({(time.perf_counter() - start) / 60:.1f} min this "
        f"call; steps done before are reused). Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch "
        f"{torch.__version__}, one torch thread, load average {load:.1f} at the end (other benchmarks shared the "
        "cores).",
        "",
        f"Cohort: {n} pyramidal TIFF slides of real H&E tissue ({args.size[0]}x{args.size[1]} px level 0, half "
        f"positive), {args.patch_size} px patches at level {args.level}, every kept patch in the real bag "
        f"({int(np.mean(real_patches))} per slide on average). Synthetic bags: the `wsi_synthetic_bags` bundle with "
        f"`--ipc {args.ipc} {' '.join(args.synthetic_args)}`. Real bags written in {real_seconds:.0f} s.",
        "",
        "| slide | kept / grid patches | tiling + reading (patches/s) | real bag MB | distillation s | "
        "synthetic bag MB (float32) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "| | real bags | synthetic bags | ratio | target |",
        "|---|---|---|---|---|",
        f"| MB on disk (cohort) | {real_mb:.1f} | {syn_mb:.2f} float32, {syn8_mb:.2f} uint8 | {storage:.0f}x, "
        f"{storage8:.0f}x (uint8) | >= 10x: **{'met' if storage >= 10 else 'missed'}** |",
        f"| CLAM-SB s / epoch ({args.mil_epochs} epochs, features cached) | {mil_real['seconds_per_epoch']:.3f} | "
        f"{mil_syn['seconds_per_epoch']:.4f} | {speed:.0f}x | >= 3x: **{'met' if speed >= 3 else 'missed'}** |",
        f"| distillation s / slide | – | {manifest.seconds.mean():.0f} ± {manifest.seconds.std():.0f} | | |",
        "",
    ]
    with atomic_path(Path(args.results)) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    atomic_write_json({"tiles": tiles, "real_mb": real_mb, "synthetic_mb": syn_mb, "synthetic_uint8_mb": syn8_mb,
                       "mil_real": mil_real, "mil_synthetic": mil_syn, "distill_seconds": manifest.seconds.tolist()},
                      Path(args.results).with_suffix(".json"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
