"""A run's pieces built from its recipe: the data, the models, the loss terms and the distiller.

`run`, the compression tools, `tinykd eval` and the demo all build through here, so that a model or a
dataset is made the same way everywhere. Nothing here trains, and nothing here knows of devices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tinykd.data import DataBundle, build_datasets, make_loader
from tinykd.distill import Distiller
from tinykd.errors import TinykdError
from tinykd.losses import LOSSES, LossTerm, build_loss_term
from tinykd.models import create_model
from tinykd.models.checkpoint import load_weights
from tinykd.recipes import Recipe
from tinykd.recipes.schema import ModelSpec

TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_data(recipe: Recipe, augment: bool | None = None) -> DataBundle:
    """The recipe's datasets and its seeded validation split."""
    d = recipe.data
    augment = d.augment if augment is None else augment
    return build_datasets(d.name, d.root, d.download, augment, d.val_size, d.train_subset, recipe.seed, d.image_size,
                          d.bad_images)


def build_model(spec: ModelSpec, data: DataBundle, role: str) -> nn.Module:
    """Create a model for the data's classes and channels (kwargs may override them); load its checkpoint."""
    kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels, **spec.kwargs}
    model = create_model(spec.name, **kwargs)
    if spec.checkpoint:
        load_weights(model, spec.checkpoint, spec.name)
    return model


def build_loss_terms(recipe: Recipe) -> dict[str, tuple[LossTerm, float]]:
    """The recipe's loss terms, built, with their weights: what a `Distiller` takes."""
    return {key: (build_loss_term(s.type or key, s.params()), s.weight) for key, s in recipe.loss_terms.items()}


def needs_teacher(recipe: Recipe) -> bool:
    """Whether any loss term reads the teacher's outputs."""
    return any(LOSSES.get(s.type or k).needs_teacher for k, s in recipe.loss_terms.items())


def build_teacher(recipe: Recipe, data: DataBundle) -> nn.Module | None:
    """The frozen teacher with its trained weights, or None when no loss term uses it."""
    if recipe.teacher is None or not needs_teacher(recipe):
        return None
    if not (recipe.teacher.checkpoint or recipe.teacher.kwargs.get("pretrained")):
        raise TinykdError("teacher.checkpoint is not set: a teacher needs trained weights (tinykd train makes them)")
    return build_model(recipe.teacher, data, "teacher")


def probe_batch(data: DataBundle) -> Any:
    """The first few training inputs, unaugmented: they check the models and size the adapters."""
    inputs, _ = next(iter(make_loader(data.train, 4, train=False)))
    return inputs


def build_distiller(recipe: Recipe, student: nn.Module, teacher: nn.Module | None, probe_inputs: Any) -> Distiller:
    """Student, teacher (in `teacher.precision`) and weighted loss terms, checked on the probe batch."""
    dtype = TEACHER_DTYPES[recipe.teacher.precision] if recipe.teacher is not None else None
    return Distiller(teacher, student, build_loss_terms(recipe), probe_inputs, dtype)
