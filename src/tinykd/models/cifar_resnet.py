"""CIFAR ResNets of the distillation benchmarks (resnet8 ... resnet110, resnet8x4, resnet32x4).

The layout follows RepDistiller / mdistiller so that parameter counts and results
are comparable with the published tables: a 3x3 stem, three stages of BasicBlocks
(depth = 6n + 2) and a projection shortcut (1x1 conv + BN) wherever the shape
changes. Unlike the references, the head pools adaptively, so any input of at
least 28x28 and any number of input channels work.

Good feature taps (module paths): ``stem``, ``layer1``, ``layer2``, ``layer3``
(post-ReLU block outputs at strides 1, 1, 2, 4) and ``pool`` (the pooled
penultimate features, shape ``(N, C, 1, 1)``).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinykd.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the shortcut projects only when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """A three-stage ResNet for small images.

    `widths` is (stem, stage1, stage2, stage3): (16, 16, 32, 64) for the classic
    CIFAR ResNets and (32, 64, 128, 256) for the "x4" variants.
    """

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._make_stage(widths[2], widths[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def _init_weights(model: nn.Module) -> None:
    """Kaiming (fan_out) convs and unit BN, as the reference implementations do."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_X4 = (32, 64, 128, 256)


@register_model()
def resnet8(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(8, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet14(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(14, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet20(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet32(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(32, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet44(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(44, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet56(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet110(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(8, _X4, num_classes=num_classes, in_channels=in_channels)


@register_model()
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return CifarResNet(32, _X4, num_classes=num_classes, in_channels=in_channels)
