"""Cross-centre transfer (seed 003 Table 5) on a two-centre cohort of real tissue -> ``results/cross_centre.md``.

A source centre's patch classifier and CLAM-SB head are fine-tuned on the target centre's synthetic data (its
per-slide Histo-DD bags, ipc 10 per patch class, distilled with the centre's annotation masks) vs its full data (every
real patch / real bag), vs no fine-tuning; all tested on the target centre's held-out real slides
(:class:`mil.cross_centre.CrossCentreWorkflow`, the ``cross_centre.json`` config of ``mil_slide_classification``).

Steps, each resumable (a rerun skips what is done with the same settings):

1. ``OUT/cohorts/centre_{a,b}``: two cohorts (``wsi.build_centres``): disjoint halves of every tissue source, centre B
   with haematoxylin x1.6 and eosin x0.6 (colour deconvolution);
2. ``OUT/centre_{a,b}/tiling`` and ``real_bags/{train,test}`` (``benchmarks/mil.py``'s steps);
3. ``OUT/centre_b/synthetic_ipc<N>``: the ``wsi_synthetic_bags`` bundle on centre B's training slides with
   ``--annotations``;
4. ``OUT/transfer/seed<k>``: the ``cross_centre.json`` workflow, in process, per seed.

Target (issue 15): the synthetic fine-tune reaches >= 90 % of the full fine-tune's AUC gain over no fine-tuning, at
<= 1/10 of its bytes and time.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/cross_centre.py
    python benchmarks/cross_centre.py --transfer_only --seeds 1 --results /tmp/seed1.md  # seeds side by side
    python benchmarks/cross_centre.py --n_slides 6 --size 512 384 --seeds 0 --out runs/cc_smoke \
        --results runs/cc_smoke/cross_centre.md   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mil.cross_centre import ARMS, LEVELS, CrossCentreWorkflow  # noqa: E402
from monai_distill.utils import atomic_path, atomic_write_json  # noqa: E402
from wsi import build_centres, load_pools  # noqa: E402
from wsi.cohort import DEFAULT_CENTRES  # noqa: E402

REPO = _HERE.parent
_spec = importlib.util.spec_from_file_location("bench_mil", _HERE / "mil.py")
bench_mil = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(bench_mil)  # type: ignore[union-attr]


def centres(out: Path, n_slides: int, size: tuple[int, int], seed: int, minority_range: tuple[float, float]) -> Path:
    """The two cohorts (built once; other settings in the same folder are an error, not a silent reuse)."""
    root = out / "cohorts"
    info = {"n_slides": n_slides, "size": list(size), "seed": seed, "minority_range": list(minority_range)}
    stamp = root / "benchmark_centres.json"
    if stamp.is_file():
        if json.loads(stamp.read_text()) != info:
            raise SystemExit(f"'{root}' holds other centres ({stamp.read_text()}); use another --out.")
        return root
    bench_mil._log(f"building 2 x {n_slides} slides of {size[0]}x{size[1]} px")
    build_centres(root, n_slides=n_slides, size=tuple(size), seed=seed, pools=load_pools(), progress=True,
                  minority_range=tuple(minority_range))
    atomic_write_json(info, stamp)
    return root


def summarise(rows: list[dict]) -> pd.DataFrame:
    t = pd.DataFrame(rows)
    g = t.groupby(["level", "arm"], sort=False)
    s = g.agg(auc=("auc", "mean"), auc_std=("auc", "std"), bacc=("balanced_acc", "mean"),
              bacc_std=("balanced_acc", "std"), seconds=("finetune_seconds", "mean"), epochs=("epochs", "mean"),
              mb=("megabytes", "mean"), n_train=("n_train", "mean"), n_test=("n_test", "mean")).reset_index()
    return s.fillna({"auc_std": 0.0, "bacc_std": 0.0})


def per_seed_ratios(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"level": lvl, "seed": seed, **vals} for seed, summary in rows for lvl, vals in
                         summary.items()])


def write_markdown(path: Path, s: pd.DataFrame, ratios: pd.DataFrame, args: argparse.Namespace, facts: dict) -> None:
    centre = {c.name: c for c in DEFAULT_CENTRES}
    a, b = centre["centre_a"], centre["centre_b"]
    lines = [
        "# Cross-centre transfer: fine-tuning on the target centre's synthetic vs full data (seed 003 Table 5)",
        "",
        f"`{facts['command']}` ({facts['seconds']:.0f} s for the runs of this invocation). "
        f"Machine: {facts['machine']}.",
        "",
        f"Centres: two cohorts of {args.n_slides} pyramidal TIFF slides each ({args.size[0]}x{args.size[1]} px "
        "level 0, "
        f"half positive: a region of {args.minority_range[0]:.0%}-{args.minority_range[1]:.0%} of the tissue from the "
        "other source), built by `wsi.build_centres` from "
        f"disjoint tissue: centre A cuts its pieces from the left half of every source image ({a.region}) in the "
        f"sources' own colours, centre B from the right half ({b.region}) with haematoxylin x{b.stain[0]} and eosin "
        f"x{b.stain[1]} (colour deconvolution, `wsi.cohort.stain_shift`). A is the source, B the target; every model "
        f"is tested on B's {facts['n_test']} held-out slides. Patches {args.patch_size} px at level {args.level}.",
        "",
        f"- **Patch level**: {args.patch_arch} (width 16, instance norm) classifies the tissue class of a patch "
        "(annotation masks: majority vs minority tissue; unannotated patches left out), trained on A's real patches "
        f"for {args.source_epochs} epochs, then fine-tuned for {args.finetune_epochs} epochs (SGD lr 0.01, decay x0.1 "
        "at half) on B's synthetic patches (the synthetic bags' patches with the class each was distilled for) or on "
        "all of B's real training patches. Metrics over B's held-out patches.",
        "- **Slide level**: CLAM-SB on frozen-encoder features, trained on A's real bags, fine-tuned "
        "(`init_checkpoint`, the source's feature standardisation kept) on B's synthetic or real bags; up to "
        f"{args.mil_epochs} epochs with early stopping on 20 % of the fine-tuning bags. Metrics over B's held-out "
        "slides.",
        f"- **Synthetic data**: `wsi_synthetic_bags` Histo-DD, ipc {args.ipc} per patch class present on a slide, "
        f"with B's annotation masks, `{args.synthetic_args}` ({facts['synthetic_seconds']}).",
        "- *MB* = the bag files B sends; *fine-tune s* = training steps of the fine-tune (no feature extraction, no "
        f"validation), mean over seeds {args.seeds}.",
        "",
        "| level | fine-tuned on | test AUC | balanced acc | fine-tune s | epochs | training items | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"none": "nothing (source model)", "synthetic": "B synthetic", "full": "B full (real)"}
    for r in s.itertuples():
        mb = "—" if not np.isfinite(r.mb) else f"{r.mb:.2f}"
        lines.append(f"| {r.level} | {names[r.arm]} | {r.auc:.3f} ± {r.auc_std:.3f} | "
                     f"{r.bacc:.3f} ± {r.bacc_std:.3f} | {r.seconds:.2f} | {r.epochs:.1f} | {r.n_train:.0f} | {mb} |")
    lines += ["", "Target: synthetic gain ≥ 90 % of the full gain (AUC), at ≤ 1/10 of the bytes and of the time.", "",
              "| level | full gain (AUC) | synthetic gain | gain ratio | bytes ratio | time ratio | target | "
              "full / synthetic gain (balanced acc) |",
              "|---|---|---|---|---|---|---|---|"]
    for level in LEVELS:
        r = ratios[ratios.level == level]
        if r.empty:
            continue
        full, syn = r.full_gain.mean(), r.synthetic_gain.mean()
        ratio = syn / full if full > 0 else float("nan")
        bytes_r, time_r = r.bytes_ratio.mean(), r.time_ratio.mean()
        met = np.isfinite(ratio) and ratio >= 0.9 and bytes_r <= 0.1 and time_r <= 0.1
        why = "met" if met else ("missed: no gain to recover (full gain ≤ 0)" if not full > 0 else "missed")
        bacc = f"{r.full_gain_balanced_acc.mean():+.3f} / {r.synthetic_gain_balanced_acc.mean():+.3f}"
        lines.append(f"| {level} | {full:+.3f} | {syn:+.3f} | {ratio:.2f} | {bytes_r:.3f} | {time_r:.3f} | {why} | "
                     f"{bacc} |")
    lines += ["", "Gain ratio = mean synthetic gain / mean full gain over seeds; bytes and time ratios = synthetic / "
              "full, mean over seeds. The target is on AUC; the balanced-accuracy gains (decisions at each head's "
              "threshold: the validation threshold for MIL heads, the most probable class for the patch classifier) "
              "are shown because AUC saturates when the source model already ranks the target's slides.", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_cross_centre"))
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "cross_centre.md"))
    p.add_argument("--n_slides", type=int, default=18, help="slides per centre")
    p.add_argument("--size", type=int, nargs=2, default=(1024, 768))
    p.add_argument("--patch_size", type=int, default=32)
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--synthetic_args", default="--preset quick --storage uint8 --method_options \"{'iterations': 10}\"",
                   help="further wsi_synthetic_bags arguments")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--patch_arch", default="resnetap10")
    p.add_argument("--source_epochs", type=int, default=10)
    p.add_argument("--finetune_epochs", type=int, default=5, help="seed 003 Table 5: 5")
    p.add_argument("--mil_epochs", type=int, default=40)
    p.add_argument("--cohort_seed", type=int, default=0)
    p.add_argument("--transfer_only", action="store_true",
                   help="skip cohort, bags and distillation (made by an earlier run) and run the transfer seeds")
    p.add_argument("--minority_range", type=float, nargs=2, default=(0.05, 0.15),
                   help="share of a positive slide's tissue from the other source")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    start = time.perf_counter()
    root = centres(out, args.n_slides, tuple(args.size), args.cohort_seed, tuple(args.minority_range))
    if args.transfer_only:  # steps 1-3 finished earlier: several seeds can then run side by side
        real = {c: {s: out / c / "real_bags" / s for s in ("train", "test")} for c in ("centre_a", "centre_b")}
        syn_dir = out / "centre_b" / f"synthetic_ipc{args.ipc}"
    else:
        real = {c: bench_mil.real_bags(out / c, root / c / "cohort.csv", args.patch_size, args.level, None)
                for c in ("centre_a", "centre_b")}
        syn = bench_mil.make_synthetic(out / "centre_b", [args.ipc], [
            "--annotations", str(root / "centre_b" / "annotations"), *shlex.split(args.synthetic_args)])
        syn_dir = next(iter(syn.values()))
    manifest = pd.read_csv(syn_dir / "manifest.csv")
    synthetic_seconds = (f"{manifest.seconds.mean():.0f} ± {manifest.seconds.std():.0f} s per slide, "
                         f"{len(manifest)} slides")
    results = []
    for seed in args.seeds:
        wf = CrossCentreWorkflow(
            source_bags=real["centre_a"]["train"], target_bags=real["centre_b"]["train"], target_synthetic_bags=syn_dir,
            test_bags=real["centre_b"]["test"], output_dir=out / "transfer" / f"seed{seed}",
            source_annotations=root / "centre_a" / "annotations", target_annotations=root / "centre_b" / "annotations",
            mil_options={"epochs": args.mil_epochs, "patience": 10}, patch_arch=args.patch_arch,
            source_epochs=args.source_epochs, finetune_epochs=args.finetune_epochs, seed=seed, device="cpu",
            num_threads=1, progress=False)
        bench_mil._log(f"transfer seed {seed}")
        results.append((seed, wf.run()))
    rows = [r for _, m in results for r in m["rows"]]
    ratios = per_seed_ratios([(seed, m["summary"]) for seed, m in results])
    s = summarise(rows)
    s["arm"] = pd.Categorical(s.arm, ARMS)
    s = s.sort_values(["level", "arm"])
    n_test = pd.read_csv(root / "centre_b" / "cohort.csv").query("split == 'test'").shape[0]
    facts = {"command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
             "seconds": time.perf_counter() - start, "synthetic_seconds": synthetic_seconds, "n_test": n_test,
             "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, torch {torch.__version__}, one "
                        f"torch thread, load average {os.getloadavg()[0]:.1f} at the end"}
    results_path = Path(args.results)
    write_markdown(results_path, s, ratios, args, facts)
    atomic_write_json({"rows": rows, "summaries": {str(k): m["summary"] for k, m in results}, "args": vars(args)},
                      results_path.with_suffix(".json"))
    print(results_path.read_text())


if __name__ == "__main__":
    main()
