"""DKD: decoupled knowledge distillation.

Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022). Hinton's KD splits into two parts:
  - TCKD, target-class KD: KL between the binary distributions (p_target, 1 - p_target) of teacher and student;
  - NCKD, non-target-class KD: KL between the distributions over the other classes, renormalized without the
    target class.
  DKD = alpha * TCKD + beta * NCKD, each at temperature T and multiplied by T^2, batch mean. Classical KD is
TCKD + (1 - p_target^teacher) * NCKD: the teacher's confidence suppresses NCKD, which DKD frees with `beta`.

Defaults are mdistiller's (configs/cifar100/dkd): alpha 1, beta 8, T 4, and a linear warm-up of the whole term
over the first 20 epochs (`min(epoch / warmup, 1)`, epoch counted from 1). The paper's ImageNet setting is
alpha 0.5, beta 0.5 with T 1. Computed in log space, in float32: no log(0) for a confident teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.base import LogitTerm, Outputs, register_loss


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, alpha: float,
             beta: float, temperature: float) -> torch.Tensor:  # fmt: skip
    """alpha * TCKD + beta * NCKD for (B, C) logits and (B,) class targets, each T^2-scaled and batch-mean."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    target = F.one_hot(targets.long(), s.shape[1]).bool()
    tckd = _binary_kl(t, s, target)
    # the non-target classes alone: the target's logit at -inf, its log-probability then set to 0 so that no
    # inf - inf (a NaN, also in the gradients) can arise
    log_q_s = torch.where(target, 0.0, F.log_softmax(s.masked_fill(target, float("-inf")), dim=1))
    log_q_t = torch.where(target, 0.0, F.log_softmax(t.masked_fill(target, float("-inf")), dim=1))
    nckd = torch.where(target, 0.0, log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return (alpha * tckd + beta * nckd).mean() * temperature**2


def _binary_kl(t: torch.Tensor, s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample KL((b_t, 1 - b_t) || (b_s, 1 - b_s)), b the probability of the target class, from logits."""

    def log_parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.logsumexp(z, dim=1)
        log_target = z.masked_fill(~target, float("-inf")).logsumexp(dim=1) - total
        log_other = z.masked_fill(target, float("-inf")).logsumexp(dim=1) - total
        return log_target, log_other

    lt_t, lo_t = log_parts(t)
    lt_s, lo_s = log_parts(s)
    return lt_t.exp() * (lt_t - lt_s) + lo_t.exp() * (lo_t - lo_s)


@register_loss("dkd")
class DecoupledKD(LogitTerm):
    """alpha * TCKD + beta * NCKD at temperature `temperature`, warmed up linearly over `warmup` epochs."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20,
                 teacher: str | None = None) -> None:  # fmt: skip
        super().__init__(teacher)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 epochs (0: none), got {warmup}")
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup
        # a tensor, not a float: on XLA a changing Python number would compile a new graph every epoch
        self.register_buffer("ramp", torch.ones(()), persistent=False)

    def set_epoch(self, epoch: int) -> None:
        self.ramp.fill_(min(epoch / self.warmup, 1.0) if self.warmup else 1.0)

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        if student.logits.ndim != 2:
            raise ValueError(f"dkd needs (batch, classes) logits, got shape {tuple(student.logits.shape)}")
        loss = dkd_loss(student.logits, self.teacher_logits(teacher), targets, self.alpha, self.beta,
                        self.temperature)  # fmt: skip
        return self.ramp * loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, warmup={self.warmup}" \
               f"{self.teacher_repr()}"  # fmt: skip
