"""The Distiller: frozen teacher, weighted terms, feature taps by module path, clear errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tinykd import Distiller, FeatureTaps, create_model
from tinykd.errors import TinykdError
from tinykd.losses import build_loss_term, kd_loss


def terms(**weights: float) -> dict:
    params = {"kd": {"temperature": 4.0}, "ce": {}, "mse": {}}
    return {name: (build_loss_term(name, params[name]), w) for name, w in weights.items()}


@pytest.fixture()
def pair() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    return teacher, student, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))


def test_teacher_is_frozen_and_stays_in_eval_mode(pair) -> None:
    teacher, student, x, y = pair
    distiller = Distiller(teacher, student, terms(ce=0.1, kd=0.9), example_inputs=x)
    distiller.train()
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert not trainable & {id(p) for p in teacher.parameters()}
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running stats included
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    logits, losses = distiller(x, y)
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert logits.shape == (8, 10)


def test_teacher_is_outside_the_module_tree_but_moves_with_it(pair) -> None:
    teacher, student, x, _ = pair
    distiller = Distiller(teacher, student, terms(kd=1.0), example_inputs=x)
    assert not any(k.startswith("teacher") for k in distiller.state_dict())
    assert {id(p) for p in distiller.parameters()} == {id(p) for p in student.parameters()}
    distiller.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64


def test_losses_are_weighted_per_term(pair) -> None:
    teacher, student, x, y = pair
    distiller = Distiller(teacher, student, terms(ce=0.25, kd=2.0), example_inputs=x).eval()
    _, losses = distiller(x, y)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    assert losses["ce"].item() == pytest.approx(0.25 * nn.functional.cross_entropy(s, y).item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(2.0 * kd_loss(s, t, 4.0).item(), rel=1e-5)
    assert distiller.formula() == "0.25 * ce(label_smoothing=0.0) + 2 * kd(temperature=4.0)"


def test_without_teacher_it_is_supervised_training() -> None:
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    distiller = Distiller(None, student, terms(ce=1.0))
    _, losses = distiller(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    assert list(losses) == ["ce"]
    with pytest.raises(TinykdError, match="need a teacher"):
        Distiller(None, student, terms(kd=1.0))


def test_mismatched_outputs_are_caught_on_the_probe_batch(pair) -> None:
    _, student, x, _ = pair
    teacher = create_model("resnet8", num_classes=100, in_channels=1)
    with pytest.raises(TinykdError, match=r"teacher outputs shape \(8, 100\) but student outputs \(8, 10\)"):
        Distiller(teacher, student, terms(kd=1.0), example_inputs=x)


def test_fitnet_hint_through_hooks_with_different_shapes(pair) -> None:
    teacher, student, x, y = pair
    hint = build_loss_term("fitnet", {"student": "stage2", "teacher": "layer3"})
    distiller = Distiller(teacher, student, {"ce": (build_loss_term("ce", {}), 1.0), "hint": (hint, 10.0)}, x)
    assert hint.adapter is not None
    adapter_ids = {id(p) for p in hint.adapter.parameters()}
    assert adapter_ids <= {id(p) for p in distiller.trainable_parameters()}
    _, losses = distiller(x, y)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in hint.adapter.parameters())
    assert losses["hint"] > 0


def test_unknown_module_path_lists_close_matches(pair) -> None:
    teacher, student, x, _ = pair
    hint = build_loss_term("fitnet", {"student": "stage2", "teacher": "layer33"})
    with pytest.raises(TinykdError, match=r"no module 'layer33' in the teacher .*did you mean: layer3"):
        Distiller(teacher, student, {"hint": (hint, 1.0)}, x)


def test_taps_work_on_an_unmodified_torchvision_model() -> None:
    model = torchvision.models.resnet18(num_classes=5).eval()
    with FeatureTaps(model, ["layer2", "layer4.1.conv2"]) as taps:
        model(torch.randn(2, 3, 64, 64))
        features = taps.pop()
    assert features["layer2"].shape == (2, 128, 8, 8)
    assert features["layer4.1.conv2"].shape == (2, 512, 2, 2)
    assert not model.layer2._forward_hooks  # removed on leaving the block


def test_taps_take_the_first_tensor_of_tuple_outputs() -> None:
    class Layer(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return x * 2, None

    model = nn.Sequential(Layer())
    taps = FeatureTaps(model, ["0"])
    model(torch.ones(1, 3))
    assert torch.equal(taps.pop()["0"], torch.full((1, 3), 2.0))
    assert taps.pop() == {}
    taps.remove()


def test_a_bf16_teacher_gives_float32_outputs_close_to_fp32(pair) -> None:
    teacher, student, x, y = pair
    reference = Distiller(teacher, student, terms(kd=1.0), example_inputs=x)
    _, fp32 = reference.eval()(x, y)
    import copy

    bf16 = Distiller(copy.deepcopy(teacher), student, terms(kd=1.0), example_inputs=x, teacher_dtype=torch.bfloat16)
    assert next(bf16.teacher.parameters()).dtype == torch.bfloat16
    _, losses = bf16.eval()(x, y)
    assert losses["kd"].dtype == torch.float32
    assert losses["kd"].item() == pytest.approx(fp32["kd"].item(), rel=0.05)
