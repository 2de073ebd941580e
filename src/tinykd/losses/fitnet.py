"""FitNet hints: regress a teacher's intermediate feature from the student's.

Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015). The student's
feature passes through a learned adapter (1x1 conv + BN for maps, linear for
vectors) to the teacher's width; when the spatial sizes differ, the larger map
is average-pooled to the smaller. Features are taken by module path through
forward hooks, so the models' code is never edited.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.adapters import make_adapter, match_spatial
from tinykd.losses.base import LossTerm, Outputs, register_loss


@register_loss("fitnet")
class FitNetHint(LossTerm):
    """MSE between adapter(student feature at `student`) and the teacher feature at `teacher`."""

    def __init__(self, student: str, teacher: str) -> None:
        super().__init__()
        self.student_path = student
        self.teacher_path = teacher
        self.adapter: torch.nn.Module | None = None

    def student_taps(self) -> list[str]:
        return [self.student_path]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_path]

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        assert teacher is not None
        s, t = student.features[self.student_path], teacher.features[self.teacher_path]
        try:
            self.adapter = make_adapter(s.shape, t.shape)
        except ValueError as exc:
            raise ValueError(f"fitnet {self.student_path} -> {self.teacher_path}: {exc}") from None

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert teacher is not None and self.adapter is not None, "call build() on a probe batch first"
        s = self.adapter(student.features[self.student_path])
        s, t = match_spatial(s, teacher.features[self.teacher_path])
        return F.mse_loss(s.float(), t.float())

    def extra_repr(self) -> str:
        return f"student={self.student_path!r}, teacher={self.teacher_path!r}"
