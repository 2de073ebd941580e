"""Loss terms: the maths alone, without models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinykd.errors import TinykdError
from tinykd.losses import LOSSES, Outputs, build_loss_term, kd_loss


def test_kd_matches_hinton_formula() -> None:
    torch.manual_seed(0)
    s, t, temperature = torch.randn(8, 5), torch.randn(8, 5), 3.0
    p_t = F.softmax(t / temperature, dim=1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / temperature, dim=1))).sum(1).mean() * temperature**2
    assert torch.allclose(kd_loss(s, t, temperature), manual, atol=1e-6)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    x = torch.randn(4, 10)
    assert kd_loss(x, x, 4.0).abs() < 1e-6
    assert kd_loss(x, x.flip(1), 4.0) > 0


def test_kd_scales_with_temperature_squared_in_the_limit() -> None:
    # For large T, T^2 * KL -> (1/2K) * mean squared difference of centred logits: the T^2 keeps its scale.
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    assert kd_loss(s, t, 50.0) / kd_loss(s, t, 100.0) == pytest.approx(1.0, rel=0.02)


def test_kd_term_uses_logits_and_ignores_targets() -> None:
    term = build_loss_term("kd", {"temperature": 2})
    s, t = Outputs(torch.randn(4, 3)), Outputs(torch.randn(4, 3))
    assert torch.allclose(term(s, t, torch.zeros(4, dtype=torch.long)), kd_loss(s.logits, t.logits, 2.0))


def test_mse_is_mean_over_batch_and_classes() -> None:
    term = build_loss_term("mse", {})
    s, t = torch.zeros(2, 4), torch.ones(2, 4) * 2
    assert term(Outputs(s), Outputs(t), torch.zeros(2)).item() == pytest.approx(4.0)


def test_ce_with_label_smoothing() -> None:
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    term = build_loss_term("ce", {"label_smoothing": 0.1})
    expected = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.allclose(term(Outputs(logits), None, y), expected)
    assert not LOSSES.get("ce").needs_teacher


def test_fitnet_adapts_channels_and_resolution() -> None:
    term = build_loss_term("fitnet", {"student": "a", "teacher": "b"})
    s = Outputs(torch.randn(2, 3), {"a": torch.randn(2, 8, 14, 14)})
    t = Outputs(torch.randn(2, 3), {"b": torch.randn(2, 32, 7, 7)})
    term.build(s, t)
    loss = term(s, t, torch.zeros(2))
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in term.parameters())


def test_fitnet_on_hidden_states_uses_a_linear_adapter() -> None:
    term = build_loss_term("fitnet", {"student": "h", "teacher": "h"})
    s = Outputs(torch.randn(2, 3), {"h": torch.randn(2, 5, 16)})
    t = Outputs(torch.randn(2, 3), {"h": torch.randn(2, 5, 48)})
    term.build(s, t)
    assert isinstance(term.adapter, torch.nn.Linear)
    assert term(s, t, torch.zeros(2)) > 0


def test_attention_transfer_is_zero_for_same_maps() -> None:
    term = build_loss_term("at", {"student": ["a"], "teacher": ["b"]})
    f = torch.randn(2, 4, 8, 8)
    s, t = Outputs(torch.randn(2, 3), {"a": f}), Outputs(torch.randn(2, 3), {"b": f.repeat(1, 3, 1, 1)})
    term.build(s, t)
    assert term(s, t, torch.zeros(2)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("kd", {"temprature": 4}, "has no parameter 'temprature'; allowed: temperature"),
        ("kd", {"temperature": -1}, "temperature must be > 0"),
        ("kd", {"temperature": "hot"}, "parameter 'temperature'"),
        ("fitnet", {"student": "a"}, "parameter 'teacher'"),
        ("klx", {}, "unknown loss term 'klx'"),
    ],
)
def test_bad_term_parameters_are_one_line_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(TinykdError, match=message.replace("(", r"\(")) as info:
        build_loss_term(name, params)
    assert "\n" not in str(info.value)
