"""MSE between student and teacher hidden states, layer by mapped layer.

Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP 2020), the
embedding-layer and hidden-state terms: MSE(h_s[i] W, h_t[g(i)]) for every student layer i, summed over the
layers as TinyBERT does (each MSE is a mean over real tokens and features). Index 0 is the embedding output,
so the embedding term is the pair (0, 0). The default map is the paper's uniform one, g(i) = i * n_t / n_s,
rounded down. When the widths differ, one learned W projects the student's states; the paper writes W_e and
W_h, but its released code applies one `fit_dense` to the embeddings and every layer alike, and so does this.
"""

from __future__ import annotations

import torch

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


def uniform_map(student_layers: int, teacher_layers: int, first: int) -> dict[int, int]:
    """TinyBERT's g(i) = i * n_t / n_s (rounded down, never below `first`) for i = first..n_s."""
    return {i: max(first, i * teacher_layers // student_layers) for i in range(first, student_layers + 1)}


@register_loss("hidden_mse")
class HiddenMSE(LossTerm):
    """Sum over mapped pairs of the MSE between W h_s[i] and h_t[layers[i]] over real tokens. `layers` maps
    student to teacher indices into `hidden_states` (0 = embeddings); default uniform, embeddings included."""

    needs_hidden_states = True

    def __init__(self, layers: dict[int, int] | None = None) -> None:
        super().__init__()
        if layers is not None and not layers:
            raise ValueError("layers must map at least one student layer to a teacher layer, e.g. {0: 0, 2: 6}")
        try:  # keys written as strings (JSON in --set) are the same indices
            self.layers = {int(i): int(j) for i, j in layers.items()} if layers is not None else None
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f"layers must map student to teacher layer indices, e.g. {{0: 0, 2: 6}}; "
                             f"got {layers!r}") from None
        self.pairs: dict[int, int] = dict(self.layers or {})
        self.projection: torch.nn.Module | None = None

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        hs_s, hs_t = need_states(student, "hidden_states", "student"), need_states(teacher, "hidden_states", "teacher")
        self.pairs = self.layers or uniform_map(len(hs_s) - 1, len(hs_t) - 1, first=0)
        what = "hidden states (0 = embeddings)"
        for i, j in self.pairs.items():
            check_index(i, len(hs_s), f"layers {{{i}: {j}}}: student index {i}", f"student's {what}")
            check_index(j, len(hs_t), f"layers {{{i}: {j}}}: teacher index {j}", f"teacher's {what}")
        s, t = hs_s[0], hs_t[0]
        same_sequences(s, t)
        self.projection = make_adapter(s.shape, t.shape) if s.shape[-1] != t.shape[-1] else None

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert student.hidden_states is not None and teacher is not None and teacher.hidden_states is not None
        if not self.pairs:
            raise RuntimeError("hidden_mse: call build() on a probe batch first")
        keep = real_tokens(student, teacher, student.hidden_states[0]).unsqueeze(-1)
        total = student.hidden_states[0].new_zeros((), dtype=torch.float32)
        for i, j in self.pairs.items():
            s, t = student.hidden_states[i], teacher.hidden_states[j].detach()
            if self.projection is not None:
                s = self.projection(s)
            total = total + masked_mean((s.float() - t.float()).pow(2), keep)
        return total

    def extra_repr(self) -> str:
        return f"layers={self.pairs or 'uniform'}"
