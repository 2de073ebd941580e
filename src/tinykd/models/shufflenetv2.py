"""CIFAR ShuffleNetV2 as in RepDistiller / mdistiller (``shufflenetv2``, net_size 1 by default).

A 1x1 stem with stride 1 (no max-pool) and three stages, each a stride-2 down
block followed by channel-split basic blocks (3, 7, 3 of them), then a 1x1 conv
to 1024 channels. The head pools adaptively, so any input of at least 28x28 and
any number of input channels work.

Good feature taps (module paths): ``stem``, ``layer1``, ``layer2``, ``layer3``
(stage outputs at strides 2, 4, 8), ``conv_last`` and ``pool`` (pooled features).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinykd.models.registry import register_model

# net_size -> (stage channels, last conv channels, basic blocks per stage)
_CONFIGS: dict[float, tuple[tuple[int, int, int], int, tuple[int, int, int]]] = {
    0.2: ((40, 80, 160), 512, (3, 3, 3)),
    0.3: ((40, 80, 160), 512, (3, 7, 3)),
    0.5: ((48, 96, 192), 1024, (3, 7, 3)),
    1.0: ((116, 232, 464), 1024, (3, 7, 3)),
    1.5: ((176, 352, 704), 1024, (3, 7, 3)),
    2.0: ((224, 488, 976), 2048, (3, 7, 3)),
}


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    """Interleave the channel groups so information crosses the two branches."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(in_channels: int, out_channels: int, relu: bool = True) -> nn.Sequential:
    """1x1 conv-BN(-ReLU): the pointwise convs."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _dw_bn(channels: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 conv-BN, linear (no ReLU) as in the paper."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels)
    )


class BasicBlock(nn.Module):
    """Split the channels in half, transform one half (1x1, depthwise 3x3, 1x1), concat and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            _conv_bn(half, half),
            _dw_bn(half),
            _conv_bn(half, half),
        )

    def forward(self, x: Tensor) -> Tensor:
        keep, transform = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(transform)], dim=1))


class DownBlock(nn.Module):
    """Two stride-2 branches on the full input, concatenated: halves the resolution, sets the width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            _dw_bn(in_channels, stride=2),
            _conv_bn(in_channels, mid),
        )
        self.right = nn.Sequential(
            _conv_bn(in_channels, mid),
            _dw_bn(mid, stride=2),
            _conv_bn(mid, mid),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for small images; `net_size` picks the width (0.2, 0.3, 0.5, 1, 1.5, 2)."""

    def __init__(self, num_classes: int = 100, in_channels: int = 3, net_size: float = 1.0) -> None:
        super().__init__()
        if float(net_size) not in _CONFIGS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(_CONFIGS)}, got {net_size}")
        widths, last, repeats = _CONFIGS[float(net_size)]
        self.stem = _conv_bn(in_channels, 24)
        self.layer1 = self._make_stage(24, widths[0], repeats[0])
        self.layer2 = self._make_stage(widths[0], widths[1], repeats[1])
        self.layer3 = self._make_stage(widths[1], widths[2], repeats[2])
        self.conv_last = _conv_bn(widths[2], last)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = last
        self.fc = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(DownBlock(in_channels, out_channels), *(BasicBlock(out_channels) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.conv_last(x)
        return self.fc(self.pool(x).flatten(1))


@register_model()
def shufflenetv2(num_classes: int = 100, in_channels: int = 3, net_size: float = 1.0) -> nn.Module:
    return ShuffleNetV2(num_classes, in_channels, net_size=net_size)
