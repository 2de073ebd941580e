"""The contract of a loss term, and the registry of terms by name.

A term is a small `nn.Module` that can be used alone in any training loop:
`term(student, teacher, targets) -> scalar`. `student` and `teacher` are
`Outputs` (logits plus the feature maps tapped at module paths). A term does
not hold its weight: the `Distiller` multiplies each term by the weight the
recipe gives it, so every weight means the same thing ("this term counts this
much in the total") and there is no `alpha` to read two ways.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from tinykd.errors import TinykdError
from tinykd.registry import Registry


@dataclass
class Outputs:
    """What one forward pass of a model gives the loss terms."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm(nn.Module):
    """Base class. Subclasses set `needs_teacher`, list their feature taps, and implement `forward`."""

    needs_teacher: ClassVar[bool] = True

    def student_taps(self) -> list[str]:
        """Module paths in the student whose outputs this term reads."""
        return []

    def teacher_taps(self) -> list[str]:
        """Module paths in the teacher whose outputs this term reads."""
        return []

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        """Called once with the outputs of a probe batch, before training: size adapters, check shapes."""

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[LossTerm]] = Registry("loss term")
register_loss = LOSSES.register


def build_loss_term(name: str, params: dict[str, Any]) -> LossTerm:
    """Create a registered term, validating `params` against its constructor (unknown or mistyped -> one line)."""
    cls = LOSSES.get(name)
    schema = _params_schema(cls)
    try:
        checked = schema.model_validate(params)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(schema.model_fields) or "(none)"
            raise TinykdError(f"loss term '{name}' has no parameter '{where}'; allowed: {allowed}") from None
        raise TinykdError(f"loss term '{name}' parameter '{where}': {err['msg']}") from None
    try:
        return cls(**checked.model_dump())
    except ValueError as exc:
        raise TinykdError(f"loss term '{name}': {exc}") from None


def _params_schema(cls: type[LossTerm]) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        annotation = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        if isinstance(annotation, str):
            annotation = eval(annotation, vars(inspect.getmodule(cls)))
        fields[pname] = (annotation, ... if p.default is inspect.Parameter.empty else p.default)
    config = pydantic.ConfigDict(extra="forbid", strict=False)
    return pydantic.create_model(f"{cls.__name__}Params", __config__=config, **fields)
