"""Settings chosen on the val split: a tiny search on BreastMNIST writes the winner and its record, never the test."""

from __future__ import annotations

import json

import pytest
import torch

from monai_distill.data import SyntheticSet
from monai_distill.data import medmnist as medmnist_module
from monai_distill.presets import method_settings
from monai_distill.tune import SEARCH_SPACES, TuneWorkflow, candidate_grid

TINY = {"eval_models": 1, "eval_epochs": 2, "preset_overrides": {"width": 8}, "progress": False, "device": "cpu"}


def _record_splits(monkeypatch) -> list[str]:
    """The MedMNIST splits read from now on; reading the test split fails the test."""
    opened: list[str] = []
    real_loader = medmnist_module.load_npz_arrays

    def loader(path, split):
        opened.append(split)
        if split == "test":
            raise AssertionError("the test split was opened")
        return real_loader(path, split)

    monkeypatch.setattr(medmnist_module, "load_npz_arrays", loader)
    return opened


def test_candidate_grid_starts_with_the_current_settings():
    grid = candidate_grid({"a": [1, 2], "b": [3, 4, 5]}, seed=0)
    assert grid[0] == {} and len(grid) == 7
    assert sorted(map(str, grid[1:])) == sorted(map(str, [{"a": a, "b": b} for a in (1, 2) for b in (3, 4, 5)]))
    assert grid == candidate_grid({"a": [1, 2], "b": [3, 4, 5]}, seed=0)  # seeded
    assert candidate_grid({"a": [1, 2]}, seed=0, limit=2)[0] == {}


def test_every_method_with_settings_has_a_grid():
    assert {"mtt", "ftd", "datm", "ptm", "hoptm", "dc", "dsa", "dm", "histodd"} <= set(SEARCH_SPACES)
    assert {"lr_lr", "ce_weight", "beta2"} <= set(SEARCH_SPACES["ptm"])  # the paper's forms are candidates
    assert {"label_epoch", "loss_threshold"} <= set(SEARCH_SPACES["datm"])


def test_every_grid_key_is_an_option_of_its_method():
    import dataclasses

    from monai_distill.methods import get_method
    from monai_distill.methods.image_distiller import ImageDistiller

    for name, space in SEARCH_SPACES.items():
        cls = get_method(name)
        if issubclass(cls, ImageDistiller):
            valid = set(cls.COMMON).union(*(set(d) for d in cls.DEFAULTS.values()))
        else:
            valid = {f.name for f in dataclasses.fields(cls.options_cls)}
        assert set(space) <= valid, (name, sorted(set(space) - valid))


def test_tune_on_val_writes_settings_and_record_and_never_opens_test(medmnist_dir, tmp_path, monkeypatch, one_thread):
    opened = _record_splits(monkeypatch)
    configs = tmp_path / "configs"
    configs.mkdir()
    out = tmp_path / "tune"
    result = TuneWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(out), method="dm",
                          ipc=2, budget_minutes=10, max_trials=3, search_space={"lr_img": [0.1, 10.0]},
                          method_options={"iterations": 3}, config_dir=str(configs), **TINY).run()
    assert "test" not in opened and {"train", "val"} <= set(opened)
    assert len(result["trials"]) == 3 and result["trials"][0]["override"] == {}
    assert result["selected_on"] == "val"
    # every trial records the settings it ran with (what configs/ said then, with its override on top)
    assert [t["settings"]["lr_img"] for t in result["trials"][1:]] == [t["override"]["lr_img"]
                                                                       for t in result["trials"][1:]]
    # the best 2 single-seed trials and trial 0 are distilled again with 2 more seeds; the best mean wins
    rescored = result["rescored"]
    assert 0 in [r["trial"] for r in rescored] and len(rescored) in (2, 3)
    for r in rescored:
        assert r["val_seeds"] == 3 and len(r["val_balanced_acc_per_seed"]) == 3
        assert r["val_balanced_acc"] == pytest.approx(sum(r["val_balanced_acc_per_seed"]) / 3)
        assert (out / "trials" / f"{r['trial']:03d}_seed2" / "synthetic.pt").is_file()
    best = result["best"]
    assert best["val_balanced_acc"] == max(r["val_balanced_acc"] for r in rescored)
    assert len(json.loads((out / "rescore.json").read_text())) == 2 * len(rescored)
    record = json.loads((out / "search.json").read_text())
    assert [t["trial"] for t in record] == [0, 1, 2]
    assert (out / "tune.json").is_file() and json.loads((out / "status.json").read_text())["status"] == "finished"
    cfg = json.loads((configs / "breastmnist.json").read_text())
    tuned = cfg["presets"]["quick"]["tuned"]["dm"]["ipc2"]
    assert tuned["selected_on"] == "val" and tuned["override"] == best["override"]
    assert tuned["val_balanced_acc"] == best["val_balanced_acc"] and tuned["n_trials"] == 3
    assert tuned["val_seeds"] == 3
    # the search record is kept beside the config (relative path), not only in the run folder
    kept = json.loads((configs / tuned["search_record"]).read_text())
    assert tuned["search_record"] == "tune/breastmnist_quick_dm_ipc2.json" and kept["trials"] == record
    assert kept["selected_on"] == "val" and kept["search_space"] == {"lr_img": [0.1, 10.0]}
    assert kept["rescored"] == rescored
    # the written settings are what the bundles now read for (breastmnist, dm, ipc 2): the value the winner ran with
    monkeypatch.setattr("monai_distill.presets.CONFIG_DIR", configs)
    assert method_settings("breastmnist", "dm", 2, "quick").get("lr_img") == best["settings"]["lr_img"]
    # a second run resumes from the record instead of distilling again
    again = TuneWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(out), method="dm",
                         ipc=2, budget_minutes=10, max_trials=3, search_space={"lr_img": [0.1, 10.0]},
                         method_options={"iterations": 3}, config_dir=str(configs), **TINY).run()
    assert [t["seconds"] for t in again["trials"]] == [t["seconds"] for t in record]
    assert again["rescored"] == rescored


def test_bad_search_space_is_named(medmnist_dir, tmp_path, one_thread):
    with pytest.raises(ValueError, match="search_space"):
        TuneWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(tmp_path), method="dm",
                     search_space={"lr_img": []}, **TINY)
    single = TuneWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(tmp_path / "one"),
                          method="dm", ipc=2, max_trials=1, method_options={"iterations": 2}, write_config=False,
                          **TINY).run()
    assert len(single["trials"]) == 1 and single["rescored"] == []  # one trial: nothing to re-score
    with pytest.raises(ValueError, match="rescore_seeds"):
        TuneWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(tmp_path), method="dm",
                     rescore_seeds=0, **TINY)


def test_val_from_train_ranks_on_a_wider_pool_and_distils_without_it(medmnist_dir, tmp_path, one_thread):
    from monai_distill.data import load_dataset, stratified_holdout

    train = load_dataset("breastmnist", split="train", dataset_dir=str(medmnist_dir), size=28)
    val = load_dataset("breastmnist", split="val", dataset_dir=str(medmnist_dir), size=28)
    kept, held = stratified_holdout(train, 0.2, seed=0)
    # stratified, disjoint, seeded: every class gives about a fifth, every image lands on exactly one side
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(len(train)))
    assert train.take(held).class_counts() == [round(0.2 * n) for n in train.class_counts()]
    assert torch.equal(held, stratified_holdout(train, 0.2, seed=0)[1])
    assert not torch.equal(held, stratified_holdout(train, 0.2, seed=1)[1])
    out = tmp_path / "tune"
    kwargs = dict(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(out), method="herding",
                  ipc=2, max_trials=1, write_config=False, **TINY)
    result = TuneWorkflow(val_from_train=0.2, **kwargs).run()
    assert result["val_pool"] == {"images": len(val) + len(held), "held_out_of_train": len(held),
                                  "val_from_train": 0.2}
    assert result["trials"][0]["val_images"] == len(val) + len(held)
    # the trial's set was chosen from the kept images only: none of them is a held-out image
    syn = SyntheticSet.load(out / "trials" / "000" / "synthetic.pt")
    held_images = train.images[held].flatten(1)
    assert torch.cdist(syn.images.flatten(1), held_images).min() > 0
    # a resumed search on another pool is refused, naming the record
    with pytest.raises(ValueError, match=r"search\.json.*val_from_train"):
        TuneWorkflow(val_from_train=0.0, **kwargs).run()
    with pytest.raises(ValueError, match="val_from_train"):
        TuneWorkflow(val_from_train=1.0, **kwargs)


def test_a_candidate_with_the_current_settings_is_not_run_twice(medmnist_dir, tmp_path, one_thread):
    # lr_img 0.5 is what the current settings say (as a fixed option here, as a configs/ entry after a search)
    result = TuneWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(tmp_path), method="dm",
                          ipc=2, max_trials=3, method_options={"iterations": 2, "lr_img": 0.5},
                          search_space={"lr_img": [0.5, 5.0]}, write_config=False, **TINY).run()
    assert [t["settings"]["lr_img"] for t in result["trials"]] == [0.5, 5.0]
    assert [t["trial"] for t in result["trials"]] in ([0, 1], [0, 2])


def test_a_later_search_tries_again_what_earlier_searches_started_from(medmnist_dir, tmp_path, monkeypatch,
                                                                       one_thread):
    import shutil

    from monai_distill.presets import CONFIG_DIR

    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("default.json", "breastmnist.json"):  # the real file: its shared sections hold trajectory keys
        shutil.copy(CONFIG_DIR / name, configs / name)
    monkeypatch.setattr("monai_distill.presets.CONFIG_DIR", configs)  # the searches read what they wrote
    kwargs = dict(dataset="breastmnist", dataset_dir=str(medmnist_dir), method="dm", ipc=2, max_trials=2,
                  rescore_top=0, search_space={"lr_img": [0.5, 5.0]}, config_dir=str(configs), **TINY)
    fixed = {"iterations": 2}
    first = TuneWorkflow(output_dir=str(tmp_path / "a"), method_options=fixed, **kwargs).run()
    # the winner is written; make the next search start from another value, as if the first chose it
    cfg = json.loads((configs / "breastmnist.json").read_text())
    cfg["presets"]["quick"]["methods"]["dm"]["ipc2"]["lr_img"] = 50.0
    (configs / "breastmnist.json").write_text(json.dumps(cfg))
    record = json.loads((configs / "tune" / "breastmnist_quick_dm_ipc2.json").read_text())
    record["trials"][0]["settings"]["lr_img"] = 0.25  # what the first search started from
    (configs / "tune" / "breastmnist_quick_dm_ipc2.json").write_text(json.dumps(record))
    second = TuneWorkflow(output_dir=str(tmp_path / "b"), method_options=fixed, **kwargs).run()
    assert [t["settings"].get("lr_img") for t in second["trials"]] == [50.0, 0.25]  # current, then the earlier start
    kept = json.loads((configs / "tune" / "breastmnist_quick_dm_ipc2.json").read_text())
    assert {"lr_img": 0.25} in kept["earlier_settings"]
    assert first["selected_on"] == second["selected_on"] == "val"


def test_score_settings_ranks_untried_settings_as_a_trial_and_never_opens_test(medmnist_dir, tmp_path, monkeypatch,
                                                                                 one_thread):
    opened = _record_splits(monkeypatch)
    kwargs = dict(dataset="breastmnist", dataset_dir=str(medmnist_dir), method="dm", ipc=2, max_trials=1,
                  method_options={"iterations": 2}, write_config=False, val_from_train=0.2, **TINY)
    search = TuneWorkflow(output_dir=str(tmp_path / "search"), **kwargs)
    trial0 = search.run()["trials"][0]
    scores = search.score_settings({}, [search.base.seed, 5], tmp_path / "scores")
    assert "test" not in opened
    assert [r["seed"] for r in scores["scores"]] == [search.base.seed, 5]
    # the current settings with the search's seed are trial 0 again: same pool, same score
    assert scores["scores"][0]["val_balanced_acc"] == pytest.approx(trial0["val_balanced_acc"])
    assert scores["val_pool"] == search.run()["val_pool"]
    assert scores["val_balanced_acc_mean"] == pytest.approx(sum(r["val_balanced_acc"] for r in scores["scores"]) / 2)
    assert (tmp_path / "scores" / "seed5" / "synthetic.pt").is_file()
    with pytest.raises(ValueError, match="seeds"):
        search.score_settings({}, [], tmp_path / "none")
