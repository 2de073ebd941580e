"""Cross-entropy on the hard labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.base import LossTerm, Outputs, register_loss


@register_loss("ce")
class CrossEntropy(LossTerm):
    """Cross-entropy of the student's logits with the true labels (optional label smoothing)."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student.logits, targets, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
