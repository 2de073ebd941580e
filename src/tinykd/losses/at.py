"""Attention transfer.

Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017): the
spatial attention map of a feature is the channel-mean of its squared
activations, flattened and L2-normalised; the term is the mean squared
difference of student and teacher maps, summed over the tapped pairs. No
adapter is needed: channel counts may differ; the larger map is pooled to the
smaller one's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.adapters import match_spatial
from tinykd.losses.base import LossTerm, Outputs, register_loss


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): normalised mean over channels of |f|^p."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


@register_loss("at")
class AttentionTransfer(LossTerm):
    """Sum over pairs of mean((at(student_i) - at(teacher_i))^2); `student` and `teacher` are lists of module paths."""

    def __init__(self, student: list[str], teacher: list[str], p: float = 2.0) -> None:
        super().__init__()
        if len(student) != len(teacher) or not student:
            raise ValueError(f"at needs as many student as teacher paths (at least one), got {student} and {teacher}")
        self.pairs = list(zip(student, teacher, strict=True))
        self.p = p

    def student_taps(self) -> list[str]:
        return [s for s, _ in self.pairs]

    def teacher_taps(self) -> list[str]:
        return [t for _, t in self.pairs]

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        assert teacher is not None
        for s, t in self.pairs:
            if student.features[s].ndim != 4 or teacher.features[t].ndim != 4:
                raise ValueError(f"at needs feature maps (N, C, H, W); {s} or {t} is not one")

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert teacher is not None
        total = student.logits.new_zeros((), dtype=torch.float32)
        for s, t in self.pairs:
            fs, ft = match_spatial(student.features[s], teacher.features[t])
            total = total + (attention_map(fs, self.p) - attention_map(ft, self.p)).pow(2).mean()
        return total
