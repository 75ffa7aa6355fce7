"""The evaluation protocol on real BreastMNIST: training works, metrics are sane, seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from monai_distill.data import ClassBalancedSampler, load_medmnist
from monai_distill.evaluation import class_prior, classification_metrics, evaluate_models, prior_shift, train_network
from monai_distill.networks import get_network
from monai_distill.presets import get_preset

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return load_medmnist("breastmnist", "train", medmnist_dir), load_medmnist("breastmnist", "test", medmnist_dir)


def test_classification_metrics_known_values():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs, labels)
    assert m["acc"] == pytest.approx(0.75)
    assert m["balanced_acc"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["auc"] == pytest.approx(1.0)


def test_training_loss_falls_and_beats_chance(breast):
    train, test = breast
    preset = get_preset("quick", 2, width=16)
    torch.manual_seed(0)
    net = get_network("convnet", 2, 1, 2, (28, 28), width=16)
    losses = []

    def record(idx, logits, epoch):
        losses.append(torch.nn.functional.cross_entropy(logits, train.labels[idx]).item())

    train_network(net, train.images, train.labels, 8, 0.01, preset, torch.Generator().manual_seed(0), CPU,
                  on_batch=record)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    from monai_distill.evaluation import predict

    m = classification_metrics(predict(net, test.images, CPU), test.labels)
    assert m["auc"] > 0.6


def test_evaluate_models_reproducible_and_soft_labels(breast):
    train, test = breast
    preset = get_preset("quick", 2, width=8)
    idx = ClassBalancedSampler(train).balanced_indices(5, torch.Generator().manual_seed(1))
    x, y = train.images[idx], train.labels[idx]
    a = evaluate_models(x, y, test, "convnet", preset, seed=3, device=CPU, epochs=5, num_models=2, progress=False)
    b = evaluate_models(x, y, test, "convnet", preset, seed=3, device=CPU, epochs=5, num_models=2, progress=False)
    assert a.per_model == b.per_model
    assert len(a.per_model) == 2 and a.to_metrics()["n_eval_models"] == 2
    assert 0.0 <= a.summary["test_acc_mean"] <= 1.0
    soft = torch.nn.functional.one_hot(y, 2).float() * 0.9 + 0.05
    c = evaluate_models(x, soft, test, "convnet", preset, seed=3, device=CPU, epochs=5, num_models=1, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in c.per_model[0].values())


def test_shape_mismatch_is_clear(breast):
    _, test = breast
    preset = get_preset("quick", 2, width=8)
    with pytest.raises(ValueError, match="test split of breastmnist"):
        evaluate_models(torch.zeros(4, 1, 32, 32), torch.tensor([0, 1, 0, 1]), test, "convnet", preset, 0, CPU,
                        epochs=1, num_models=1)


def test_inference_batches_shrink_for_large_volumes_and_do_not_change_predictions(medmnist_dir):
    from monai_distill.evaluation import predict
    from monai_distill.utils import inference_batch_size

    assert inference_batch_size((1, 28, 28)) == inference_batch_size((1, 28, 28, 28)) == 256
    assert inference_batch_size((1, 64, 64, 64)) == 32  # a 256-volume 64³ batch would need ~10 GB of activations
    assert inference_batch_size((1, 512, 512, 512)) == 1
    vols = load_medmnist("adrenalmnist3d", "test", medmnist_dir, size=64).images[:40]
    torch.manual_seed(0)
    net = get_network("convnet", 3, 1, 2, (64, 64, 64), width=4, depth=2)
    torch.testing.assert_close(predict(net, vols, CPU), predict(net, vols, CPU, batch_size=40))


def test_prior_correction_on_hand_made_probabilities():
    """A network fitted on a balanced set answers 0.6/0.4; under a 20/80 train prior the Bayes decision flips."""
    fit = class_prior(torch.tensor([0, 1, 0, 1]), 2)
    target = class_prior(torch.tensor([0] + [1] * 4), 2)
    assert torch.allclose(fit, torch.tensor([0.5, 0.5])) and torch.allclose(target, torch.tensor([0.2, 0.8]))
    shift = prior_shift(fit, target)
    assert torch.allclose(shift, torch.log(torch.tensor([0.4, 1.6])))
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]])
    labels = torch.tensor([1, 1, 0, 1])
    m = classification_metrics(probs, labels, shift)
    # raw argmax: 0, 0, 0, 1 -> 2/4; corrected: 0.24 vs 0.64 -> 1, 1; 0.36 vs 0.16 -> 0; 1 -> 4/4
    assert m["acc"] == pytest.approx(0.5) and m["acc_prior"] == pytest.approx(1.0)
    assert m["balanced_acc"] == pytest.approx(classification_metrics(probs, labels)["balanced_acc"])
    # a fitted prior equal to the target changes nothing; soft labels give their mean as the prior
    same = prior_shift(target, target)
    assert classification_metrics(probs, labels, same)["acc_prior"] == m["acc"]
    assert torch.allclose(class_prior(torch.tensor([[0.25, 0.75], [0.75, 0.25]]), 2), torch.tensor([0.5, 0.5]))


def test_evaluate_models_reports_prior_corrected_accuracy(breast):
    train, test = breast
    idx = ClassBalancedSampler(train).balanced_indices(5, torch.Generator().manual_seed(0))
    preset = get_preset("quick", 2, width=8)
    prior = class_prior(train.labels, train.num_classes)
    res = evaluate_models(train.images[idx], train.labels[idx], test, "convnet", preset, 0, torch.device("cpu"),
                          epochs=5, num_models=2, progress=False, target_prior=prior)
    assert {"test_acc_prior_mean", "test_acc_prior_std"} <= set(res.summary)
    assert 0.0 <= res.summary["test_acc_prior_mean"] <= 1.0
    plain = evaluate_models(train.images[idx], train.labels[idx], test, "convnet", preset, 0, torch.device("cpu"),
                            epochs=5, num_models=2, progress=False)
    assert "test_acc_prior_mean" not in plain.summary
    assert plain.summary["test_acc_mean"] == res.summary["test_acc_mean"]


def test_val_selection_tests_the_best_val_epoch(breast, medmnist_dir):
    """With the val split as the test split, the tested weights score exactly the recorded best val score."""
    train, _ = breast
    val = load_medmnist("breastmnist", "val", medmnist_dir)
    idx = ClassBalancedSampler(train).balanced_indices(10, torch.Generator().manual_seed(2))
    preset = get_preset("quick", 2, width=8)
    res = evaluate_models(train.images[idx], train.labels[idx], val, "convnet", preset, 0, CPU, epochs=6,
                          num_models=2, progress=False, val=val)
    for m in res.per_model:
        assert 1 <= m["best_epoch"] <= 6
        assert m["balanced_acc"] == pytest.approx(m["val_balanced_acc"])
    with pytest.raises(ValueError, match="select_metric"):
        evaluate_models(train.images[idx], train.labels[idx], val, "convnet", preset, 0, CPU, epochs=1,
                        num_models=1, progress=False, val=val, select_metric="loss")
