"""MiniLM: deep self-attention distillation of the last layer.

Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers" (NeurIPS 2020): the student mimics the teacher's last self-attention layer through two
distributions per head and query position, compared by KL(teacher || student) and averaged over heads and
(real) query positions:
  - the attention distribution softmax(Q K^T / sqrt(d_head)): the probabilities transformers returns;
  - the value relation softmax(V V^T / sqrt(d_head)), computed here from the output of the last layer's value
    projection (read by a forward hook), padded keys masked out before the softmax.
  L = L_AT + L_VR. Both are T x T per head, so student and teacher widths and depths are free; their head
counts must be equal (MiniLM v1). In training, transformers returns the student's attention probabilities
after its attention dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinykd.losses.base import LossTerm, Outputs, masked_mean, need_states, real_tokens, register_loss

VALUE_SUFFIXES = (".value", ".v_lin", ".v_proj")  # BERT-likes, DistilBERT, BART/Llama-likes
_HEAD_KEYS = ("num_key_value_heads", "num_attention_heads", "n_heads", "n_head")  # value heads first (GQA)


def find_value_projection(model: nn.Module, role: str) -> str:
    """The path of the last `nn.Linear` named `*.value`, `*.v_lin` or `*.v_proj`: the last layer's values."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.endswith(VALUE_SUFFIXES)]
    if not found:
        raise ValueError(f"found no value projection in the {role} ({type(model).__name__}): no nn.Linear named "
                         f"*.value, *.v_lin or *.v_proj; give {role}_values=<module path>")  # fmt: skip
    return found[-1]


def value_heads(model: nn.Module) -> int | None:
    """The number of value heads from a transformers config, or None (then the attention tensors tell)."""
    config = getattr(model, "config", None)
    for key in _HEAD_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def relation_log_probs(values: torch.Tensor, heads: int, real: torch.Tensor) -> torch.Tensor:
    """(B, T, H*d) -> (B, H, T, T): log softmax over keys of V V^T / sqrt(d) per head, padded keys masked."""
    b, t, width = values.shape
    with torch.autocast(values.device.type, enabled=False):  # float32 even inside autocast (matmul would be bf16)
        v = values.float().view(b, t, heads, width // heads).transpose(1, 2)
        scores = v @ v.transpose(-1, -2) / math.sqrt(width // heads)
        scores = scores.masked_fill(~real[:, None, None, :], torch.finfo(torch.float32).min)
        return F.log_softmax(scores, dim=-1)


def kl_rows(p_teacher: torch.Tensor, log_p_teacher: torch.Tensor, log_p_student: torch.Tensor,
            real: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """KL(teacher || student) over the real keys of each (B, H, T) row, averaged over real query rows."""
    per_key = p_teacher * (log_p_teacher - log_p_student)
    per_row = torch.where(real[:, None, None, :], per_key, 0.0).sum(-1)
    return masked_mean(per_row, real[:, None, :])


@register_loss("minilm")
class MiniLM(LossTerm):
    """KL(teacher || student) of the last layer's attention distributions plus that of its value relations.
    `student_values` / `teacher_values`: module paths of the last layer's value projections (found if omitted)."""

    needs_attentions = True

    def __init__(self, student_values: str | None = None, teacher_values: str | None = None) -> None:
        super().__init__()
        self.student_values, self.teacher_values = student_values, teacher_values
        self.heads: dict[str, int | None] = {"student": None, "teacher": None}

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        assert teacher is not None
        self.student_values = self.student_values or find_value_projection(student, "student")
        self.teacher_values = self.teacher_values or find_value_projection(teacher, "teacher")
        self.heads = {"student": value_heads(student), "teacher": value_heads(teacher)}

    def student_taps(self) -> list[str]:
        if self.student_values is None:
            raise RuntimeError("minilm: call bind(student, teacher) first, or give student_values")
        return [self.student_values]

    def teacher_taps(self) -> list[str]:
        if self.teacher_values is None:
            raise RuntimeError("minilm: call bind(student, teacher) first, or give teacher_values")
        return [self.teacher_values]

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        a_s = need_states(student, "attentions", "student")[-1]
        a_t = need_states(teacher, "attentions", "teacher")[-1]
        if a_s.shape[1] != a_t.shape[1]:
            raise ValueError(f"the student's last layer has {a_s.shape[1]} attention heads and the teacher's "
                             f"{a_t.shape[1]}; minilm needs equal head counts (MiniLM v1)")  # fmt: skip
        if a_s.shape[0] != a_t.shape[0] or a_s.shape[-1] != a_t.shape[-1]:
            raise ValueError(f"the student attends over {a_s.shape[-1]} positions and the teacher over "
                             f"{a_t.shape[-1]}; student and teacher must share one tokenizer")  # fmt: skip
        assert teacher is not None
        for role, outputs in (("student", student), ("teacher", teacher)):
            path = self.student_values if role == "student" else self.teacher_values
            values = outputs.features.get(path or "")
            if values is None or values.ndim != 3 or tuple(values.shape[:2]) != (a_s.shape[0], a_s.shape[-1]):
                shape = None if values is None else tuple(values.shape)
                raise ValueError(f"{role}_values={path!r} gave {shape}, not the values (batch, tokens, width) of "
                                 "the last attention layer")  # fmt: skip
            heads = self.heads[role] or a_s.shape[1]
            if values.shape[-1] % heads:
                raise ValueError(f"{role}_values={path!r} has width {values.shape[-1]}, which {heads} heads do not "
                                 "divide; give the path of the value projection")  # fmt: skip
            self.heads[role] = heads
        if self.heads["student"] != self.heads["teacher"]:
            raise ValueError(f"the student has {self.heads['student']} value heads and the teacher "
                             f"{self.heads['teacher']}; minilm needs equal head counts (MiniLM v1)")  # fmt: skip

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert student.attentions is not None and teacher is not None and teacher.attentions is not None
        heads_s, heads_t = self.heads["student"], self.heads["teacher"]
        if heads_s is None or heads_t is None:
            raise RuntimeError("minilm: call build() on a probe batch first")
        v_s = student.features[self.student_values]  # type: ignore[index]
        v_t = teacher.features[self.teacher_values].detach()  # type: ignore[index]
        real = real_tokens(student, teacher, v_s)
        # attention distributions: probabilities from the model; a teacher's exact 0 gives 0 (xlogy), and a
        # student's is clamped so that the log stays finite
        p_t = teacher.attentions[-1].detach().float()
        log_p_s = student.attentions[-1].float().clamp_min(torch.finfo(torch.float32).tiny).log()
        attention = kl_rows(p_t, torch.where(p_t > 0, p_t, 1.0).log(), log_p_s, real)
        log_r_t = relation_log_probs(v_t, heads_t, real)
        relation = kl_rows(log_r_t.exp(), log_r_t, relation_log_probs(v_s, heads_s, real), real)
        return attention + relation

    def extra_repr(self) -> str:
        return f"student_values={self.student_values!r}, teacher_values={self.teacher_values!r}"
