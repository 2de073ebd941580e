"""Token-level distillation for generative students: one KL per predicted token.

Word-level KD (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", eq. 4): at every position the student
matches the teacher's distribution over the vocabulary, here at temperature T (scaled by T^2, as Hinton's KD, so
the gradients keep their size whatever T is). The direction is a choice:

- `forward`: KL(teacher || student), the usual one (DistilGPT2, Kim & Rush): the student covers every token the
  teacher finds likely (mean-seeking);
- `reverse`: KL(student || teacher), MiniLLM's (Gu et al. 2024): the student puts its mass where the teacher's
  is and is not pushed toward the teacher's long tail (mode-seeking), which they found better for generation.

Averaged over the positions that predict something: targets of -100 (padding, the last position of a causal LM,
prompt tokens a dataset leaves out) and padding in the mask do not count. Teacher and student must share a
tokenizer (the Distiller checks the vocabulary sizes on the probe batch).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from tinykd.losses.base import LogitTerm, Outputs, register_loss
from tinykd.losses.kd import token_positions


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0,
             reverse: bool = False) -> torch.Tensor:  # fmt: skip
    """T^2 * KL at every (B, T) position where `valid`, averaged over those positions; float32 under autocast."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    p, q = (log_s, log_t) if reverse else (log_t, log_s)  # KL(p || q) = sum p (log p - log q)
    kl = (p.exp() * (p - q)).sum(dim=-1)
    return torch.where(valid, kl, 0.0).sum() / valid.sum().clamp_min(1) * temperature**2


@register_loss("token_kd")
class TokenKD(LogitTerm):
    """Per-token KL between teacher and student next-token (or decoder) distributions, forward or reverse."""

    def __init__(self, temperature: float = 1.0, direction: Literal["forward", "reverse"] = "forward",
                 teacher: str | None = None) -> None:  # fmt: skip
        super().__init__(teacher)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.direction = temperature, direction

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        if student.logits.ndim != 3:
            raise ValueError(f"token_kd compares token logits (batch, tokens, vocabulary); the student gives "
                             f"{tuple(student.logits.shape)}: for one prediction per sample use kd")  # fmt: skip
        super().build(student, teacher)

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        valid = token_positions(student.logits, targets, student.mask)
        return token_kl(student.logits, self.teacher_logits(teacher), valid, self.temperature,
                        self.direction == "reverse")  # fmt: skip

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, direction={self.direction}{self.teacher_repr()}"
