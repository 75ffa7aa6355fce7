"""DistillWorkflow with a trajectory method: checkpoint/resume bit-identical on CPU, NaN stops, logs over time."""

from __future__ import annotations

import json

import pytest
import torch

from monai_distill.data import SyntheticSet
from monai_distill.methods import DivergenceError
from monai_distill.methods.ptm import PTM
from monai_distill.workflows import INTERRUPT_ENV, BuffersWorkflow, DistillWorkflow, InterruptedRun

from .trajectory_helpers import options


def _workflow(out, medmnist_dir, buffers, resume=False, evaluate=False, **kw):
    opts = options("ptm", buffers, num_iterations=6, max_end_epoch=3, retrain_points=2)
    return DistillWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(out), method="ptm",
                           ipc=2, method_options=opts, resume=resume, evaluate=evaluate, checkpoint_every=2,
                           buffer_dir=str(buffers), device="cpu", progress=False, eval_models=1, eval_epochs=3,
                           preset_overrides={"width": 8}, **kw)


@pytest.fixture(scope="module")
def buffers(tmp_path_factory):
    return tmp_path_factory.mktemp("resume_buffers")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, medmnist_dir, buffers):
    out = tmp_path_factory.mktemp("whole")
    _workflow(out, medmnist_dir, buffers).run()
    return out


def _same_set(a_path, b_path):
    a, b = SyntheticSet.load(a_path), SyntheticSet.load(b_path)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.lr == b.lr and a.meta == b.meta


@pytest.mark.parametrize("stop_at", [3, 4])  # between checkpoints (2 is redone) and on a checkpoint
def test_interrupted_then_resumed_is_identical(stop_at, uninterrupted, medmnist_dir, buffers, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(INTERRUPT_ENV, str(stop_at))
    with pytest.raises(InterruptedRun, match=f"after iteration {stop_at}"):
        _workflow(out, medmnist_dir, buffers).run()
    assert not (out / "synthetic.pt").exists()
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["progress"]["iteration"] == 2 * (stop_at // 2)
    monkeypatch.delenv(INTERRUPT_ENV)
    metrics = _workflow(out, medmnist_dir, buffers, resume=True).run()
    assert metrics["resumed_from"] == 2 * (stop_at // 2) and metrics["iterations"] == 6
    _same_set(out / "synthetic.pt", uninterrupted / "synthetic.pt")
    whole = json.loads((uninterrupted / "metrics.json").read_text())
    assert metrics["final_losses"] == whole["final_losses"]


def test_resume_refuses_another_configuration(uninterrupted, medmnist_dir, buffers, tmp_path):
    other = DistillWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(uninterrupted),
                            method="ptm", ipc=2, resume=True, buffer_dir=str(buffers), device="cpu", progress=False,
                            evaluate=False, preset_overrides={"width": 8},
                            method_options=options("ptm", buffers, num_iterations=7))
    with pytest.raises(ValueError, match="another configuration"):
        other.run()


def test_nan_stops_and_keeps_the_last_good_checkpoint(medmnist_dir, buffers, tmp_path, monkeypatch):
    real_terms = PTM.loss_terms

    def poisoned(self, iteration, *args):
        terms = real_terms(self, iteration, *args)
        if iteration == 3:
            terms["overlap"] = (self.opts.beta2, torch.tensor(float("inf")))
        return terms

    monkeypatch.setattr(PTM, "loss_terms", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(DivergenceError, match="ptm: overlap became inf at iteration 3"):
        _workflow(out, medmnist_dir, buffers).run()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["progress"]["iteration"] == 2
    assert torch.isfinite(state["distiller"]["images"]).all()
    assert not (out / "synthetic.pt").exists() and not (out / "metrics.json").exists()


def test_logs_accuracy_over_time_and_pictures(medmnist_dir, buffers, tmp_path):
    out = tmp_path / "logs"
    metrics = _workflow(out, medmnist_dir, buffers, evaluate=True, eval_every=3).run()
    history = metrics["eval_history"]
    assert [e["iteration"] for e in history] == [0, 3, 6]
    seconds = [e["distill_seconds"] for e in history]
    assert seconds == sorted(seconds) and seconds[-1] == metrics["distill_seconds"]
    assert history[-1]["test_acc_mean"] == metrics["test_acc_mean"]
    for name in ("synthetic.png", "loss_curve.png", "accuracy_over_time.png", "progress/synthetic_it00000.png",
                 "progress/synthetic_it00003.png"):
        assert (out / name).stat().st_size > 500, name
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,match,ce,overlap") and len(rows) == 7


def test_buffers_workflow_builds_only_the_experts(medmnist_dir, tmp_path):
    opts = options("mtt", tmp_path / "b")
    wf = BuffersWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(tmp_path / "out"),
                         method="mtt", ipc=2, method_options=opts, device="cpu", progress=False,
                         preset_overrides={"width": 8})
    info = wf.run()
    assert info["trained_now"] == [0, 1] and info["epochs"] == 3
    assert len(list((tmp_path / "b").glob("*/expert_*.pt"))) == 2
    assert wf.run()["trained_now"] == []  # already there
    assert json.loads((tmp_path / "out" / "buffers.json").read_text())["num_experts"] == 2
    with pytest.raises(ValueError, match="does not use expert buffers"):
        BuffersWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=str(tmp_path / "o2"),
                        method="random").run()
