"""Dense KD for detectors: the teacher's class probabilities at every location, before NMS.

mdistiller's maintainers' answer to "how do I distil my detector" is to distil the logits before NMS; this is that
term for sigmoid heads (FCOS, RetinaNet: one independent probability per class, trained with focal loss). At each
location and class, the student's probability at temperature T is pulled to the teacher's by the binary KL
divergence, times T^2 as in Hinton's KD. A softmax over classes, as classification KD uses, would invent a
competition between classes that a sigmoid head never had. The sum is divided by the teacher's soft count of
objects (over locations, its highest class probability; at least 1), so the background's many locations do not
swamp it, as FCOS divides its focal loss by the number of positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinykd.losses.base import LossTerm, Outputs, register_loss
from tinykd.losses.fcos import detection_geometry


def binary_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(sigmoid(teacher)) || Bernoulli(sigmoid(student))) of two logit tensors."""
    target = torch.sigmoid(teacher)
    return F.binary_cross_entropy_with_logits(student, target, reduction="none") - \
        F.binary_cross_entropy_with_logits(teacher, target, reduction="none")  # fmt: skip


@register_loss("dense_kd")
class DenseKD(LossTerm):
    """Per-class binary KD of a detector's dense class logits (see the module's docstring)."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.num_classes = 0

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.num_classes = int(detection_geometry(student).num_classes)
        if teacher is not None and int(detection_geometry(teacher).num_classes) != self.num_classes:
            raise ValueError("the teacher and the student detect different numbers of classes")

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        if teacher is not None and teacher.logits.shape[:2] != student.logits.shape[:2]:
            raise ValueError(f"the teacher's dense outputs {tuple(teacher.logits.shape)} and the student's "
                             f"{tuple(student.logits.shape)} are not at the same locations: use one image size")

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert teacher is not None
        c, t = self.num_classes, self.temperature
        s_cls, t_cls = student.logits[..., :c].float(), teacher.logits[..., :c].float().detach()
        objects = torch.sigmoid(t_cls).amax(-1).sum().clamp(min=1.0)
        return binary_kl(s_cls / t, t_cls / t).sum() * t * t / objects

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
