"""Hinton's soft-target distillation.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):
KL(softmax(t/T) || softmax(s/T)), multiplied by T^2 so that its gradients keep
the same scale as the hard-label term whatever T is. Averaged over the batch
(`batchmean`), as in the paper and RepDistiller, not over batch x classes.

Token-level logits (B, T, V) give one KL per position, averaged over the
positions whose target is not -100 (and that are real tokens): DistilBERT
(Sanh et al. 2019) distils its masked-LM head on the masked positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.labels import IGNORE_INDEX
from tinykd.losses.base import LogitTerm, Outputs, register_loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            valid: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """T^2 * KL(p_teacher^T || p_student^T), batch-mean; computed in float32 for stability under autocast.

    Over the last axis (classes, or the vocabulary of token logits); with `valid` (bool, the logits' shape
    without the last axis), the mean is over the True positions only.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # written out rather than F.kl_div: torch_xla has no autograd kernel for aten::kl_div (it warns that the
    # gradient may be silently wrong), and these three ops are exact and differentiable everywhere
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    if valid is None:
        return kl.mean() * temperature**2
    return torch.where(valid, kl, 0.0).sum() / valid.sum().clamp_min(1) * temperature**2


def token_positions(logits: torch.Tensor, targets: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool for token logits (B, T, V): targets not -100 (when targets are per token) and real tokens."""
    valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    if targets is not None and targets.shape == logits.shape[:2]:
        valid = valid & (targets != IGNORE_INDEX)
    if mask is not None and mask.shape == logits.shape[:2]:
        valid = valid & (mask != 0)
    return valid


@register_loss("kd")
class SoftTargetKD(LogitTerm):
    """Soft-target KL divergence at temperature `temperature`, scaled by temperature^2."""

    def __init__(self, temperature: float = 4.0, teacher: str | None = None) -> None:
        super().__init__(teacher)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.teacher_logits(teacher)
        if student.logits.ndim == 3:  # (B, T, V): one distribution per token
            valid = token_positions(student.logits, targets, student.mask)
            return kd_loss(student.logits, teacher_logits, self.temperature, valid)
        return kd_loss(student.logits, teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}{self.teacher_repr()}"
