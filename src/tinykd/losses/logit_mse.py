"""Mean squared error between student and teacher logits.

Ba & Caruana, "Do Deep Nets Really Need to be Deep?" (NeurIPS 2014) regress
the teacher's logits directly; with cross-entropy on the labels beside it this
is the classic "MSE + CE" distillation loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.base import LogitTerm, Outputs, register_loss


@register_loss("mse")
class LogitMSE(LogitTerm):
    """Mean over batch and classes of (student logit - teacher logit)^2."""

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student.logits.float(), self.teacher_logits(teacher).float())

    def extra_repr(self) -> str:
        return self.teacher_repr()[2:]
