"""`assemble(recipe)`: every piece a run needs, built once, in one order, in one place.

`tinykd train`/`distill` (`run`), `prune`, `cache-teacher` and `generate` are short variations over the same
assembly: the engine first (it knows the ranks and seeds them), then the data, the task, the teacher, the student,
the distiller that joins them, and the metadata the student's checkpoints carry. Nothing here trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from tinykd.data import DataBundle
from tinykd.distill import Distiller
from tinykd.distill.cache import TeacherCache
from tinykd.engine import Engine
from tinykd.engine.runtime import resolve_precision
from tinykd.errors import TinykdError
from tinykd.measure import timing_input
from tinykd.models.checkpoint import CheckpointMeta
from tinykd.models.hf import hf_checkpoint_spec, is_hf_model
from tinykd.models.qat import is_pt2e
from tinykd.pipeline import (
    build_data,
    build_distiller,
    build_student,
    build_teacher,
    needs_teacher,
    open_teacher_cache,
    probe_batch,
    training_set,
)
from tinykd.recipes import Recipe
from tinykd.tasks import Task

StudentBuilder = Callable[[Recipe, DataBundle, "nn.Module | None"], nn.Module]


@dataclass
class Assembly:
    """A recipe's pieces, ready to train: what `assemble` returns."""

    recipe: Recipe
    engine: Engine
    data: DataBundle
    task: Task
    teacher: nn.Module | None  # None when no loss term reads it
    student: nn.Module
    probe_inputs: Any  # a few training inputs: they checked the models and sized the adapters
    distiller: Distiller | None = None  # None until `join` (prune builds it after pruning the student)
    cache: TeacherCache | None = None  # the teacher cache, when the recipe has one (opened by `open_cache`)

    def join(self) -> Distiller:
        """The distiller of this teacher, student and the recipe's loss terms (each teacher in its precision)."""
        precisions = [resolve_precision(spec.precision, self.engine.device.type) for spec in self.recipe.teacher_specs]
        self.distiller = build_distiller(self.recipe, self.student, self.teacher, self.probe_inputs, precisions,
                                         len(self.data.train))  # fmt: skip
        return self.distiller

    def open_cache(self) -> TeacherCache | None:
        """The recipe's teacher cache, handed to the distiller (None without `teacher.cache`)."""
        assert self.distiller is not None, "join() first"
        self.cache = open_teacher_cache(self.recipe, self.data, self.distiller)
        return self.cache

    def train_loader(self) -> DataLoader:
        """The training batches as the distiller takes them (indexed, or with the teacher's cached outputs)."""
        assert self.distiller is not None, "join() first"
        d = self.recipe.data
        return self.engine.loader(training_set(self.data, self.distiller), d.batch_size, True, d.num_workers,
                                  self.recipe.seed)  # fmt: skip

    def eval_loader(self, split: str) -> DataLoader | None:
        """The `val` or `test` batches, padded to whole batches (None when the split is absent)."""
        dataset = self.data.val if split == "val" else self.data.test
        return None if dataset is None else self.engine.loader(dataset, self.recipe.data.eval_batch_size, False)

    def test_loader(self) -> DataLoader:
        """The test batches, prepared (split over the processes), for the report's evaluations."""
        loader = self.eval_loader("test")
        assert loader is not None
        return self.engine.accelerator.prepare(loader)

    def timing_input(self) -> Any:
        """What the models are timed on: the first training input; a text made `measure.sequence_length` long."""
        return timing_input(self.probe_inputs, self.recipe.measure.sequence_length)

    def checkpoint_meta(self, **extra: Any) -> CheckpointMeta:
        """What the student's checkpoints say about it: enough to rebuild it and find its data."""
        recipe, data, student = self.recipe, self.data, self.engine.accelerator.unwrap_model(self.student)
        meta = CheckpointMeta(model=recipe.trained.name, kwargs=recipe.trained.kwargs, num_classes=data.num_classes,
                              in_channels=data.in_channels, image_size=data.image_size, classes=data.classes,
                              recipe=recipe.model_dump(mode="json"), **extra)  # fmt: skip
        if is_pt2e(student):  # its checkpoints also hold the fake quantizers' state; a plain model skips it
            meta.qat = "pt2e"
        if is_hf_model(student):  # rebuilt from its own config (a layer-copied student has no name of its own)
            meta.model, meta.kwargs = hf_checkpoint_spec(student, data.task.name)
        for key, value in data.checkpoint_fields().items():
            setattr(meta, key, value)
        return meta


def assemble(recipe: Recipe, *, join: bool = True, student: StudentBuilder | None = None) -> Assembly:
    """Build the recipe's engine, data, task, teacher, student and (with `join`) distiller.

    `student` builds the model to train instead of the recipe's own student (prune: the trained checkpoint, which
    it narrows before the distiller is joined). Every check that can fail does so here, before any folder is made.
    """
    engine = Engine(recipe.runtime)  # first: it knows the ranks, and only the main process touches the folder
    engine.seed(recipe.seed)
    data = build_data(recipe, static_shapes=engine.device.type == "xla")  # XLA: one compiled shape per step
    if data.skipped and engine.is_main:
        shown = "; ".join(data.skipped[:3]) + (f"; and {len(data.skipped) - 3} more" if len(data.skipped) > 3 else "")
        print(f"tinykd: data.bad_images=skip: left out {len(data.skipped)} unreadable file(s): {shown}")
    teacher = build_teacher(recipe, data, for_init=student is None)
    model = (student or build_student)(recipe, data, teacher)
    roles = {"teacher": teacher, "student" if recipe.student is not None else "model": model}
    check_positions(recipe, data, roles, say=engine.is_main)
    if not needs_teacher(recipe):
        teacher = None  # it was loaded only to start the student from its layers
    parts = Assembly(recipe, engine, data, data.task, teacher, model, probe_batch(data))
    if join:
        parts.join()
    return parts


def check_positions(recipe: Recipe, data: DataBundle, models: dict[str, Any], say: bool = True) -> None:
    """A text longer than a transformer's position table fails deep inside its forward pass; say it first, naming
    the setting and the model: the data's longest text (every text at `data.max_length` with static shapes), and
    `measure.sequence_length` that latency is timed at. A `data.max_length` beyond the table that no text reaches
    yet is a warning: a longer text given to the trained model later would fail."""
    if not data.is_text:
        return
    texts = [getattr(split, "dataset", split) for split in (data.train, data.val, data.test) if split is not None]
    static = any(getattr(t, "static_shapes", False) for t in texts)
    longest = max((max(t.sample_lengths(), default=0) for t in texts if hasattr(t, "sample_lengths")), default=0)
    lengths = {"data.max_length": recipe.data.max_length if static else longest}
    if recipe.measure.enabled:
        lengths["measure.sequence_length"] = recipe.measure.sequence_length
    for role, model in models.items():
        config = getattr(model, "config", None)
        positions = getattr(config, "max_position_embeddings", None) if config is not None else None
        if not isinstance(positions, int) or getattr(config, "position_embedding_type", "absolute") != "absolute":
            continue
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            positions -= 2  # their positions start after the padding index
        for setting, length in lengths.items():
            if length and length > positions:
                what = "" if setting != "data.max_length" or static else f" (the longest text has {length} tokens)"
                raise TinykdError(f"{setting}={recipe.data.max_length if setting == 'data.max_length' else length} "
                                  f"is longer than the {role}'s {positions} position embeddings{what}; set {setting} "
                                  f"to {positions} or less")  # fmt: skip
        if recipe.data.max_length > positions and say:
            print(f"tinykd: data.max_length={recipe.data.max_length} is longer than the {role}'s {positions} position "
                  f"embeddings; no text here is, but a longer one would fail later: set data.max_length to "
                  f"{positions} or less")  # fmt: skip
