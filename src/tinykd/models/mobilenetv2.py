"""CIFAR MobileNetV2 as in RepDistiller / mdistiller (``mobilenetv2``, ``mobilenetv2_x0_5``).

The distillation tables' "MobileNetV2" is RepDistiller's ``mobile_half``:
expansion 6 and width multiplier 0.5, registered here as ``mobilenetv2_x0_5``.
Differences from the ImageNet model, kept for comparable counts: channels are
``int(c * width_mult)`` (no rounding to multiples of 8), the t=1 block still has
its 1x1 expansion conv, the last conv has 1280 channels unless width_mult > 1,
and the stem has stride 2 (total stride 16). The head pools adaptively, so any
input of at least 28x28 and any number of input channels work.

Good feature taps (module paths): ``stem``, ``blocks.0`` ... ``blocks.6`` (the
seven inverted-residual stages; RepDistiller taps ``blocks.1``, ``blocks.2``,
``blocks.4``, ``blocks.6``), ``conv_last`` and ``pool`` (pooled features).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinykd.models.registry import register_model

# (expansion or None for the model's `expand_ratio`, channels, blocks, first stride)
_STAGES: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images; `expand_ratio` is RepDistiller's T, `width_mult` its W."""

    def __init__(
        self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 1.0, expand_ratio: int = 6
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.stem = _conv_bn_relu(in_channels, channels, 3, stride=2)
        stages = []
        for t, c, n, s in _STAGES:
            out_channels = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expand_ratio))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.num_features = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv_last = _conv_bn_relu(channels, self.num_features, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv_last(x)
        return self.classifier(self.pool(x).flatten(1))


@register_model()
def mobilenetv2(
    num_classes: int = 100, in_channels: int = 3, width_mult: float = 1.0, expand_ratio: int = 6
) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult=width_mult, expand_ratio=expand_ratio)


@register_model()
def mobilenetv2_x0_5(num_classes: int = 100, in_channels: int = 3, expand_ratio: int = 6) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult=0.5, expand_ratio=expand_ratio)
