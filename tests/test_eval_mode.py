"""evaluating(model): eval mode and no_grad inside, every module's own flag and the grad mode back afterwards."""
import pytest
import torch
from torch import nn

from layeract_patch._eval_mode import evaluating


def model_with_a_frozen_norm():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    model[1].eval()  # frozen batch norm, as fine-tuning recipes do
    return model


def test_inside_eval_and_no_grad_afterwards_each_flag_as_it_was():
    model = model_with_a_frozen_norm()
    before = [m.training for m in model.modules()]
    with evaluating(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled() and not model(torch.randn(5, 3)).requires_grad
    assert [m.training for m in model.modules()] == before == [True, True, False, True, True]
    assert torch.is_grad_enabled()


def test_an_error_inside_hands_the_model_back_as_it_came():
    model = model_with_a_frozen_norm()
    before = [m.training for m in model.modules()]
    with torch.no_grad():  # the grad mode it came in is the one restored, not "on"
        with pytest.raises(RuntimeError, match="shape"):
            with evaluating(model):
                model(torch.randn(5, 7))
        assert not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == before


def test_running_statistics_are_read_not_written():
    model = model_with_a_frozen_norm()
    model[1].train()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with evaluating(model):
        model(torch.randn(8, 3) * 5 + 3)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
