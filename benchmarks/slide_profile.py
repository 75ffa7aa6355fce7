"""Where per-slide distillation spends its time: one slide of a tiled cohort under ``cProfile``.

The ``wsi_synthetic_bags`` workflow fits the cohort's shared parts first (normalisation, stain template, Histo-DD
model pool; timed apart, they are paid once per cohort), then distils one slide with the given settings while the
profiler runs. The slide's seconds are split into the parts of Histo-DD's Algorithm 1 (the network's SGD steps on
real patches, the gradient-matching loss, the synthetic-image update) and the rest, with the torch kernels that
dominate. Writes ``benchmarks/results/slide_profile.md``.

Usage (repo root, after ``benchmarks/mil.py`` tiled the hard cohort)::

    OMP_NUM_THREADS=1 python benchmarks/slide_profile.py
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this folder holds a mil.py that would shadow the package
    sys.path.insert(0, str(REPO))

from trajectory_common import write_md  # noqa: E402

from mil.synthetic_bags import SyntheticBagsWorkflow  # noqa: E402

# (label, file suffix, function name): the parts of one Histo-DD step, by the function that runs them.
PARTS = (
    ("network SGD steps on real patches (Update M_θ)", "histodd.py", "update_network"),
    ("gradient-matching loss (real and synthetic gradients)", "gradient_matching.py", "matching_loss"),
    ("synthetic-image update (backward through the loss)", "image_distiller.py", "update_images"),
    ("pool network draw and perturbation (Eq. 2-3)", "histodd.py", "outer_network"),
)
KERNELS = ("run_backward", "conv2d", "avg_pool2d", "group_norm", "batch_norm", "relu")


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    return sum(v[3] for (f, _, fn), v in stats.stats.items() if f.endswith(suffix) and fn == name)


def _kernel(stats: pstats.Stats, name: str) -> float:
    return sum(v[2] for (_, _, fn), v in stats.stats.items() if name in fn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slides", default=str(REPO / "runs" / "bench_mil_hard" / "tiling"))
    p.add_argument("--slide_index", type=int, default=0, help="which slide of the (split-filtered) cohort")
    p.add_argument("--split", default="train")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--preset", default="quick")
    p.add_argument("--method_options", default="{'iterations': 10}")
    p.add_argument("--grouping", default="slide_label", help="slide_label or cluster")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_slide_profile"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "slide_profile.md"))
    args = p.parse_args()
    options = ast.literal_eval(args.method_options)
    work = Path(args.work_dir) / args.grouping
    wf = SyntheticBagsWorkflow(args.slides, work, ipc=args.ipc, preset=args.preset, split=args.split,
                               method_options=options, grouping=args.grouping, progress=False)
    start = time.perf_counter()
    grids, _ = wf._grids()
    cohort = wf._prepare_cohort(grids)
    cohort_s = time.perf_counter() - start
    grid = grids[args.slide_index]
    for f in (work / "bags" / f"{grid.slide_id}.pt", work / "status" / f"{grid.slide_id}.json"):
        f.unlink(missing_ok=True)  # profile the distillation, not the resume check
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    row = wf.process(grid, cohort)
    profiler.disable()
    total = time.perf_counter() - start
    if row["status"] != "done":
        raise SystemExit(f"{grid.slide_id} failed: {row['error']}")
    stats = pstats.Stats(profiler)
    parts = [(label, _cumulative(stats, suffix, fn)) for label, suffix, fn in PARTS]
    rest = total - sum(s for _, s in parts)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Where per-slide distillation spends its time",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/slide_profile.py --grouping {args.grouping}` on `{grid.slide_id}` of "
        f"`{Path(args.slides).relative_to(REPO) if Path(args.slides).is_relative_to(REPO) else args.slides}` "
        f"({row['n_patches']} real patches, {row['n_synthetic']} synthetic), `--ipc {args.ipc} --preset "
        f"{args.preset} --method_options \"{args.method_options}\"`. Machine: {os.cpu_count()} CPU cores "
        f"({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), load "
        f"average {load:.1f} at the end (other benchmarks shared the cores).",
        "",
        f"Cohort's shared parts (normalisation, stain template, model pool; once per cohort, cached): "
        f"{cohort_s:.0f} s. The slide: **{total:.0f} s** under the profiler.",
        "",
        "| part of the slide's distillation | seconds | share |",
        "|---|---|---|",
        *[f"| {label} | {s:.1f} | {s / total:.0%} |" for label, s in parts],
        f"| reading patches, grouping, PNG, card, rest | {rest:.1f} | {rest / total:.0%} |",
        "",
        "Torch kernels (own time, all parts together):",
        "",
        "| kernel | seconds | share |",
        "|---|---|---|",
        *[f"| {k} | {_kernel(stats, k):.1f} | {_kernel(stats, k) / total:.0%} |" for k in KERNELS],
        "",
        "Reading: the slide's time is the convolutions of the distillation network (ResNetAP-10) on its patches, "
        "forward and backward, split between the network's own SGD steps on real patches and the gradient "
        "matching; reading the slide, grouping and the card are a small rest. A faster slide needs less of that "
        "arithmetic (fewer or smaller network steps, a narrower network), not less overhead.",
        "",
    ]
    write_md(Path(args.out), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
