"""Histo-DD patch table: Histo-DD vs coresets and DC/DSA/DM, the full-data bound, the ablation, cross-architecture.

The task is the real H&E patch set of ``benchmarks/histodd_data.py`` (patches of the shared slides and tiles,
labelled by source tissue). Every run goes through the ``histodd_patches`` bundle (``monai.bundle.run`` in-process,
the code path of ``python -m monai.bundle run``); finished runs are kept under ``--work_dir`` and skipped on a
rerun, so an interrupted benchmark resumes where it stopped.

Usage (repo root)::

    python benchmarks/histodd_patches.py                               # the full table, quick preset
    python benchmarks/histodd_patches.py --ipcs 10 --arch convnet --width 16 --method_options "{'iterations': 10}"
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import time
from pathlib import Path

import torch
from histodd_data import build_he_patch_npz
from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "histodd_patches" / "configs"
ABLATIONS = {"no stain normalisation": {"stain": False}, "no model augmentation": {"model_augment": False},
             "no DSA": {"dsa": False}}


def _run_once(out: Path, config: str, **overrides) -> dict:
    metrics = out / "metrics.json"
    if not metrics.is_file():
        run(config_file=str(CONFIGS / config), output_dir=str(out), progress=False, **overrides)
    return json.loads(metrics.read_text())


def _fmt(m: dict, key: str) -> str:
    return f"{100 * m[f'test_{key}_mean']:.1f} ± {100 * m[f'test_{key}_std']:.1f}"


def _row(label: str, ipc: object, arch: str, m: dict) -> str:
    distill = m.get("distill_seconds")
    return (f"| {label} | {ipc} | {arch} | {_fmt(m, 'acc')} | {_fmt(m, 'balanced_acc')} | {_fmt(m, 'auc')} "
            f"| {m['n_eval_models']} | {m['eval_epochs']} | {'–' if distill is None else f'{distill:.0f}'} "
            f"| {m['eval_seconds']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipcs", nargs="+", type=int, default=[10, 50])
    p.add_argument("--methods", nargs="+", default=["random", "herding", "forgetting", "dc", "dsa", "dm", "histodd"])
    p.add_argument("--cross_archs", nargs="*", default=["resnet18", "densenet121", "vit"])
    p.add_argument("--preset", default="quick")
    p.add_argument("--arch", default="resnetap10", help="distillation (and evaluation) network")
    p.add_argument("--width", type=int, default=None, help="preset width override")
    p.add_argument("--method_options", default="{}", help="extra options of the distillers (python dict literal)")
    p.add_argument("--lr_img", type=float, default=None, help="Histo-DD's lr_img (default: the bundle's)")
    p.add_argument("--patch_size", type=int, default=32)
    p.add_argument("--val_fraction", type=float, default=0.15, help="band of each source above the test band kept "
                   "as the val split (settings are chosen on it; see histodd_tune in the README)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_histodd"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "histodd_patches.md"))
    args = p.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work_dir)
    data = work / f"he_patches_{args.patch_size}_val{args.val_fraction:g}.npz"
    if not data.is_file():
        build_he_patch_npz(data, patch_size=args.patch_size, val_fraction=args.val_fraction)
    overrides = {"preset_overrides": {"width": args.width}} if args.width else {}
    common = {"preset": args.preset, "seed": args.seed, "device": device, "dataset": str(data), "arch": args.arch,
              "cache_dir": str(work / "cache"), **overrides}
    extra = ast.literal_eval(args.method_options)
    histodd = {"lr_img": args.lr_img} if args.lr_img is not None else {}
    rows: list[str] = []
    start = time.perf_counter()

    def write() -> None:
        machine = f"{platform.system()} {platform.machine()}, {torch.get_num_threads()} torch threads, device {device}"
        head = [
            "# Histo-DD on a real H&E patch task, evaluation protocol mean ± std over the evaluation networks",
            "",
            f"Task: `benchmarks/histodd_data.py` ({args.patch_size} px patches of the shared slides and H&E tiles, "
            f"6 classes = source tissue, spatially disjoint train/val/test bands, val {args.val_fraction:g} of each "
            "source). Preset `"
            f"{args.preset}`, distillation network `{args.arch}`"
            f"{f' (width {args.width})' if args.width else ''}, method options `{args.method_options}`"
            f"{f', Histo-DD lr_img {args.lr_img}' if args.lr_img is not None else ''}, seed {args.seed}; "
            f"machine: {machine}, torch {torch.__version__}. This invocation ran "
            f"{(time.perf_counter() - start) / 60:.1f} min; each row's own seconds are in the row (a row found on "
            "disk keeps the seconds of the run that made it).",
            "",
            "Accuracy, balanced accuracy and macro AUC in %; `distill s` / `eval s` are seconds. `full` trains on the "
            "whole train split (upper bound). Coresets are selections of real patches; Histo-DD and DC/DSA/DM start "
            "from the random coreset of the same seed.",
            "",
            "| method | ipc | eval network | accuracy | balanced acc | AUC | K | epochs | distill s | eval s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(head + rows) + "\n")

    def add(row: str) -> None:
        rows.append(row)
        write()
        print(row, flush=True)

    for ipc in args.ipcs:
        for method in args.methods:
            opts = {**extra, **histodd} if method in ("dc", "dsa", "dm", "histodd") else {}
            if method != "histodd":
                opts = {k: v for k, v in opts.items() if k in ("iterations", "outer_loop", "batch_real")}
            if method == "dm":  # one synthetic update per iteration: as many updates as the others make
                outer = opts.pop("outer_loop", 1)
                if "iterations" in opts:
                    opts["iterations"] *= outer
            out = work / f"{method}_ipc{ipc}"
            m = _run_once(out, "train.json", method=method, ipc=ipc, method_options=opts, **common)
            add(_row(method, ipc, m["eval_arch"], m))
        for label, switch in ABLATIONS.items():
            out = work / f"histodd_ipc{ipc}_{'_'.join(f'{k}-{v}' for k, v in switch.items())}"
            m = _run_once(out, "train.json", method="histodd", ipc=ipc, method_options={**extra, **histodd, **switch},
                          **common)
            add(_row(f"Histo-DD, {label}", ipc, m["eval_arch"], m))
        for arch in args.cross_archs:
            out = work / f"histodd_ipc{ipc}" / f"eval_{arch}"
            m = _run_once(out, "evaluate.json", synthetic=str(work / f"histodd_ipc{ipc}" / "synthetic.pt"), arch=arch,
                          **{k: v for k, v in common.items() if k not in ("arch", "cache_dir")})
            add(_row("histodd (cross-architecture)", ipc, arch, m))
            out = work / f"random_ipc{ipc}" / f"eval_{arch}"
            m = _run_once(out, "evaluate.json", synthetic=str(work / f"random_ipc{ipc}" / "synthetic.pt"), arch=arch,
                          **{k: v for k, v in common.items() if k not in ("arch", "cache_dir")})
            add(_row("random (cross-architecture)", ipc, arch, m))
    m = _run_once(work / "full", "evaluate.json", synthetic="full",
                  **{k: v for k, v in common.items() if k != "cache_dir"})
    add(_row(f"full ({m['n_train_images']} patches)", "all", m["arch"], m))


if __name__ == "__main__":
    main()
