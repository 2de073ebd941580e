"""Cosine distance between student and teacher hidden states.

Sanh et al., "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and lighter" (2019): beside
the soft-target and masked-LM losses, a cosine embedding loss aligns the directions of the student's and the
teacher's last hidden states: 1 - cos(h_s, h_t), averaged over the real (non-padding) tokens. DistilBERT's
student has the teacher's width; when the widths differ, a learned linear projection maps the student's states
to the teacher's width (sized on the probe batch and trained with the student, like FitNet's adapter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.adapters import make_adapter
from tinykd.losses.base import (
    LossTerm,
    Outputs,
    check_index,
    masked_mean,
    need_states,
    real_tokens,
    register_loss,
    same_sequences,
)


@register_loss("cosine")
class HiddenCosine(LossTerm):
    """Mean over real tokens of 1 - cos(W h_s, h_t) at `student_layer` / `teacher_layer` (indices into
    `hidden_states`: 0 is the embeddings, -1 the last layer); W is learned, and only there when widths differ."""

    needs_hidden_states = True

    def __init__(self, student_layer: int = -1, teacher_layer: int = -1) -> None:
        super().__init__()
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.projection: torch.nn.Module | None = None

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        hs_s, hs_t = need_states(student, "hidden_states", "student"), need_states(teacher, "hidden_states", "teacher")
        what = "hidden states (0 = embeddings)"
        check_index(self.student_layer, len(hs_s), f"student_layer={self.student_layer}", f"student's {what}")
        check_index(self.teacher_layer, len(hs_t), f"teacher_layer={self.teacher_layer}", f"teacher's {what}")
        s, t = hs_s[self.student_layer], hs_t[self.teacher_layer]
        same_sequences(s, t)
        self.projection = make_adapter(s.shape, t.shape) if s.shape[-1] != t.shape[-1] else None

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert student.hidden_states is not None and teacher is not None and teacher.hidden_states is not None
        s = student.hidden_states[self.student_layer]
        t = teacher.hidden_states[self.teacher_layer].detach()
        if self.projection is not None:
            s = self.projection(s)
        if s.shape[-1] != t.shape[-1]:
            raise RuntimeError("cosine: the widths differ and there is no projection; call build() on a probe batch")
        distance = 1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)
        return masked_mean(distance, real_tokens(student, teacher, s))

    def extra_repr(self) -> str:
        return f"student_layer={self.student_layer}, teacher_layer={self.teacher_layer}"
