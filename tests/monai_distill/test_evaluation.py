"""The evaluation protocol on real BreastMNIST: training works, metrics are sane, seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from monai_distill.data import ClassBalancedSampler, load_medmnist
from monai_distill.evaluation import classification_metrics, evaluate_models, train_network
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
