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
