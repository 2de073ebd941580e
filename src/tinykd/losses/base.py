"""The contract of a loss term, and the registry of terms by name.

A term is a small `nn.Module` that can be used alone in any training loop:
`term(student, teacher, targets) -> scalar`. `student` and `teacher` are
`Outputs` (logits, the feature maps tapped at module paths and, for
transformers, hidden states, attention probabilities and the padding mask).
A term does not hold its weight: the `Distiller` multiplies each term by the
weight the recipe gives it, so every weight means the same thing ("this term
counts this much in the total") and there is no `alpha` to read two ways.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import pydantic
import torch
from torch import nn

from tinykd.errors import TinykdError
from tinykd.forward_pass import Outputs
from tinykd.registry import Registry

TAP_INPUT = ":input"  # a tap path ending so reads the module's first input, not its output


class LossTerm(nn.Module):
    """Base class. Subclasses set `needs_*`, list their feature taps, and implement `forward`."""

    needs_teacher: ClassVar[bool] = True
    needs_hidden_states: ClassVar[bool] = False  # the Distiller then asks the models for `hidden_states`
    needs_attentions: ClassVar[bool] = False  # ... for `attentions` (switching them to eager attention)
    needs_index: ClassVar[bool] = False  # the run then gives each training sample's index (`Outputs.index`)

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once with the real models, before the taps are read: find module paths, read configs.

        A term must not keep the models as attributes (they would become its sub-modules).
        """

    def bind_dataset(self, num_samples: int) -> None:
        """Called once, before the probe batch, on terms that set `needs_index`: the training set's size."""

    def student_taps(self) -> list[str]:
        """Module paths in the student whose outputs this term reads."""
        return []

    def teacher_taps(self) -> list[str]:
        """Module paths in the teacher whose outputs this term reads."""
        return []

    @property
    def reads_student_features(self) -> bool:
        """Whether the term taps the student's modules (it lists `student_taps`): a student exported as one graph
        has no modules to hook."""
        return type(self).student_taps is not LossTerm.student_taps

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        """Called once with the outputs of a probe batch, before training: size adapters, check shapes."""

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch (counted from 1), also after a resume: for terms whose
        strength follows training, such as DKD's warm-up. Keep what changes in a tensor (XLA compiles once)."""

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


class LogitTerm(LossTerm):
    """A term on the teacher's logits, or, with `teacher` set, on the output of that module of the teacher: with
    several teachers (`teachers:` in a recipe) `"0"`, `"1"`, ... are each teacher's own logits."""

    def __init__(self, teacher: str | None = None) -> None:
        super().__init__()
        self.teacher_path = teacher

    def teacher_taps(self) -> list[str]:
        return [self.teacher_path] if self.teacher_path else []

    def teacher_logits(self, teacher: Outputs | None) -> torch.Tensor:
        assert teacher is not None
        return teacher.features[self.teacher_path] if self.teacher_path else teacher.logits

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        if self.teacher_path and teacher is not None:
            got = self.teacher_logits(teacher)
            if got.shape != student.logits.shape:
                raise ValueError(f"the teacher's '{self.teacher_path}' gives shape {tuple(got.shape)}, not the "
                                 f"student's logits' {tuple(student.logits.shape)}")  # fmt: skip

    def teacher_repr(self) -> str:
        return f", teacher={self.teacher_path!r}" if self.teacher_path else ""


# --- helpers shared by the token-level terms (cosine, hidden_mse, attention_mse, minilm) --------------------------


def real_tokens(student: Outputs, teacher: Outputs | None, like: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True at real tokens: the outputs' `mask`, or every position of `like` (B, T, ...) without one."""
    mask = student.mask if student.mask is not None else teacher.mask if teacher is not None else None
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
    if mask.shape != like.shape[:2]:
        raise ValueError(f"the attention mask is {tuple(mask.shape)} but the sequences are {tuple(like.shape[:2])}")
    return mask.to(like.device) != 0


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `keep` is True (broadcast), 0 where nothing is kept; padding (even NaN) never counts."""
    keep = keep.expand_as(values)
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp_min(1)


def check_index(index: int, count: int, label: str, what: str) -> None:
    """A one-line ValueError unless `index` is a valid Python index into `count` items (`what`)."""
    if not -count <= index < count:
        raise ValueError(f"{label} is out of range: the {what} are numbered 0..{count - 1} (or -{count}..-1)")


def need_states(outputs: Outputs | None, what: str, role: str) -> tuple[torch.Tensor, ...]:
    """`outputs.hidden_states` or `.attentions` (named by `what`), or a one-line ValueError if the model gave none."""
    states = getattr(outputs, what, None) if outputs is not None else None
    if not states:
        raise ValueError(f"the {role} gave no {what.replace('_', ' ')}; this term needs a transformers model")
    return states


def same_sequences(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Student and teacher must see the same tokens: equal batch and sequence length (one tokenizer)."""
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"the student sees sequences of shape {tuple(student.shape[:2])} and the teacher "
                         f"{tuple(teacher.shape[:2])}; student and teacher must share one tokenizer")  # fmt: skip


# --- helpers shared by the embedding terms (rkd, pkt, crd) ------------------------------------------------------


class EmbeddingTerm(LossTerm):
    """A term on one feature of each model, by module path: by default the embedding each classifier sees."""

    def __init__(self, student: str | None = None, teacher: str | None = None) -> None:
        super().__init__()
        self.student_path, self.teacher_path = student, teacher

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.student_path = embedding_tap(student, self.student_path, "student")
        self.teacher_path = embedding_tap(teacher, self.teacher_path, "teacher")

    def student_taps(self) -> list[str]:
        return [self.student_path]  # type: ignore[list-item]

    def teacher_taps(self) -> list[str]:
        return [self.teacher_path]  # type: ignore[list-item]

    def embeddings(self, student: Outputs, teacher: Outputs | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two tapped features, each (B, ...)."""
        assert teacher is not None
        return student.features[self.student_path], teacher.features[self.teacher_path]  # type: ignore[index]

    def paths_repr(self) -> str:
        return f"student={self.student_path!r}, teacher={self.teacher_path!r}"


def embedding_tap(model: nn.Module, path: str | None, role: str) -> str:
    """The tap a relational term reads: `path` as given, or, when None, the input of the model's last
    `nn.Linear`, its classifier: the pooled embedding (RepDistiller's and mdistiller's `feat[-1]`/`pooled_feat`)."""
    if path is not None:
        return path
    found = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"the {role} ({type(model).__name__}) has no nn.Linear classifier whose input is its "
                         f"embedding; give {role}=<module path> (e.g. 'avgpool', or 'fc{TAP_INPUT}')")  # fmt: skip
    return found[-1] + TAP_INPUT


def flat(features: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, D) in float32: relational terms compare whole samples."""
    return features.reshape(features.shape[0], -1).float()
