"""FCOS's detection loss (Tian et al. 2019; center sampling from FCOS v2): the detector's `ce`.

Each location of the dense output is assigned the smallest ground-truth box that contains it, lies within
`center_radius` strides of that box's centre, and whose largest distance from the location is in the location's
level range; the rest are background. Then, as the paper: sigmoid focal loss on the class logits of every location
(alpha 0.25, gamma 2) over the number of positives, GIoU loss of the predicted boxes at the positives weighted by
their centerness target, and binary cross-entropy of the centerness logit at the positives.

Targets are tinykd's padded detection targets (B, M, 5) = [class, x1, y1, x2, y2], class -1 for padding; every
shape is static (B, L, M), so the step compiles once on XLA and the assignment needs no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinykd.losses.base import LossTerm, Outputs, register_loss


def detection_geometry(model: nn.Module) -> nn.Module:
    """The module of `model` (possibly wrapped) that carries a detector's `locations`, `strides`, `size_ranges`."""
    for module in model.modules():
        if all(isinstance(getattr(module, name, None), torch.Tensor) for name in ("locations", "strides",
                                                                                  "size_ranges")):  # fmt: skip
            return module
    raise ValueError("this term is for detectors with dense outputs (tinykd's fcos_* models); the model has no "
                     "'locations', 'strides' and 'size_ranges'")  # fmt: skip


def assign(targets: torch.Tensor, locations: torch.Tensor, strides: torch.Tensor, ranges: torch.Tensor,
           center_radius: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per location its class (B, L), -1 for background, and its box (B, L, 4) (zeros for background)."""
    labels, boxes = targets[..., 0], targets[..., 1:]  # (B, M), (B, M, 4)
    x, y = locations[:, 0].view(1, -1, 1), locations[:, 1].view(1, -1, 1)  # (1, L, 1)
    x1, y1, x2, y2 = (boxes[..., i].unsqueeze(1) for i in range(4))  # (B, 1, M)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], -1)  # (B, L, M, 4)
    radius = (center_radius * strides).view(1, -1, 1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    near_centre = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)
    largest = ltrb.amax(-1)
    in_range = (largest >= ranges[:, 0].view(1, -1, 1)) & (largest <= ranges[:, 1].view(1, -1, 1))
    candidate = (ltrb.amin(-1) > 0) & near_centre & in_range & (labels >= 0).unsqueeze(1)
    area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
    area = torch.where(candidate, area, torch.full_like(area, float("inf")))
    smallest, which = area.min(-1)  # (B, L)
    positive = torch.isfinite(smallest)
    chosen = which.unsqueeze(-1)
    label = torch.gather(labels, 1, which).long()
    box = torch.gather(boxes, 1, chosen.expand(*chosen.shape[:2], 4))
    return torch.where(positive, label, torch.full_like(label, -1)), torch.where(positive.unsqueeze(-1), box,
                                                                                   torch.zeros_like(box))  # fmt: skip


def centerness_target(locations: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of each location in its box (B, L)."""
    x, y = locations[:, 0], locations[:, 1]
    left, top, right, bottom = x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y
    lr = torch.minimum(left, right).clamp(min=0) / torch.maximum(left, right).clamp(min=1e-6)
    tb = torch.minimum(top, bottom).clamp(min=0) / torch.maximum(top, bottom).clamp(min=1e-6)
    return torch.sqrt(lr * tb)


def predicted_boxes(locations: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """xyxy boxes from each location's (left, top, right, bottom) distances."""
    return torch.cat([locations - distances[..., :2], locations + distances[..., 2:]], -1)


@register_loss("fcos")
class FCOSLoss(LossTerm):
    """FCOS's loss of the student's dense outputs against the boxes: focal + GIoU + centerness."""

    needs_teacher = False

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, center_radius: float = 1.5) -> None:
        super().__init__()
        if not 0 < alpha < 1 or gamma < 0 or center_radius <= 0:
            raise ValueError("alpha must be in (0, 1), gamma >= 0 and center_radius > 0")
        self.alpha, self.gamma, self.center_radius = alpha, gamma, center_radius
        self.register_buffer("locations", torch.zeros(0, 2), persistent=False)
        self.register_buffer("strides", torch.zeros(0), persistent=False)
        self.register_buffer("size_ranges", torch.zeros(0, 2), persistent=False)
        self.num_classes = 0

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        geometry = detection_geometry(student)
        self.locations, self.strides = geometry.locations.clone(), geometry.strides.clone()
        self.size_ranges = geometry.size_ranges.clone()
        self.num_classes = int(geometry.num_classes)

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

        dense, c = student.logits.float(), self.num_classes
        labels, boxes = assign(targets.float(), self.locations, self.strides, self.size_ranges, self.center_radius)
        positive = labels >= 0
        count = positive.sum().clamp(min=1).float()
        one_hot = F.one_hot(labels.clamp(min=0), c).float() * positive.unsqueeze(-1)
        focal = sigmoid_focal_loss(dense[..., :c], one_hot, self.alpha, self.gamma, reduction="sum") / count
        ctr_target = centerness_target(self.locations, boxes) * positive
        predicted = predicted_boxes(self.locations.expand_as(dense[..., :2]), dense[..., c : c + 4])
        giou = generalized_box_iou_loss(predicted.flatten(0, 1), boxes.flatten(0, 1), reduction="none")
        giou = (giou.view_as(ctr_target) * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
        ctr = F.binary_cross_entropy_with_logits(dense[..., -1], ctr_target, reduction="none")
        return focal + giou + (ctr * positive).sum() / count

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, center_radius={self.center_radius}"
