"""Wide ResNets (WRN-depth-width, Zagoruyko & Komodakis) as used by the distillation benchmarks.

Pre-activation blocks (BN-ReLU-conv), channels (16, 16w, 32w, 64w) and
(depth - 4) / 6 blocks per stage, as in RepDistiller / mdistiller, so that
parameter counts match the published tables. The head pools adaptively, so any
input of at least 28x28 and any number of input channels work.

Good feature taps (module paths): ``conv1``, ``block1``, ``block2``, ``block3``
(pre-activation stage outputs at strides 1, 1, 2, 4), ``relu`` (the final
BN-ReLU feature map) and ``pool`` (pooled penultimate features).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinykd.models.registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv twice. When the shape changes, the activated input feeds both branches (as in the paper's code)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        # The references project only when the channel count changes (a stride change always comes with one).
        self.shortcut: nn.Module | None = None
        if in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        identity = x if self.shortcut is None else self.shortcut(act)
        return out + identity


class WideResNet(nn.Module):
    """WRN-`depth`-`widen_factor`: a 3x3 stem, three wide stages, a final BN-ReLU and a linear head."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = self._make_stage(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._make_stage(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._make_stage(widths[2], widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
        layers = [WideBasicBlock(in_planes, planes, stride, dropout)]
        layers += [WideBasicBlock(planes, planes, 1, dropout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.pool(x).flatten(1))


def wide_resnet(
    depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0
) -> WideResNet:
    """Any WRN-`depth`-`widen_factor` (depth = 6n + 4); the registered names cover the benchmark ones."""
    return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model()
def wrn_16_1(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(16, 1, num_classes, in_channels, dropout)


@register_model()
def wrn_16_2(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(16, 2, num_classes, in_channels, dropout)


@register_model()
def wrn_16_4(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(16, 4, num_classes, in_channels, dropout)


@register_model()
def wrn_40_1(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(40, 1, num_classes, in_channels, dropout)


@register_model()
def wrn_40_2(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(40, 2, num_classes, in_channels, dropout)


@register_model()
def wrn_40_4(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(40, 4, num_classes, in_channels, dropout)


@register_model()
def wrn_28_10(num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    return wide_resnet(28, 10, num_classes, in_channels, dropout)
