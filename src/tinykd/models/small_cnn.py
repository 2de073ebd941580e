"""Small CNNs (and an MLP) for 28x28 inputs (Fashion-MNIST, MNIST) and 8x8 digits.

Stages are `stage1`..`stage3` (conv-BN-ReLU blocks, each halving the
resolution) and `head`; `stage2` and `stage3` are good feature taps. These are
the students of the Fashion-MNIST demo: small enough that a teacher's soft
targets make a visible difference.
"""

from __future__ import annotations

import torch
from torch import nn

from tinykd.models.registry import register_model


def _conv_bn_relu(c_in: int, c_out: int, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, groups=groups)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv stages (`convs_per_stage` 3x3 convs each) with max-pooling, global average pooling, a linear head."""

    def __init__(
        self, channels: tuple[int, int, int], num_classes: int = 10, in_channels: int = 1, convs_per_stage: int = 1
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            layers = _conv_bn_relu(c_in, c_out)
            for _ in range(convs_per_stage - 1):
                layers += _conv_bn_relu(c_out, c_out)
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(torch.flatten(self.pool(x), 1))


@register_model()
def cnn_tiny(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """About 6k parameters: 8/16/32 channels, one conv per stage."""
    return SmallCNN((8, 16, 32), num_classes, in_channels)


@register_model()
def cnn_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """About 24k parameters: 16/32/64 channels, one conv per stage."""
    return SmallCNN((16, 32, 64), num_classes, in_channels)


@register_model()
def cnn_compact(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """About 41k parameters: 12/24/48 channels, two convs per stage (the Fashion-MNIST demo's student)."""
    return SmallCNN((12, 24, 48), num_classes, in_channels, convs_per_stage=2)


@register_model()
def cnn_medium(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """About 0.25M parameters: 32/64/128 channels, two convs per stage."""
    return SmallCNN((32, 64, 128), num_classes, in_channels, convs_per_stage=2)


@register_model()
def cnn(
    num_classes: int = 10, in_channels: int = 1, channels: tuple[int, int, int] = (16, 32, 64), convs_per_stage: int = 1
) -> nn.Module:
    """The same family with any widths, for sweeps: `student: {name: cnn, kwargs: {channels: [12, 24, 48]}}`."""
    return SmallCNN(tuple(channels), num_classes, in_channels, convs_per_stage)  # type: ignore[arg-type]


class MLP(nn.Module):
    """Flatten, then `hidden` fully connected ReLU layers and a linear head: no BatchNorm, no dropout.

    Besides being the classic small student (Hinton et al. used 2x800 on MNIST), it is exactly reproducible
    across process counts (no batch statistics), which the multi-process tests rely on.
    """

    def __init__(self, num_classes: int, in_features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_model()
def mlp(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: tuple[int, ...] = (256, 128)
) -> nn.Module:
    """A multi-layer perceptron on flattened `in_channels x image_size x image_size` images."""
    return MLP(num_classes, in_channels * image_size * image_size, tuple(hidden))
