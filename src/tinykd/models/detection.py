"""Small single-stage detectors for CPUs, after FCOS (Tian et al. 2019): anchor-free, one prediction per location.

`forward(images)` returns one dense tensor (B, L, C + 5): for each location l of every pyramid level (stride 8,
then 16, row by row), C class logits (a sigmoid each, FCOS's focal-loss head), 4 distances from the location to the
box's left, top, right and bottom edges in pixels, and 1 centerness logit. Dense outputs before NMS are what
detection distillation reads (mdistiller's advice: distil the logits before NMS), and they travel through tinykd's
distiller as `Outputs.logits` like any classifier's. The locations' centres, strides and size ranges are the
model's `geometry` (fixed by `image_size`); the FCOS loss term and `decode` read them from there.

The pyramid levels are `p3` and `p4` (identity modules, so forward hooks can tap them for feature imitation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tinykd.models.registry import register_model

STRIDES = (8, 16)
SIZE_RANGES = ((0.0, 32.0), (32.0, math.inf))  # the largest box distance a level answers for (FCOS's m_i)


@dataclass(frozen=True)
class Geometry:
    """Where each output row sits: its centre (x, y) in pixels, its level's stride and size range."""

    image_size: int
    strides: tuple[int, ...] = STRIDES
    size_ranges: tuple[tuple[float, float], ...] = SIZE_RANGES

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L, 2) centres, (L,) strides, (L, 2) size ranges, in the output's row order."""
        centres, strides, ranges = [], [], []
        for stride, bounds in zip(self.strides, self.size_ranges, strict=True):
            side = math.ceil(self.image_size / stride)
            grid = (torch.arange(side, dtype=torch.float32) + 0.5) * stride
            y, x = torch.meshgrid(grid, grid, indexing="ij")
            centres.append(torch.stack([x.flatten(), y.flatten()], 1))
            strides.append(torch.full((side * side,), float(stride)))
            ranges.append(torch.tensor(bounds).expand(side * side, 2))
        return torch.cat(centres), torch.cat(strides), torch.cat(ranges)


def _conv(c_in: int, c_out: int, norm: str = "bn") -> list[nn.Module]:
    layer = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return [layer, nn.BatchNorm2d(c_out) if norm == "bn" else nn.GroupNorm(min(8, c_out), c_out), nn.ReLU(inplace=True)]


class FCOS(nn.Module):
    """A plain conv backbone (four stages, strides 2-16), a two-level FPN and FCOS's shared head."""

    def __init__(self, widths: tuple[int, int, int, int], fpn: int, tower: int, num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 128, convs_per_stage: int = 1) -> None:  # fmt: skip
        super().__init__()
        stages, c_in = [], in_channels
        for c_out in widths:  # each stage halves the resolution: strides 2, 4, 8, 16
            layers = _conv(c_in, c_out)
            for _ in range(convs_per_stage - 1):
                layers += _conv(c_out, c_out)
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
            c_in = c_out
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.lateral3, self.lateral4 = nn.Conv2d(widths[2], fpn, 1), nn.Conv2d(widths[3], fpn, 1)
        self.smooth3 = nn.Conv2d(fpn, fpn, 3, padding=1)
        self.p3, self.p4 = nn.Identity(), nn.Identity()  # the pyramid levels, for feature taps
        self.cls_tower = nn.Sequential(*[m for _ in range(tower) for m in _conv(fpn, fpn, "gn")])
        self.box_tower = nn.Sequential(*[m for _ in range(tower) for m in _conv(fpn, fpn, "gn")])
        self.cls_logits = nn.Conv2d(fpn, num_classes, 3, padding=1)
        self.box_distances = nn.Conv2d(fpn, 4, 3, padding=1)
        self.centerness = nn.Conv2d(fpn, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))  # FCOS's learnable scale of exp() per level
        nn.init.constant_(self.cls_logits.bias, -math.log(99.0))  # a prior of 0.01 per class, as FCOS starts
        self.num_classes = num_classes
        self.geometry = Geometry(image_size)
        centres, strides, ranges = self.geometry.tensors()
        self.register_buffer("locations", centres, persistent=False)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("size_ranges", ranges, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c3 = self.stage3(self.stage2(self.stage1(images)))
        c4 = self.stage4(c3)
        p4 = self.p4(self.lateral4(c4))
        up = nn.functional.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        p3 = self.p3(self.smooth3(self.lateral3(c3) + up))
        rows = []
        for level, (feature, stride) in enumerate(zip((p3, p4), STRIDES, strict=True)):
            cls = self.cls_logits(self.cls_tower(feature))
            box = self.box_tower(feature)
            distances = torch.exp((self.scales[level] * self.box_distances(box)).clamp(max=10.0)) * stride
            dense = torch.cat([cls, distances, self.centerness(box)], 1)  # (B, C + 5, H, W)
            rows.append(dense.flatten(2).transpose(1, 2))
        return torch.cat(rows, 1)


@register_model()
def fcos_tiny(num_classes: int = 10, in_channels: int = 1, image_size: int = 128) -> nn.Module:
    """About 60k parameters: a student-sized FCOS (backbone 8/16/32/64, FPN 32, one conv per head tower)."""
    return FCOS((8, 16, 32, 64), 32, 1, num_classes, in_channels, image_size)


@register_model()
def fcos_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 128) -> nn.Module:
    """About 0.3M parameters: FCOS with backbone 16/32/64/128, FPN 64, two convs per head tower."""
    return FCOS((16, 32, 64, 128), 64, 2, num_classes, in_channels, image_size)


@register_model()
def fcos_teacher(num_classes: int = 10, in_channels: int = 1, image_size: int = 128) -> nn.Module:
    """About 2.3M parameters: a teacher-sized FCOS (backbone 32/64/128/256 with two convs a stage, FPN 128, three
    convs per head tower)."""
    return FCOS((32, 64, 128, 256), 128, 3, num_classes, in_channels, image_size, convs_per_stage=2)


def decode(dense: torch.Tensor, locations: torch.Tensor, num_classes: int, score_threshold: float = 0.05,
           iou_threshold: float = 0.6, max_detections: int = 100,
           image_size: int | None = None) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """Dense outputs (B, L, C + 5) -> per image {"boxes" (n, 4) xyxy, "scores" (n,), "labels" (n,)}: scores are
    sqrt(class probability x centerness) as FCOS ranks them, then per-class NMS (torchvision's batched_nms)."""
    from torchvision.ops import batched_nms

    results = []
    for row in dense.float():
        cls, distances, ctr = row[:, :num_classes], row[:, num_classes : num_classes + 4], row[:, -1:]
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr))  # (L, C)
        keep = scores > score_threshold
        where, label = keep.nonzero(as_tuple=True)
        score = scores[where, label]
        if len(score) > 1000:  # the best 1000 candidates before NMS, as FCOS does
            top = score.topk(1000).indices
            where, label, score = where[top], label[top], score[top]
        xy, d = locations[where], distances[where]
        boxes = torch.cat([xy - d[:, :2], xy + d[:, 2:]], 1)
        if image_size is not None:
            boxes = boxes.clamp(0, image_size)
        kept = batched_nms(boxes, score, label, iou_threshold)[:max_detections]
        results.append({"boxes": boxes[kept], "scores": score[kept], "labels": label[kept]})
    return results
