"""MSE between student and teacher self-attention matrices, layer by mapped layer.

Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP 2020), the
attention-based term: for every student layer m, the MSE between its attention matrices and those of teacher
layer g(m), head by head, summed over the layers. The paper compares the unnormalised scores Q K^T / sqrt(d);
transformers returns only the probabilities (softmax of the scores), so this compares the probabilities, as
TextBrewer's `att_mse` does with Hugging Face models. Only real query and key positions count. In training,
transformers returns the student's probabilities after its attention dropout. Layers are numbered from 1; the
default map is TinyBERT's uniform one, g(m) = m * n_t / n_s (rounded down, at least 1).
"""

from __future__ import annotations

import torch

from tinykd.losses.base import LossTerm, Outputs, masked_mean, need_states, real_tokens, register_loss


@register_loss("attention_mse")
class AttentionMSE(LossTerm):
    """Sum over mapped layers of the MSE between attention probabilities over real (query, key) pairs.
    `layers` maps student to teacher layer numbers, from 1; default uniform over the student's layers."""

    needs_attentions = True

    def __init__(self, layers: dict[int, int] | None = None) -> None:
        super().__init__()
        if layers is not None and not layers:
            raise ValueError("layers must map at least one student layer to a teacher layer, e.g. {1: 3, 2: 6}")
        self.layers = dict(layers) if layers is not None else None
        self.pairs: dict[int, int] = dict(self.layers or {})

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        at_s, at_t = need_states(student, "attentions", "student"), need_states(teacher, "attentions", "teacher")
        n_s, n_t = len(at_s), len(at_t)
        self.pairs = self.layers or {m: max(1, m * n_t // n_s) for m in range(1, n_s + 1)}
        for m, n in self.pairs.items():
            if not (1 <= m <= n_s and 1 <= n <= n_t):
                raise ValueError(f"layers {{{m}: {n}}} is out of range: the student's layers are 1..{n_s} and the "
                                 f"teacher's 1..{n_t}")  # fmt: skip
            s, t = at_s[m - 1], at_t[n - 1]
            if s.shape[1] != t.shape[1]:
                raise ValueError(f"student layer {m} has {s.shape[1]} attention heads and teacher layer {n} has "
                                 f"{t.shape[1]}; attention_mse compares head by head: they must be equal")  # fmt: skip
            if s.shape[0] != t.shape[0] or s.shape[-1] != t.shape[-1]:
                raise ValueError(f"the student attends over {s.shape[-1]} positions and the teacher over "
                                 f"{t.shape[-1]}; student and teacher must share one tokenizer")  # fmt: skip

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert student.attentions is not None and teacher is not None and teacher.attentions is not None
        if not self.pairs:
            raise RuntimeError("attention_mse: call build() on a probe batch first")
        real = real_tokens(student, teacher, student.attentions[0][:, 0])  # (B, T)
        keep = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, T, T): real query and real key
        total = student.attentions[0].new_zeros((), dtype=torch.float32)
        for m, n in self.pairs.items():
            s, t = student.attentions[m - 1].float(), teacher.attentions[n - 1].detach().float()
            total = total + masked_mean((s - t).pow(2), keep)
        return total

    def extra_repr(self) -> str:
        return f"layers={self.pairs or 'uniform'}"
