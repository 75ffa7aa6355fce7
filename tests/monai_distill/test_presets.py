import pytest

from monai_distill.presets import get_preset


def test_paper_preset_matches_the_seeds():
    p = get_preset("paper", 2)
    assert (p.eval_models, p.eval_epochs, p.width) == (10, 1000, 128)
    assert (p.momentum, p.weight_decay, p.eval_lr) == (0.9, 5e-4, 0.01)
    assert get_preset("paper", 3).width == 128


def test_overrides_and_errors():
    assert get_preset("quick", 2, eval_models=1).eval_models == 1
    assert get_preset("quick", 2, eval_models=None).eval_models == get_preset("quick", 2).eval_models
    with pytest.raises(KeyError, match="valid presets: paper, quick"):
        get_preset("fast")
    with pytest.raises(KeyError, match="valid keys"):
        get_preset("quick", 2, nets=3)


def test_standard_rung_sits_between_quick_and_paper():
    from monai_distill.methods import get_method
    from monai_distill.presets import get_preset, method_settings

    for dims in (2, 3):
        quick, standard, paper = (get_preset(n, dims) for n in ("quick", "standard", "paper"))
        assert quick.eval_epochs <= standard.eval_epochs <= paper.eval_epochs
        assert quick.eval_models <= standard.eval_models <= paper.eval_models
    for flag, dims in (("breastmnist", 2), ("pneumoniamnist", 2), ("adrenalmnist3d", 3)):
        q, s = (method_settings(flag, "ptm", 10, p, spatial_dims=dims) for p in ("quick", "standard"))
        assert s["num_iterations"] > q["num_iterations"] and s["buffers"]["flat"] is True
    for name in ("dc", "dsa", "dm", "histodd"):  # their own defaults have a standard budget, not the paper's
        assert "standard" in get_method(name).DEFAULTS


@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_3d_standard_gradient_matching_at_ipc_10_uses_the_configs_time_sized_loops(medmnist_dir, name):
    """The papers' 10/50 loops at ipc 10 cost ~270 s per outer iteration on 28^3 (7.5 h for 100): AdrenalMNIST3D's
    `standard` entry sizes DC/DSA to the 60-min 3D cell, and only there (2D and ipc 2 keep the papers' loops)."""
    import torch

    from monai_distill.data import load_medmnist
    from monai_distill.methods import DistillConfig, get_method
    from monai_distill.presets import method_settings

    real = load_medmnist("adrenalmnist3d", "train", medmnist_dir)
    sizes = {}
    for ipc in (2, 10):
        opts = method_settings("adrenalmnist3d", name, ipc, "standard", n_train=len(real), spatial_dims=3,
                               shared=False)
        cfg = DistillConfig(ipc=ipc, preset=get_preset("standard", 3), options=opts)
        d = get_method(name)(real, cfg, torch.device("cpu"))
        sizes[ipc] = (d.options["outer_loop"], d.options["inner_loop"], d.num_iterations)
    assert sizes == {2: (1, 1, 100), 10: (5, 10, 40)}
    assert method_settings("breastmnist", name, 10, "standard", spatial_dims=2, shared=False) == {}
