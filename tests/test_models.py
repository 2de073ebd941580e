"""The distillation-benchmark model family: shapes for MNIST- and CIFAR-sized inputs, published parameter counts."""

from __future__ import annotations

import inspect

import pytest
import torch

from tinykd.models import cifar_resnet, mobilenetv2, shufflenetv2, vgg, wrn
from tinykd.models.registry import MODELS, create_model, sized_for

_MODULES = {m.__name__ for m in (cifar_resnet, mobilenetv2, shufflenetv2, vgg, wrn)}
BENCHMARK_MODELS = [name for name in MODELS if MODELS.get(name).__module__ in _MODULES]

# Published counts (RepDistiller / CRD tables), CIFAR-100 heads.
PUBLISHED_PARAMS = {
    "resnet20": 0.28e6,
    "resnet56": 0.86e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_2": 2.26e6,
}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_family_is_registered() -> None:
    expected = {
        "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
        "wrn_16_1", "wrn_16_2", "wrn_16_4", "wrn_40_1", "wrn_40_2", "wrn_40_4", "wrn_28_10",
        "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2", "mobilenetv2_x0_5", "shufflenetv2",
    }  # fmt: skip
    assert expected <= set(BENCHMARK_MODELS)


@pytest.mark.parametrize("name", BENCHMARK_MODELS)
def test_signature_has_no_catch_all(name: str) -> None:
    params = inspect.signature(MODELS.get(name)).parameters
    assert list(params)[:2] == ["num_classes", "in_channels"]
    assert all(p.kind is not p.VAR_KEYWORD for p in params.values())


@torch.no_grad()
@pytest.mark.parametrize("name", BENCHMARK_MODELS)
def test_forward_mnist_and_cifar_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    model = create_model(name, num_classes=100, in_channels=3).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED_PARAMS.items()))
def test_published_parameter_counts(name: str, published: float) -> None:
    count = _n_params(create_model(name, num_classes=100, in_channels=3))
    assert abs(count - published) / published < 0.02, f"{name}: {count} parameters, published {published:.0f}"


def test_train_step_and_extra_kwargs() -> None:
    model = create_model("mobilenetv2", num_classes=10, in_channels=3, width_mult=0.5)
    assert _n_params(model) == _n_params(create_model("mobilenetv2_x0_5", num_classes=10))
    model = create_model("wrn_16_1", num_classes=10, in_channels=1, dropout=0.3).train()
    loss = model(torch.randn(4, 1, 28, 28)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_feature_taps_by_module_path() -> None:
    model = create_model("resnet8x4", num_classes=10).eval()
    modules = dict(model.named_modules())
    feats: dict[str, torch.Tensor] = {}
    for path in ("stem", "layer1", "layer2", "layer3", "pool"):
        modules[path].register_forward_hook(lambda _m, _i, out, path=path: feats.__setitem__(path, out))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert feats["layer3"].shape == (1, 256, 8, 8)
    assert feats["pool"].shape == (1, 256, 1, 1)


def test_the_data_image_size_reaches_constructors_that_take_one() -> None:
    assert sized_for("mlp", {"hidden": [8]}, 8) == {"hidden": [8], "image_size": 8}
    assert sized_for("mlp", {"image_size": 14}, 8) == {"image_size": 14}  # the recipe's own value wins
    assert sized_for("cnn_small", {}, 8) == {}  # adapts to any size: left alone
    assert sized_for("timm:resnet18", {}, 8) == {} and sized_for("hf:bert", {}, 0) == {}
    model = create_model("mlp", num_classes=3, in_channels=1, **sized_for("mlp", {}, 8))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)

