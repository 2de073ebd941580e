"""The Distiller: a frozen teacher, a student in training, and weighted loss terms.

    loss = sum_i weight_i * term_i(student_outputs, teacher_outputs, targets)

Each weight multiplies its own term and nothing else: `ce: 0.1, kd: 0.9` means
0.1 x cross-entropy + 0.9 x (T^2 KL). With no teacher it is plain supervised
training of the student, so `tinykd train` and `tinykd distill` share one path.
The Distiller knows nothing of devices: it runs where its inputs are.

Transformer terms read more than logits: the Distiller asks both models for
their hidden states or attention probabilities only when some term needs them,
switches a model to eager attention when attentions are needed (the only
implementation that returns them), and passes the inputs' `attention_mask` on
so that every term can leave padding out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from tinykd.data.inputs import describe_inputs, padding_mask
from tinykd.data.loader import Indexed
from tinykd.distill.ensemble import TeacherEnsemble
from tinykd.distill.taps import FeatureTaps
from tinykd.errors import TinykdError
from tinykd.losses.base import LossTerm, Outputs
from tinykd.models.outputs import attention_dropout, cast_floats, eager_attention, forward_outputs


class Distiller(nn.Module):
    """Trains `student` with `loss_terms` ({name: (term, weight)}) against a frozen `teacher`.

    `example_inputs` (a small batch) is run once through both models before
    training: it checks that their outputs match and sizes the adapters of
    feature terms. `forward(inputs, targets)` returns the student's logits and
    a dict of weighted loss values, one per term. `teacher_dtype` (e.g.
    torch.bfloat16) casts the frozen teacher once; its outputs come back as float32.
    Terms that keep a memory per training sample (`needs_index`, CRD) need
    `num_samples`, and inputs that come as `Indexed(inputs, index)` (`WithIndex`).
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        student: nn.Module,
        loss_terms: Mapping[str, tuple[LossTerm, float] | LossTerm],
        example_inputs: Any = None,
        teacher_dtype: torch.dtype | None = None,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        if not loss_terms:
            raise TinykdError("no loss terms: give at least one, e.g. ce")
        pairs = {k: v if isinstance(v, tuple) else (v, 1.0) for k, v in loss_terms.items()}
        needing = [k for k, (term, _) in pairs.items() if term.needs_teacher]
        if teacher is None and needing:
            raise TinykdError(f"loss term(s) {', '.join(needing)} need a teacher, and none was given")
        self.student = student
        # The teacher is deliberately not a sub-module: it stays out of parameters(), state_dict() and any
        # DistributedDataParallel wrapper (no gradients to sync, no buffers to broadcast), while `_apply`
        # below still moves it with the Distiller (.to(device), channels_last, dtype).
        object.__setattr__(self, "teacher", teacher)
        self.terms = nn.ModuleDict({k: term for k, (term, _) in pairs.items()})
        self.weights = {k: float(w) for k, (_, w) in pairs.items()}
        self.teacher_dtype = teacher_dtype
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
            if teacher_dtype is not None:  # a frozen teacher can run in bf16: half the memory, ~2x faster on bf16 CPUs
                teacher.to(teacher_dtype)
        for name, term in self.terms.items():  # before the taps: a term may find its module paths in the models
            try:
                term.bind(student, teacher)
            except ValueError as exc:
                raise TinykdError(f"loss term '{name}': {exc}") from None
        self.teacher_cache: Any = None  # a TeacherCache, set by the run: it serves and keeps the teacher's outputs
        self.clock: Any = None  # the engine's clock, when it times the run: the teacher's forward is counted apart
        self.needs_index = any(term.needs_index for term in self.terms.values())
        if self.needs_index:
            if not num_samples:
                names = ", ".join(k for k, t in self.terms.items() if t.needs_index)
                raise TinykdError(f"loss term(s) {names} keep a memory per training sample and need num_samples "
                                  "(the size of the training set)")  # fmt: skip
            for name, term in self.terms.items():
                try:
                    if term.needs_index:
                        term.bind_dataset(num_samples)
                except ValueError as exc:
                    raise TinykdError(f"loss term '{name}': {exc}") from None
        self._hidden_states = any(term.needs_hidden_states for term in self.terms.values())
        self._attentions = [name for name, term in self.terms.items() if term.needs_attentions]
        if isinstance(teacher, TeacherEnsemble) and (self._hidden_states or self._attentions):
            raise TinykdError("hidden-state and attention terms read one transformer teacher; with several "
                              "teachers use logit terms (kd, dkd, mse) and feature taps ('0.PATH', '1.PATH')")
        if self._attentions:
            self._use_eager_attention(student, teacher)
        self._student_taps = FeatureTaps(student, [p for t in self.terms.values() for p in t.student_taps()], "student")
        teacher_paths = [p for t in self.terms.values() for p in t.teacher_taps()]
        self._teacher_taps = FeatureTaps(teacher, teacher_paths, "teacher") if teacher is not None else None
        if example_inputs is not None:
            self.probe(example_inputs)
        elif teacher is not None or teacher_paths:
            raise TinykdError("Distiller needs example_inputs (one small batch) to check the models and size adapters")

    def _use_eager_attention(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Switch both models to eager attention (saying so), and note the student's attention dropout."""
        terms = ", ".join(self._attentions)
        for role, model in (("teacher", teacher), ("student", student)):
            if model is None:
                continue
            before = getattr(getattr(model, "config", None), "_attn_implementation", None)
            if eager_attention(model):
                print(f"tinykd: {role}: attention probabilities ({terms}) need transformers' eager attention; "
                      f"switched from {before}")  # fmt: skip
        dropout = attention_dropout(student)
        if dropout > 0:
            print(f"tinykd: note: in training, the student's attention dropout ({dropout:g}) zeroes some of the "
                  f"attention probabilities compared by {terms}; set it to 0 in the student's config to compare "
                  "whole distributions")  # fmt: skip

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> Distiller:
        """Switch the student and adapters; the teacher always stays in eval mode (BN statistics, dropout)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        """The engine calls this at the start of every epoch (from 1); the terms that follow training hear it."""
        for term in self.terms.values():
            term.set_epoch(epoch)
        if self.teacher_cache is not None:  # batches a filler beside this run has written since
            self.teacher_cache.refresh()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters and those of the terms' adapters: what the optimizer gets."""
        yield from self.student.parameters()
        yield from self.terms.parameters()

    @torch.no_grad()
    def probe(self, example_inputs: Any) -> None:
        """Run one batch through both models in eval mode: check output shapes, that the models give the hidden
        states and attentions the terms need, and build the terms' adapters."""
        was_training = self.student.training
        self.student.eval()
        try:
            with _model_fails_on(example_inputs, "student"):
                student = self._student_outputs(example_inputs)
            with _model_fails_on(example_inputs, "teacher"):
                teacher = self._teacher_outputs(example_inputs)
            if teacher is not None and teacher.logits.ndim == 3 and student.logits.ndim == 3 \
                    and teacher.logits.shape[-1] != student.logits.shape[-1]:  # fmt: skip
                raise TinykdError(
                    f"teacher and student must share a tokenizer: the teacher predicts {teacher.logits.shape[-1]} "
                    f"tokens, the student {student.logits.shape[-1]}; build the student with the teacher's "
                    "tokenizer (a config-built student takes the data's vocabulary: leave vocab_size out)"
                )
            if teacher is not None and teacher.logits.shape != student.logits.shape:
                raise TinykdError(
                    f"teacher outputs shape {tuple(teacher.logits.shape)} but student outputs "
                    f"{tuple(student.logits.shape)} on the same batch; they must predict the same classes "
                    "(check num_classes of both models)"
                )
            for name, term in self.terms.items():
                try:
                    term.build(student, teacher)
                except ValueError as exc:
                    raise TinykdError(f"loss term '{name}': {exc}") from None
        finally:
            self.student.train(was_training)

    def forward(self, inputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, cached, key = None, None, None
        if isinstance(inputs, Indexed):
            inputs, index, cached, key = inputs
        if cached is not None:  # from the teacher cache: the teacher does not run
            teacher = Outputs(cached["logits"], {p: cached[f"tap.{p}"] for p in self.teacher_tap_paths()},
                              mask=padding_mask(inputs))  # fmt: skip
        else:
            teacher = self._teacher_outputs(inputs)
            if self.teacher_cache is not None and key is not None and teacher is not None:
                self.teacher_cache.add(key, teacher.logits, teacher.features)
        student = self._student_outputs(inputs)
        student.index = index
        losses = {k: self.weights[k] * term(student, teacher, targets) for k, term in self.terms.items()}
        return student.logits, losses

    @property
    def reads_hidden_states(self) -> bool:
        """Whether some term reads hidden states or attention probabilities (transformer terms)."""
        return self._hidden_states or bool(self._attentions)

    def teacher_tap_paths(self) -> list[str]:
        """The teacher's module paths the terms read: what a teacher cache stores beside the logits."""
        return [p for t in self.terms.values() for p in t.teacher_taps()]

    @torch.no_grad()
    def fill_cache(self, inputs: Indexed) -> None:
        """Run the teacher on one batch and add its outputs to the teacher cache (`tinykd cache-teacher`)."""
        assert self.teacher_cache is not None and inputs.key is not None
        teacher = self._teacher_outputs(inputs.inputs)
        assert teacher is not None
        self.teacher_cache.add(inputs.key, teacher.logits, teacher.features)

    def _student_outputs(self, inputs: Any) -> Outputs:
        out = forward_outputs(self.student, inputs, self._hidden_states, bool(self._attentions), "student")
        out.features, out.mask = self._student_taps.pop(), padding_mask(inputs)
        return out

    def _teacher_outputs(self, inputs: Any) -> Outputs | None:
        if self.teacher is None:
            return None
        with torch.no_grad(), self.clock("teacher forward") if self.clock else contextlib.nullcontext():
            if self.teacher_dtype is not None:
                inputs = cast_floats(inputs, self.teacher_dtype)
            out = forward_outputs(self.teacher, inputs, self._hidden_states, bool(self._attentions), "teacher")
        features = self._teacher_taps.pop()  # type: ignore[union-attr]
        out.features = {k: v.float() if v.is_floating_point() else v for k, v in features.items()}  # any format
        out.mask = padding_mask(inputs)
        if self.teacher_dtype is not None:  # the loss terms compute in the student's precision
            out.logits = out.logits.float()
            out.hidden_states = tuple(h.float() for h in out.hidden_states) if out.hidden_states is not None else None
            out.attentions = tuple(a.float() for a in out.attentions) if out.attentions is not None else None
        return out

    def formula(self) -> str:
        """The total loss as a readable sum, e.g. `0.1 * ce + 0.9 * kd(temperature=4.0)`."""
        parts = []
        for k, term in self.terms.items():
            extra = term.extra_repr()
            parts.append(f"{self.weights[k]:g} * {k}" + (f"({extra})" if extra else ""))
        return " + ".join(parts)

    def extra_repr(self) -> str:
        return f"loss = {self.formula()}"


@contextlib.contextmanager
def _model_fails_on(inputs: Any, role: str) -> Iterator[None]:
    """A model that cannot take the data's batch (an input width or vocabulary built for other data) is a
    mistake in the recipe: one line naming the model, the batch's shape and PyTorch's reason."""
    try:
        yield
    except TinykdError:
        raise
    except (RuntimeError, IndexError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TinykdError(f"the {role} cannot run on a batch of the data ({describe_inputs(inputs)}): {reason}; "
                          "build it for this data (its kwargs: image_size, vocab_size, in_channels)"
                          ) from None  # fmt: skip
