"""Hinton's soft-target distillation.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):
KL(softmax(t/T) || softmax(s/T)), multiplied by T^2 so that its gradients keep
the same scale as the hard-label term whatever T is. Averaged over the batch
(`batchmean`), as in the paper and RepDistiller, not over batch x classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.base import LossTerm, Outputs, register_loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), batch-mean; computed in float32 for stability under autocast."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    # written out rather than F.kl_div: torch_xla has no autograd kernel for aten::kl_div (it warns that the
    # gradient may be silently wrong), and these three ops are exact and differentiable everywhere
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
    return kl * temperature**2


@register_loss("kd")
class SoftTargetKD(LossTerm):
    """Soft-target KL divergence at temperature `temperature`, scaled by temperature^2."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert teacher is not None
        return kd_loss(student.logits, teacher.logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
