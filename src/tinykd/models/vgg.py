"""CIFAR VGGs with BatchNorm (vgg8, vgg11, vgg13, vgg16, vgg19) as in RepDistiller / mdistiller.

Five conv blocks separated by 2x2 max-pools and a single linear classifier on
512 pooled features (no big fully connected head), which is what the
distillation tables call ``vgg8`` ... ``vgg19`` (RepDistiller's ``vgg*_bn``).
As in the references, the fourth pool is skipped for inputs smaller than 64
pixels, so CIFAR (32x32) and Fashion-MNIST (28x28) keep a 4x4 / 3x3 map in the
last two blocks; the head pools adaptively.

Good feature taps (module paths): ``block0`` ... ``block4`` (post-ReLU outputs
at strides 1, 2, 4, 8, 8 for small inputs) and ``pool`` (pooled features).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinykd.models.registry import register_model

# Channels of the convs in each of the five blocks.
_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _conv_block(in_channels: int, channels: list[int]) -> nn.Sequential:
    """conv3x3-BN-ReLU for each entry (the convs keep their bias, as in the references)."""
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Five conv blocks; `cfg` lists the conv widths of each block."""

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        widths = [in_channels] + [block[-1] for block in cfg]
        self.block0 = _conv_block(widths[0], cfg[0])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.block1 = _conv_block(widths[1], cfg[1])
        self.pool1 = nn.MaxPool2d(2, 2)
        self.block2 = _conv_block(widths[2], cfg[2])
        self.pool2 = nn.MaxPool2d(2, 2)
        self.block3 = _conv_block(widths[3], cfg[3])
        self.pool3 = nn.MaxPool2d(2, 2)  # only for inputs of 64 pixels or more, see forward
        self.block4 = _conv_block(widths[4], cfg[4])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[5]
        self.classifier = nn.Linear(widths[5], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        large = x.shape[-2] >= 64  # the references pool here for 64-pixel (Tiny-ImageNet) inputs
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if large:
            x = self.pool3(x)
        x = self.block4(x)
        return self.classifier(self.pool(x).flatten(1))


@register_model()
def vgg8(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return VGG(_CONFIGS["vgg8"], num_classes=num_classes, in_channels=in_channels)


@register_model()
def vgg11(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return VGG(_CONFIGS["vgg11"], num_classes=num_classes, in_channels=in_channels)


@register_model()
def vgg13(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return VGG(_CONFIGS["vgg13"], num_classes=num_classes, in_channels=in_channels)


@register_model()
def vgg16(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return VGG(_CONFIGS["vgg16"], num_classes=num_classes, in_channels=in_channels)


@register_model()
def vgg19(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    return VGG(_CONFIGS["vgg19"], num_classes=num_classes, in_channels=in_channels)
