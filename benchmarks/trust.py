"""Trust cards of every method's ipc 10 set: utility beside nearness and membership-inference figures.

Reads the synthetic sets that ``benchmarks/trajectory.py`` made (``runs/bench_trajectory/<preset>/<dataset>/
<method>_ipc<ipc>/seed<seed>/synthetic.pt``), writes each set's card with the ``card`` bundle config (the attack
trains ``--target_models`` networks on the set with the evaluation protocol) into ``runs/bench_trust/...``, and
tabulates them with the balanced accuracy of the same set from ``trajectory.json``. Resumable: a finished card is
reused, and ``trust.json`` keeps every card's figures.

Usage (repo root)::

    OMP_NUM_THREADS=1 python benchmarks/trust.py                      # every set that exists
    OMP_NUM_THREADS=1 python benchmarks/trust.py --datasets breastmnist --methods random ptm
    python benchmarks/trust.py --table_only --patches runs/bench_histodd_standard   # + the H&E patch sets' cards
    python benchmarks/trust.py --table_only --bags "hard cohort=runs/bench_mil_hard/synthetic_cluster_ipc10"
    python benchmarks/trust.py --table_only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import trajectory_common as bench
from trajectory import METHODS

GOAL_AUC = 0.55
TARGETS = (("synthetic", "synthetic-trained, members: source train images"),
           ("synthetic_own", "synthetic-trained, members: the real images the set holds or started from"),
           ("real_subset", "equal-size real subset, members: its images"),
           ("full_data", "full train split"))


def keep(card: dict[str, Any]) -> dict[str, Any]:
    """The figures of a card that the table shows."""
    n, m = card["nearness"], card["membership"]
    out: dict[str, Any] = {
        "hash": card["hash"], "card_seconds": card["card_seconds"], "n_images": card["reproducibility"]["n_images"],
        "n_near_copies": n["n_near_copies"], "pixel_threshold": n["pixel_threshold"],
        "pixel_rms_min": n["synthetic"]["pixel_rms"]["min"], "pixel_rms_median": n["synthetic"]["pixel_rms"]["median"],
        "ssim_max": n["synthetic"]["ssim"]["max"],
        "embedding_cosine_min": n["synthetic"].get("embedding_cosine", {}).get("min"),
        "subset_pixel_rms_median": n["real_subset"]["pixel_rms"]["median"],
        "subset_heldout_balanced_acc": (m.get("real_subset") or {}).get("heldout_balanced_acc"),
    }
    for target, _ in TARGETS:
        for attack in ("loss", "calibrated"):
            res = (m.get(target) or {}).get(attack)
            if res:
                out[f"{target}_{attack}"] = [res["auc"], *res["auc_ci"],
                                             next(v for k, v in res.items() if k.startswith("tpr_at_"))]
    return out


def keep_patches(card: dict[str, Any]) -> dict[str, Any]:
    """:func:`keep` plus the set's utility: the ``histodd_patches`` bundle writes both beside ``synthetic.pt``."""
    return {**keep(card), "test_balanced_acc_mean": card["metrics"]["test_balanced_acc_mean"],
            "n_networks": card["membership"]["synthetic"]["n_networks"]}


def keep_bags(card: dict[str, Any]) -> dict[str, Any]:
    """The figures of a synthetic bag cohort's card (``wsi_synthetic_bags`` ``card.json``) that the table shows."""
    slides = card["slides"]
    return {"hash": card["hash"], "n_slides": card["n_slides"], "n_synthetic": card["n_synthetic"],
            "n_near_copies": card["n_near_copies"], "median_min_pixel_rms": card["median_min_pixel_rms"],
            "median_real_to_real_pixel_rms": card["median_real_to_real_pixel_rms"],
            "ssim_max": max(s["synthetic"]["ssim"]["max"] for s in slides),
            "real_patches": int(sum(s["n_real"] for s in slides))}


def bag_lines(cards: dict) -> list[str]:
    """The synthetic bag cohorts' rows (nearness only: no attack at bag level)."""
    rows = {name: c for (kind, name, *_), c in cards.items() if kind == "bags"}
    if not rows:
        return ["Synthetic bag cohorts: `wsi_synthetic_bags` writes a card per slide and per cohort (nearness to the "
                "slide's own patches; no attack); none tabulated yet (`--bags NAME=DIR`).", ""]
    lines = ["## Synthetic bag cohorts (`wsi_synthetic_bags` cohort cards)", "",
             "Each synthetic patch against the real patches of its own slide (display units). A near-copy is closer "
             "to one of them than 99 % of the slide's real patches are to their nearest other one. No membership "
             "attack at bag level (it needs many held-out slides and a MIL head per target); the card says so.", "",
             "| cohort | slides | synthetic / real patches | near-copies | pixel RMS to nearest real (median of slide "
             "minima) | real to real (median) | SSIM max |", "|---|---|---|---|---|---|---|"]
    for name, c in rows.items():
        lines.append(f"| {name} | {c['n_slides']} | {c['n_synthetic']} / {c['real_patches']} | {c['n_near_copies']} | "
                     f"{c['median_min_pixel_rms']:.3f} | {c['median_real_to_real_pixel_rms']:.3f} | "
                     f"{c['ssim_max']:.2f} |")
    copies = [f"{name} ({c['n_near_copies']} of {c['n_synthetic']})" for name, c in rows.items()
              if c["n_near_copies"] * 2 > c["n_synthetic"]]
    if copies:  # said plainly: such bags are the slides' own patches, however they were made
        lines += ["", "No more private than the real patches they replace (most synthetic patches are near-copies of "
                  "a real patch of their slide, so sharing them shares patients' tissue): " + "; ".join(copies) + ". "
                  "At the `quick` budget (10 Histo-DD iterations) the patches barely leave their real starting "
                  "patches; a card of bags distilled for longer is needed before any such bags are shared."]
    return [*lines, ""]


PATCHES = "he_patches"
PATCH_METHODS = ("random", "herding", "forgetting", "dc", "dsa", "dm", "histodd")


def _card_row(name: str, c: dict[str, Any], u: float | None) -> str:
    return (f"| {name} | {'–' if u is None else f'{100 * u:.1f}'} | {c['n_near_copies']} / {c['n_images']} | "
            f"{c['pixel_rms_min']:.3f} / {c['pixel_rms_median']:.3f} | {c['ssim_max']:.2f} | "
            f"{_auc(c, 'synthetic_loss')} | {_auc(c, 'synthetic_calibrated')} | "
            f"{_auc(c, 'synthetic_own_calibrated')} | {_auc(c, 'real_subset_calibrated')} | "
            f"{_auc(c, 'full_data_calibrated')} | {c['card_seconds']:.0f} |")


HEADER = ["| method | balanced acc % | near-copies | pixel RMS to nearest (min / median) | SSIM max | "
          "attack AUC, loss | attack AUC, cal. | cal. AUC on its own/initial real images | "
          "real subset: cal. AUC | full data: cal. AUC | card s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]


def _not_private(cards: dict, keys: list) -> list[str]:
    """Rows whose set is no more private than real data: near-copies, or attack AUC >= 0.6 on its own images."""
    return [k[1] for k in keys if cards[k].get("synthetic_own_calibrated", [0])[0] >= 0.6
            or cards[k]["n_near_copies"]]


def patch_lines(cards: dict, args: argparse.Namespace) -> list[str]:
    """Histo-DD's own task: the cards the ``histodd_patches`` bundle wrote beside its sets (``--patches``)."""
    keys = [k for m in PATCH_METHODS for k in cards if k[0] == PATCHES and k[1] == m and k[2] == args.ipc]
    if not keys:
        return []
    n_nets = sorted({cards[k]["n_networks"] for k in keys})
    lines = [f"## H&E patches (Histo-DD's task; `histodd_patches` bundle, preset `standard`, ipc {args.ipc})", "",
             "The cards the bundle wrote beside its sets (`benchmarks/histodd_patches.py --preset standard`, "
             "`histodd_patches_standard.md`), with the bundle's default card options: the attack reuses the "
             f"{'/'.join(map(str, n_nets))} evaluation networks of each set, members are train patches, non-members "
             "test patches, the reference network is trained on the val split. Balanced accuracy from the same "
             "run's `metrics.json`.", "", *HEADER]
    lines += [_card_row(k[1], cards[k], cards[k]["test_balanced_acc_mean"]) for k in keys]
    worse = _not_private(cards, keys)
    lines += ["", f"- H&E patches: no more private than real data (near-copies, or an attack AUC >= 0.6 on its own "
                  f"real images): {', '.join(worse) if worse else 'none'}.", ""]
    return lines


def _auc(cell: dict[str, Any], key: str) -> str:
    v = cell.get(key)
    return f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" if v else "–"


def table(cards: dict, utility: dict, args: argparse.Namespace, seconds: float | None) -> list[str]:
    lines = [
        f"# Trust cards at ipc {args.ipc}: utility, nearness to real patients, membership inference",
        "",
        f"Machine: {bench.machine(args.device, args.threads)}. Preset `{args.preset}` sets from "
        f"`benchmarks/trajectory.py` (seed {args.seed}); cards by `OMP_NUM_THREADS=1 python benchmarks/trust.py` "
        f"({args.target_models} target network(s) trained on each set with the protocol's epochs, the full-data "
        f"target trained {args.real_epochs} epochs on 500 train images; default card options otherwise)"
        + (f"; this invocation {seconds / 60:.0f} min" if seconds else "") + ".",
        "",
        "Utility: test balanced accuracy of the same set (mean over its evaluation networks, `trajectory.json`). "
        "Near-copies: synthetic images closer to a training image than 99 % of training images are to their nearest "
        "other one (RMS in normalised units). Attack AUC with 95 % bootstrap interval; members are train images, "
        "non-members test images; *loss* is the loss-threshold attack, *cal.* the difficulty-calibrated one "
        f"(reference network trained on the val split). The goal for PTM is an AUC <= {GOAL_AUC} on its own "
        "synthetic-trained networks. Read the random row as the floor: its networks saw 20 of the train images, "
        "so an AUC above 0.5 there measures how the train and test splits differ (beyond their class mix, which "
        "the members match), not membership.",
        "",
    ]
    recorded = {d for d, *_ in cards} - {"bags", PATCHES}  # every dataset of the record, not only this invocation's
    for d in [*args.datasets, *sorted(recorded - set(args.datasets))]:
        rows = [m for m in METHODS if (d, m, args.ipc, args.seed) in cards]
        if not rows:
            continue
        lines += [f"## {d}", "", *HEADER]
        for m in rows:
            u = utility.get((d, m, args.ipc, args.seed), {}).get("test_balanced_acc_mean")
            lines.append(_card_row(m, cards[(d, m, args.ipc, args.seed)], u))
        lines.append("")
        ptm = cards.get((d, "ptm", args.ipc, args.seed))
        if ptm:
            auc = max(ptm.get("synthetic_loss", [0])[0], ptm.get("synthetic_calibrated", [0])[0])
            lines.append(f"- {d}: PTM's strongest attack AUC on its synthetic-trained networks {auc:.2f} "
                         f"(goal <= {GOAL_AUC}): **{'met' if auc <= GOAL_AUC else 'missed'}**; its utility is the "
                         "uncarded run's (the card does not change the set).")
        subset = [c for (dd, *_), c in cards.items() if dd == d and c.get("real_subset_calibrated")]
        worse = _not_private(cards, [(d, m, args.ipc, args.seed) for m in rows])
        if subset:
            lines.append(f"- {d}: no more private than real data (near-copies, or an attack AUC >= 0.6 on its own "
                         f"real images): {', '.join(worse) if worse else 'none'}.")
        lines.append("")
    return [*lines, *patch_lines(cards, args), *bag_lines(cards)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="standard")
    p.add_argument("--target_models", type=int, default=2)
    p.add_argument("--real_epochs", type=int, default=60,
                   help="epochs of the full-data target (default the standard full bound's 60, so that it overfits "
                        "as a deployed model does; the card's own default is a fifth of the embedding epochs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sets", default="runs/bench_trajectory", help="work dir of benchmarks/trajectory.py")
    p.add_argument("--work_dir", default="runs/bench_trust")
    p.add_argument("--dataset_dir", default=str(bench.DATA))
    p.add_argument("--out", default=str(bench.REPO / "benchmarks" / "results" / "trust.md"))
    p.add_argument("--bags", nargs="*", default=[],
                   help="NAME=DIR: synthetic bag cohorts (wsi_synthetic_bags outputs) whose card.json to tabulate")
    p.add_argument("--patches", default=None,
                   help="work dir of benchmarks/histodd_patches.py: tabulate the cards of its <method>_ipc<ipc> sets")
    p.add_argument("--table_only", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    out_md = Path(args.out)
    record = bench.ResultsRecord(out_md.with_suffix(".json"))
    utility = bench.ResultsRecord(out_md.with_name("trajectory.json")).cells()
    cards = record.cells()
    if not args.table_only:
        for d in args.datasets:
            for m in args.methods:
                name = f"{m}_ipc{args.ipc}"
                syn = Path(args.sets) / args.preset / d / name / f"seed{args.seed}" / "synthetic.pt"
                if not syn.is_file():
                    print(f"{d} {m}: no set at {syn}; run benchmarks/trajectory.py first", flush=True)
                    continue
                run = Path(args.work_dir) / args.preset / d / name / f"seed{args.seed}"
                card = bench.run_bundle(run, f"{bench.BUNDLE[bench.dims(d)]}/card.json", args.threads,
                                        metrics_name="card.json", synthetic=str(syn.resolve()),
                                        dataset_dir=args.dataset_dir, device=args.device,
                                        card_options={"target_models": args.target_models,
                                                      "real_epochs": args.real_epochs})
                cards = record.put((d, m, args.ipc, args.seed), card, keep=keep)
                bench.write_md(out_md, table(cards, utility, args, time.perf_counter() - start))
                print(d, m, json.dumps(keep(card))[:200], flush=True)
    for item in args.bags:
        name, _, folder = item.partition("=")
        card = Path(folder) / "card.json"
        if not card.is_file():
            raise SystemExit(f"--bags {item}: no cohort card '{card}' (run wsi_synthetic_bags first).")
        cards = record.put(("bags", name, args.ipc, args.seed), json.loads(card.read_text()), keep=keep_bags)
    if args.patches:
        for m in PATCH_METHODS:
            run = Path(args.patches) / f"{m}_ipc{args.ipc}"
            if (run / "card.json").is_file() and (run / "metrics.json").is_file():
                card = {**json.loads((run / "card.json").read_text()),
                        "metrics": json.loads((run / "metrics.json").read_text())}
                cards = record.put((PATCHES, m, args.ipc, 0), card, keep=keep_patches)
            else:
                print(f"--patches: {run} holds no finished, carded set; skipped", flush=True)
    bench.write_md(out_md, table(cards, utility, args, None if args.table_only else time.perf_counter() - start))


if __name__ == "__main__":
    main()
