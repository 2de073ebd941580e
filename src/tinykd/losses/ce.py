"""Cross-entropy on the hard labels.

Token-level logits (B, T, V) with targets (B, T) are flattened, and positions
whose target is -100 are left out (masked-LM labels, as Hugging Face's
collators write them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.labels import IGNORE_INDEX
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
        if student.logits.ndim == 3:  # (B, T, V) with targets (B, T)
            logits, targets = student.logits.flatten(0, 1), targets.flatten()
            # a sum over the counted positions, divided by their number: a batch with none gives 0, not NaN
            total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum",
                                    label_smoothing=self.label_smoothing)  # fmt: skip
            return total / (targets != IGNORE_INDEX).sum().clamp_min(1)
        return F.cross_entropy(student.logits, targets, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
