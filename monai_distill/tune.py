"""Choose a method's settings on the validation split, within a wall-clock budget; the test split is never read.

A value picked by comparing test accuracies is a bug even when a table reports it: the test split then no longer
estimates how the set does on new patients. :class:`TuneWorkflow` distils with candidate settings (random draws from
a grid, the current settings first, so the result is never worse on val than what it replaces), trains the
evaluation networks on each set and scores them on the **val** split (balanced accuracy, ties broken by macro AUC),
then re-scores the best few (and the current settings) with ``rescore_seeds`` more distillation seeds and keeps
the one with the best mean val score (a candidate whose settings equal an earlier trial's is skipped). One seed
per candidate is not enough on small val splits: BreastMNIST's val split has 78 images, and a best-of-15 choice by
one seed each scored 76.6 on val and 66.7 on test against 72.0 for the settings it replaced. The winner goes into
``configs/<dataset>.json`` under ``presets.<preset>.methods.<method>.ipc<k>``, with the val scores and the path of
the full search record under ``presets.<preset>.tuned.<method>.ipc<k>``.

More seeds do not cure a val split that is too small to rank candidates: on BreastMNIST the choice re-scored over
3 seeds (76.3 ± 0.6 on val against 71.7 ± 0.8 for the old settings) still lost on test (66.7 ± 1.1 against 72.0).
``val_from_train`` widens the pool the candidates are ranked on: a stratified fraction of the train split is held out
of every trial's distillation (its expert buffers and model pools are built without it, since they are keyed by the
train split's size and content) and scored beside the val split. The final settings are then used on the whole train
split, as with any hold-out choice.

The grids list where the code departs from a paper or a reference as options for validation to decide: PTM's
``ce_weight`` (``L_c`` at 0.1 here, 1 in Eq. 5 read literally), ``beta2`` and ``overlap_features`` (Eq. 4 on the
student's or the expert's features); the learned-lr step ``lr_lr`` (0 keeps the initial lr) and ``lr_param`` (``log η``
here, ``η`` itself in MTT); DATM's ``label_epoch`` and ``loss_threshold`` (1.0 in the reference).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checks import OptionError, option_dict, option_float, option_int
from .data import RealDataset, SyntheticSet, concat_splits, stratified_holdout
from .presets import CONFIG_DIR, config_path, deep_merge
from .runs import guarded_run
from .utils import atomic_write_json, check_output_dir
from .workflows import DistillWorkflow

__all__ = ["SEARCH_SPACES", "TuneWorkflow", "candidate_grid"]

logger = logging.getLogger("monai_distill")

_TRAJECTORY = {"lr_img": [10.0, 100.0, 1000.0], "lr_lr": [0.0, 1e-4, 1e-3, 1e-2], "lr_param": ["log", "linear"],
               "syn_steps": [10, 20], "max_start_epoch": [2, 5, 8]}
# One grid per method: the settings that move results most in the papers' own ablations.
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    "mtt": dict(_TRAJECTORY),
    "ftd": {**_TRAJECTORY, "ema_decay": [0.99, 0.999]},
    "datm": {**_TRAJECTORY, "label_epoch": [None, 2, 5], "loss_threshold": [math.inf, 1.0],
             # lr_y 0 keeps the expert's initial soft labels. Learned ones change class: at ipc 2 (standard, seeds 1
             # and 2) one of the two class-0 images ends labelled class 1 on BreastMNIST and PneumoniaMNIST alike
             # (PneumoniaMNIST: balanced accuracy 54-55 at AUC 92).
             "lr_y": [0.0, 0.1, 2.0]},
    "ptm": {**_TRAJECTORY, "max_end_epoch": [4, 6, 10], "beta2": [0.1, 1.0], "ce_weight": [0.1, 1.0],
            "overlap_features": ["student", "expert"]},
    "hoptm": {**_TRAJECTORY, "base_threshold": [0.5, 1.0, 2.0]},
    "dc": {"lr_img": [0.01, 0.1, 1.0]},
    "dsa": {"lr_img": [0.01, 0.1, 1.0]},
    "dm": {"lr_img": [0.1, 1.0, 10.0]},
    "histodd": {"lr_img": [1e-3, 5e-3, 2e-2, 0.1], "perturb_alpha": [0.005, 0.01, 0.05]},
}


def candidate_grid(space: Mapping[str, list[Any]], seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Every combination of ``space`` in a seeded random order, the empty override (current settings) first."""
    keys = sorted(space)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    random.Random(seed).shuffle(combos)
    out = [{}, *combos]
    return out if limit is None else out[:limit]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


class _HeldOutDistill(DistillWorkflow):
    """A trial's distillation on the train split without the images the search ranks candidates on."""

    def __init__(self, *args: Any, held_out: float = 0.0, held_out_seed: int = 0, **kwargs: Any) -> None:
        self.held_out, self.held_out_seed = held_out, held_out_seed
        self.held_out_images = 0
        super().__init__(*args, **kwargs)

    def _load(self, split: str) -> RealDataset:
        if not self.held_out or split not in ("train", "val"):
            return super()._load(split)
        train = super()._load("train")
        kept, held = stratified_holdout(train, self.held_out, self.held_out_seed)
        self.held_out_images = len(held)
        if split == "train":
            return train.take(kept)
        return concat_splits(super()._load("val"), train.take(held, split="val"), "val")


class TuneWorkflow:
    """Search ``method``'s settings on the val split of ``dataset`` and write the best into ``configs/``.

    Args:
        dataset: MedMNIST flag or user ``.npz``/``.csv`` (with a val split).
        output_dir: trials (``trials/NNN/``, each a distillation run without evaluation) and ``tune.json``.
        method: the method to tune.
        ipc: images per class.
        budget_minutes: wall-clock budget; no trial starts once the time spent plus one mean trial would exceed it
            (the first trial, the current settings, always runs).
        max_trials: at most this many trials (default: the grid's size + 1).
        rescore_top: after the search, this many best trials (and always the current settings, trial 0) are
            distilled again with ``rescore_seeds`` more seeds; the winner has the best mean val score over its seeds.
            The search stops early enough to leave time for it. 0 keeps the single-seed choice.
        rescore_seeds: extra distillation seeds per re-scored candidate (seeds ``seed + 1 ...``).
        val_from_train: fraction of every class of the train split held out of the trials' distillation and scored
            with the val split (0: the val split alone). For val splits too small to rank candidates (BreastMNIST:
            78 images; 0.2 adds 109). The draw is fixed by ``seed``.
        search_space: option -> candidate values; default :data:`SEARCH_SPACES` of the method.
        method_options: fixed options merged under every candidate (e.g. a shorter ``num_iterations``).
        write_config: write the winner into ``config_dir/<dataset>.json``.
        config_dir: where the dataset configs live (default the package's ``configs/``).
        common: ``dataset_dir``, ``size``, ``preset``, ``seed``, ``device``, ``arch``, ``eval_models``,
            ``eval_epochs``, ``preset_overrides``, ``buffer_dir``, ``progress``: as :class:`DistillWorkflow`'s.
    """

    def __init__(
        self,
        dataset: str,
        output_dir: str,
        method: str = "ptm",
        ipc: int = 10,
        budget_minutes: float = 30.0,
        max_trials: int | None = None,
        rescore_top: int = 2,
        rescore_seeds: int = 2,
        val_from_train: float = 0.0,
        search_space: dict[str, list[Any]] | None = None,
        method_options: dict[str, Any] | None = None,
        write_config: bool = True,
        config_dir: str | None = None,
        **common: Any,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.budget_s = 60.0 * option_float(budget_minutes, "budget_minutes", minimum=0.0)
        self.max_trials = None if max_trials in (None, "") else option_int(max_trials, "max_trials", minimum=1)
        self.rescore_top = option_int(rescore_top, "rescore_top", minimum=0)
        self.rescore_seeds = option_int(rescore_seeds, "rescore_seeds", minimum=1)
        self.val_from_train = option_float(val_from_train, "val_from_train", minimum=0.0, maximum=0.9)
        self.method_options = option_dict(method_options, "method_options")
        self.write_config = bool(write_config)
        self.config_dir = Path(config_dir) if config_dir else CONFIG_DIR
        # Trials never write a trust card: it would read the test split, which a search must not open.
        self.common = {**dict(common), "card": False}
        # Built once to check every option (names, ranges, files) before any trial; trials copy its settings.
        self.base = self._workflow(dataset=dataset, output_dir=str(self.output_dir / "trials" / "000"),
                                   method=method, ipc=ipc, evaluate=False, method_options=self.method_options,
                                   **self.common)
        space = SEARCH_SPACES.get(self.base.method, {}) if search_space is None else search_space
        self.space = {str(k): list(v) for k, v in option_dict(space, "search_space").items()}
        for key, values in self.space.items():
            if not values:
                raise OptionError(f"--search_space '{key}' lists no candidate value.")

    def _workflow(self, **kwargs: Any) -> DistillWorkflow:
        """A trial's distillation (on the train split less the held-out images, if any)."""
        # Drawn with the search's seed, not the trial's: every candidate and re-score is ranked on one pool.
        seed = option_int(self.common.get("seed", 0), "seed", minimum=0)
        return _HeldOutDistill(held_out=self.val_from_train, held_out_seed=seed, **kwargs)

    @property
    def method(self) -> str:
        return self.base.method

    @functools.cache  # noqa: B019 - one workflow, one val split: read it once for every trial
    def _val(self) -> RealDataset:
        return self.base._load("val")

    def _record_file(self) -> Path:
        """The search record kept beside the dataset config, named by its cell."""
        stem = Path(str(self.base.dataset)).stem.lower()
        return self.config_dir / "tune" / f"{stem}_{self.base.preset_name}_{self.method}_ipc{self.base.ipc}.json"

    def _earlier(self) -> list[dict[str, Any]]:
        """The searched keys of the settings every earlier search of this cell started from, oldest first.

        A search's trial 0 is the current settings, so without these a second search could no longer reach what the
        first one replaced: BreastMNIST PTM ipc 2's original settings scored 72.0 on test, the first search's choice
        66.7, and the second search (on a wider pool) started from that choice and chose one scoring 71.0.
        """
        path = self._record_file()
        if not path.is_file():
            return []
        record = json.loads(path.read_text())
        earlier = list(record.get("earlier_settings", []))
        first = (record.get("trials") or [{}])[0].get("settings")
        if first is not None:
            earlier.append({k: first[k] for k in self.space if k in first})
        unique: list[dict[str, Any]] = []
        for settings in earlier:
            if settings and settings not in unique:
                unique.append(settings)
        return unique

    def _val_pool(self) -> dict[str, Any]:
        """What the candidates are ranked on: the val split, plus the images held out of the train split."""
        return {"images": len(self._val()), "held_out_of_train": self.base.held_out_images,
                "val_from_train": self.val_from_train}

    @functools.cache  # noqa: B019 - read once: the settings of every candidate are resolved against it
    def _train(self) -> RealDataset:
        return self.base._load("train")

    def _settings(self, override: dict[str, Any]) -> dict[str, Any]:
        """Every method option a candidate runs with: ``configs/`` now, the fixed options, then ``override``.

        Kept in the record so a re-score (or a resumed search) runs what the trial ran even after the search wrote
        its winner into ``configs/`` (trial 0, "the current settings", would otherwise change meaning).
        """
        train = self._train()
        return deep_merge(self.base._options(train, self.base._preset(train.spatial_dims)), override)

    def _score(self, out: Path, options: dict[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Distil into ``out`` with ``options`` and ``seed`` (no evaluation, so no test split); score on val."""
        wf = self._workflow(dataset=self.base.dataset, output_dir=str(out), method=self.method, ipc=self.base.ipc,
                            evaluate=False, method_options=options, **{**self.common, "seed": seed})
        metrics = wf.run() if not (out / "metrics.json").is_file() else json.loads((out / "metrics.json").read_text())
        syn = SyntheticSet.load(out / "synthetic.pt")
        val = self._val()
        result = self.base.protocol.evaluate_set(syn, val, self.base.eval_arch, self.base._preset(val.spatial_dims),
                                                 seed, self.base.device, progress=self.base.progress,
                                                 optimizer=self.base.eval_optimizer_def)
        return result.summary, metrics

    def score_settings(self, override: dict[str, Any], seeds: Sequence[int], out_dir: str | Path) -> dict[str, Any]:
        """Score settings the search may not have tried, exactly as a re-scored trial is scored.

        One distillation per seed into ``out_dir/seed<seed>`` (resumed if finished), ranked on this search's val pool
        (the val split plus any images held out of train). Never reads the test split and writes nothing into
        ``configs/``: a choice belongs to a search, this only says where other settings would have ranked.

        Args:
            override: method options over ``configs/`` and the fixed ``method_options``.
            seeds: distillation seeds; each draws new experts' order, initial images and evaluation networks.
            out_dir: folder of the runs.

        Returns:
            The settings run, the val pool, per-seed val scores, and their mean and std.
        """
        if not seeds:
            raise ValueError("score_settings: `seeds` is empty; give at least one distillation seed.")
        options = self._settings(override)
        rows = []
        for seed in seeds:
            s, _ = self._score(Path(out_dir) / f"seed{seed}", options, seed)
            rows.append({"seed": seed, "val_balanced_acc": s["test_balanced_acc_mean"], "val_auc": s["test_auc_mean"],
                         "val_images": len(self._val())})
        accs = [r["val_balanced_acc"] for r in rows]
        std = _std(accs)
        return {"settings": _jsonable(options), "val_pool": self._val_pool(), "scores": rows,
                "val_balanced_acc_mean": _mean(accs), "val_balanced_acc_seed_std": std}

    def _trial(self, index: int, override: dict[str, Any]) -> dict[str, Any]:
        """Distil with ``override`` and score the set on the val split."""
        settings = self._settings(override)
        start = time.perf_counter()
        s, metrics = self._score(self.output_dir / "trials" / f"{index:03d}", deep_merge(self.method_options,
                                                                                         override), self.base.seed)
        return {"trial": index, "override": _jsonable(override), "settings": _jsonable(settings),
                "val_balanced_acc": s["test_balanced_acc_mean"], "val_balanced_acc_std": s["test_balanced_acc_std"],
                "val_auc": s["test_auc_mean"], "val_acc": s["test_acc_mean"], "learned_lr": metrics.get("learned_lr"),
                "val_images": len(self._val()), "seconds": time.perf_counter() - start}

    def _rescore(self, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Distil the best ``rescore_top`` trials and trial 0 with more seeds; their per-seed val scores."""
        ranked = sorted(trials, key=lambda t: (-t["val_balanced_acc"], -t["val_auc"], t["trial"]))
        chosen = sorted({t["trial"] for t in ranked[: self.rescore_top]} | {trials[0]["trial"]})
        by_index = {t["trial"]: t for t in trials}
        path = self.output_dir / "rescore.json"
        record = json.loads(path.read_text()) if path.is_file() else []
        done = {(r["trial"], r["seed"]): r for r in record}
        for index in chosen:
            trial = by_index[index]
            if "settings" not in trial:
                logger.warning("tune: trial %d has no recorded settings (an older record); re-scoring it against the "
                               "current configs/", index)
            options = trial.get("settings") or self._settings(trial["override"])
            for seed in range(self.base.seed + 1, self.base.seed + 1 + self.rescore_seeds):
                if (index, seed) in done:
                    continue
                start = time.perf_counter()
                s, _ = self._score(self.output_dir / "trials" / f"{index:03d}_seed{seed}", options, seed)
                entry = {"trial": index, "seed": seed, "val_balanced_acc": s["test_balanced_acc_mean"],
                         "val_auc": s["test_auc_mean"], "val_acc": s["test_acc_mean"],
                         "seconds": time.perf_counter() - start}
                done[(index, seed)] = entry
                record.append(entry)
                atomic_write_json(record, path)
                logger.info("tune %s re-score trial %d seed %d: val balanced acc %.3f", self.method, index, seed,
                            entry["val_balanced_acc"])
        out = []
        for index in chosen:
            trial = by_index[index]
            runs = [trial["val_balanced_acc"]] + [done[(index, s)]["val_balanced_acc"] for s in
                                                   range(self.base.seed + 1, self.base.seed + 1 + self.rescore_seeds)]
            aucs = [trial["val_auc"]] + [done[(index, s)]["val_auc"] for s in
                                         range(self.base.seed + 1, self.base.seed + 1 + self.rescore_seeds)]
            std = _std(runs)
            out.append({**trial, "val_balanced_acc_single_seed": trial["val_balanced_acc"],
                        "val_balanced_acc": _mean(runs), "val_balanced_acc_seed_std": std, "val_auc": _mean(aucs),
                        "val_balanced_acc_per_seed": runs, "val_seeds": len(runs)})
        return out

    def run(self) -> dict[str, Any]:
        """Run trials until the budget is spent; write ``tune.json`` and (by default) the dataset config."""
        with guarded_run(self.output_dir, ("tune.json",), extra={"workflow": type(self).__name__}):
            return self._run()

    def _run(self) -> dict[str, Any]:
        check_output_dir(self.output_dir)
        record_path = self.output_dir / "search.json"
        done = {t["trial"]: t for t in json.loads(record_path.read_text())} if record_path.is_file() else {}
        pool = len(self._val())
        for t in done.values():  # scores on another pool (a changed --val_from_train) cannot be compared
            if t.get("val_images", pool) != pool:
                raise OptionError(f"{record_path}: trial {t['trial']} was scored on {t['val_images']} val images, "
                                  f"this search scores on {pool} (--val_from_train {self.val_from_train}); resume "
                                  f"with the same --val_from_train or use a new --output_dir.")
        # Trial 0 (the current settings), then the settings earlier searches started from, then the grid.
        grid = candidate_grid(self.space, self.base.seed)
        first = (done.get(0) or {}).get("settings") or _jsonable(self._settings({}))
        current = {k: first[k] for k in self.space if k in first}
        earlier = [e for e in self._earlier() if e != current]  # (a resumed search's own trial 0 is no candidate)
        candidates = [grid[0], *earlier, *grid[1:]][: self.max_trials]
        for i, t in done.items():  # a record from another candidate order cannot be resumed trial by trial
            if i < len(candidates) and t["override"] != _jsonable(candidates[i]):
                raise OptionError(f"{record_path}: trial {i} ran {t['override']}, this search's candidate {i} is "
                                  f"{_jsonable(candidates[i])} (another search space, seed or search record); use a "
                                  "new --output_dir.")
        trials: list[dict[str, Any]] = []
        start = time.perf_counter()
        # Time kept for the re-score: (top few + trial 0) x extra seeds, at the mean trial's cost.
        reserve = (self.rescore_top + 1) * self.rescore_seeds if self.rescore_top else 0
        for i, override in enumerate(candidates):
            if i not in done:  # a grid value equal to the current setting would re-run trial 0 with the same seed
                settings = _jsonable(self._settings(override))
                same = next((t["trial"] for t in trials if t.get("settings") == settings), None)
                if same is not None:
                    logger.info("tune: candidate %d %s runs trial %d's settings; skipped", i, override, same)
                    continue
            spent = time.perf_counter() - start
            mean = sum(t["seconds"] for t in trials) / len(trials) if trials else 0.0
            if trials and i not in done and spent + mean * (1 + reserve) > self.budget_s:
                logger.info("tune: budget of %.0f s reached after %d trial(s)", self.budget_s, len(trials))
                break
            trial = done.get(i) or self._trial(i, override)
            trials.append(trial)
            logger.info("tune %s trial %d %s: val balanced acc %.3f, AUC %.3f", self.method, i, trial["override"],
                        trial["val_balanced_acc"], trial["val_auc"])
            atomic_write_json(trials, record_path)
        if self.rescore_top and len(trials) < 2:
            logger.warning("tune: the budget allowed one trial only; nothing to re-score (raise --budget_minutes)")
        # One trial leaves nothing to choose between: re-scoring it would only spend time.
        rescored = self._rescore(trials) if self.rescore_top and len(trials) > 1 else []
        pool = rescored or trials
        best = max(pool, key=lambda t: (t["val_balanced_acc"], t["val_auc"], -t["trial"]))
        result = {"dataset": self.base.dataset, "method": self.method, "ipc": self.base.ipc,
                  "preset": self.base.preset_name, "seed": self.base.seed, "selected_on": "val",
                  "val_pool": self._val_pool(),
                  "search_space": {k: [_jsonable(v) for v in vs] for k, vs in self.space.items()},
                  "fixed_options": self.method_options, "best": best, "trials": trials, "rescored": rescored,
                  "seconds": time.perf_counter() - start, "budget_seconds": self.budget_s}
        if self.write_config:
            result["config_file"] = str(self._write_config(best, record_path, rescored))
        atomic_write_json(result, self.output_dir / "tune.json")
        return result

    def _write_config(self, best: dict[str, Any], record_path: Path, rescored: list[dict[str, Any]]) -> Path:
        """Merge the winner into ``presets.<preset>.methods.<method>.ipc<k>`` of the dataset's config file."""
        current = Path(config_path(self.base.dataset))
        stem = Path(str(self.base.dataset)).stem.lower()
        path = self.config_dir / f"{stem}.json"
        if path.is_file():
            cfg = json.loads(path.read_text())
        else:  # a dataset without its own file starts from the settings it used so far (default.json's)
            cfg = {**(json.loads(current.read_text()) if current.is_file() else {}), "dataset": stem}
        preset = cfg.setdefault("presets", {}).setdefault(self.base.preset_name, {})
        entry = preset.setdefault("methods", {}).setdefault(self.method, {})
        key = f"ipc{self.base.ipc}"
        # Every searched key is written with the value the winner ran with, so the choice holds even when
        # configs/ changed since the trial ran (a resumed search whose trial 0 was an earlier config).
        settings = best.get("settings") or self._settings(best["override"])
        chosen = {k: settings[k] for k in self.space if k in settings}
        entry[key] = deep_merge(entry.get(key, {}), {**chosen, **best["override"]})
        # The search record goes beside the config (run folders are not kept with the code), named by its cell.
        record = self._record_file()
        trials = json.loads(record_path.read_text())
        earlier = self._earlier()  # read before the record is replaced: the next search tries these again
        atomic_write_json({"dataset": stem, "preset": self.base.preset_name, "method": self.method,
                           "ipc": self.base.ipc, "seed": self.base.seed, "selected_on": "val",
                           "val_pool": self._val_pool(),
                           "search_space": {k: [_jsonable(v) for v in vs] for k, vs in self.space.items()},
                           "fixed_options": self.method_options, "budget_seconds": self.budget_s,
                           "earlier_settings": earlier, "trials": trials, "rescored": rescored}, record)
        preset.setdefault("tuned", {}).setdefault(self.method, {})[key] = {
            "selected_on": "val",
            "val_balanced_acc": best["val_balanced_acc"],
            "val_auc": best["val_auc"],
            "override": best["override"],
            "val_seeds": best.get("val_seeds", 1),
            "val_images": self._val_pool()["images"],
            "n_trials": len(trials),
            "search_record": record.relative_to(self.config_dir).as_posix(),
            "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__,
        }
        atomic_write_json(cfg, path)
        logger.info("tune: wrote the chosen %s settings for ipc %d into %s", self.method, self.base.ipc, path)
        return path
