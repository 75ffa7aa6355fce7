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
