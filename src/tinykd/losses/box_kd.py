"""Box KD for detectors: the student's boxes pulled to the teacher's where the teacher is confident.

At each location the teacher scores sqrt(highest class probability x centerness), as FCOS ranks its detections.
Where that score reaches `threshold`, the GIoU loss between the student's box and the teacher's box is weighted by
the score and averaged over those weights: the teacher's localisation, where it sees an object, including the ones
the labels also mark. Elsewhere the term adds nothing, so the teacher's guesses on background do not pull.
"""

from __future__ import annotations

import torch
from torch import nn

from tinykd.losses.base import LossTerm, Outputs, register_loss
from tinykd.losses.fcos import detection_geometry, predicted_boxes


@register_loss("box_kd")
class BoxKD(LossTerm):
    """GIoU toward the teacher's boxes at its confident locations (see the module's docstring)."""

    def __init__(self, threshold: float = 0.3) -> None:
        super().__init__()
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.threshold = threshold
        self.num_classes = 0
        self.register_buffer("locations", torch.zeros(0, 2), persistent=False)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        geometry = detection_geometry(student)
        self.num_classes, self.locations = int(geometry.num_classes), geometry.locations.clone()

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import generalized_box_iou_loss

        assert teacher is not None
        c = self.num_classes
        dense_t, dense_s = teacher.logits.float().detach(), student.logits.float()
        score = torch.sqrt(torch.sigmoid(dense_t[..., :c]).amax(-1) * torch.sigmoid(dense_t[..., -1]))
        weight = torch.where(score >= self.threshold, score, torch.zeros_like(score))
        where = self.locations.expand_as(dense_s[..., :2])
        theirs, ours = predicted_boxes(where, dense_t[..., c : c + 4]), predicted_boxes(where, dense_s[..., c : c + 4])
        loss = generalized_box_iou_loss(ours.flatten(0, 1), theirs.flatten(0, 1), reduction="none")
        return (loss.view_as(weight) * weight).sum() / weight.sum().clamp(min=1e-6)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
