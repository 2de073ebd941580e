"""Several frozen teachers as one teacher.

    logits = sum_i w_i * logits_i / sum_i w_i

A `TeacherEnsemble` is what a `Distiller` gets as its teacher when a recipe lists `teachers:`: terms that read
the teacher's logits read the weighted mean (Hinton et al. 2015 distil an ensemble so; so do You et al. 2017
and Fukuda et al. 2017 with equal weights). Each teacher is a sub-module named by its position, so a term can
also read one teacher: the tap `1` is teacher 1's logits (e.g. `kd: {teacher: "1"}`), and `0.layer3` one of its
features. Each teacher runs in its own number format and gives float32 logits. Like a single teacher, the
ensemble stays frozen, in eval mode, outside the student's DistributedDataParallel wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tinykd.models.outputs import call_model, cast_floats


class TeacherEnsemble(nn.Module):
    """Frozen teachers "0", "1", ...; the output is their weighted mean logits (weights normalized to sum 1)."""

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        weights = [1.0] * len(teachers) if weights is None else list(weights)
        if len(weights) != len(teachers) or any(w <= 0 for w in weights):
            raise ValueError(f"give one positive weight per teacher ({len(teachers)}), got {weights}")
        for i, teacher in enumerate(teachers):
            self.add_module(str(i), teacher)
        self.weights = [w / sum(weights) for w in weights]
        self.dtypes: list[torch.dtype | None] = [None] * len(teachers)

    @property
    def teachers(self) -> list[nn.Module]:
        return list(self.children())

    def cast(self, dtypes: Sequence[torch.dtype | None]) -> TeacherEnsemble:
        """Run teacher i in `dtypes[i]` (None: as it is, float32): each teacher in its own precision."""
        if len(dtypes) != len(self.weights):
            raise ValueError(f"give one number format per teacher ({len(self.weights)}), got {len(dtypes)}")
        for teacher, dtype in zip(self.teachers, dtypes, strict=True):
            if dtype is not None:
                teacher.to(dtype)
        self.dtypes = list(dtypes)
        return self

    def full_precision(self) -> TeacherEnsemble:
        """Every teacher back in float32, as it ships (for the report after training)."""
        self.float()
        self.dtypes = [None] * len(self.weights)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        inputs = kwargs if kwargs else args[0]
        total: torch.Tensor | None = None
        for teacher, weight, dtype in zip(self.teachers, self.weights, self.dtypes, strict=True):
            logits = call_model(teacher, cast_floats(inputs, dtype)).float() * weight
            total = logits if total is None else total + logits
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return f"weights={[round(w, 4) for w in self.weights]}"
