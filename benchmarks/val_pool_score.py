"""Score given settings on a tuner's validation pool: was a candidate the search never tried better on val?

``tune.json`` ranks only the candidates it ran. This scores one more set of settings exactly as a trial is scored
(distilled on the train split less the held-out images, evaluated on val plus those images, one run per seed), so
that it can be compared with the search's re-scored candidates in ``tune.json``. It never reads the test split and
writes nothing into ``configs/``: a choice still belongs to a search.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/val_pool_score.py --dataset breastmnist --method ptm --ipc 2 \\
        --val_from_train 0.2 --settings "{'lr_img': 100.0, 'syn_steps': 18, 'max_start_epoch': 8}" \\
        --method_options "{'buffers': {'flat': True, 'seed': 0}}" --out runs/tune/breastmnist_ptm_ipc2_pool_original
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import trajectory_common as bench

from monai_distill.runs import set_determinism
from monai_distill.runtime import configure_threads
from monai_distill.tune import TuneWorkflow
from monai_distill.utils import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--ipc", type=int, required=True)
    p.add_argument("--preset", default="standard")
    p.add_argument("--val_from_train", type=float, default=0.2)
    p.add_argument("--settings", required=True, help="the settings to score, a dict over configs/'s")
    p.add_argument("--method_options", default="{}", help="fixed options, as the search's --method_options")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--buffer_dir", default="runs/bench_trajectory/standard/buffers")
    p.add_argument("--dataset_dir", default=str(bench.DATA))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    configure_threads(1)
    set_determinism(args.seeds[0])
    out = Path(args.out)
    wf = TuneWorkflow(dataset=args.dataset, dataset_dir=args.dataset_dir, output_dir=str(out), method=args.method,
                      ipc=args.ipc, preset=args.preset, seed=args.seeds[0], device="cpu", progress=False,
                      val_from_train=args.val_from_train, buffer_dir=args.buffer_dir, write_config=False,
                      method_options=ast.literal_eval(args.method_options))
    scores = wf.score_settings(ast.literal_eval(args.settings), args.seeds, out)
    for row in scores["scores"]:
        print(json.dumps(row), flush=True)
    atomic_write_json(scores, out / "scores.json")
    mean = scores["val_balanced_acc_mean"]
    print(f"val balanced accuracy {100 * mean:.1f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
