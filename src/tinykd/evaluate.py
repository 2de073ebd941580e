"""`tinykd eval`: rebuild a model from its checkpoint's metadata, test it, measure it."""

from __future__ import annotations

from typing import Any

from tinykd.engine import Engine, make_loader
from tinykd.errors import TinykdError
from tinykd.measure import measure_model
from tinykd.models import create_model
from tinykd.models.checkpoint import load_weights, read_meta, resolve_checkpoint
from tinykd.recipes import validate_recipe
from tinykd.recipes.load import apply_override
from tinykd.run import build_data


def evaluate_checkpoint(
    checkpoint: str, split: str = "test", overrides: list[str] | None = None, measure: bool = True
) -> dict[str, Any]:
    """Accuracy on the recipe's dataset (and measurements) of a tinykd checkpoint or run folder."""
    if split not in ("test", "val"):
        raise TinykdError(f"--split must be test or val, not '{split}'")
    path = resolve_checkpoint(checkpoint)
    if path.suffix != ".safetensors":
        raise TinykdError(f"{path}: tinykd eval reads tinykd checkpoints (.safetensors with metadata)")
    meta = read_meta(path)
    if "recipe" not in meta or "model" not in meta:
        raise TinykdError(f"{path} has no tinykd metadata (model name and recipe); it was not written by tinykd")
    data = dict(meta["recipe"])
    for item in overrides or []:
        apply_override(data, item)
    recipe = validate_recipe(data)
    bundle = build_data(recipe, augment=False)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        raise TinykdError("this run had no validation split (data.val_size=0); use --split test")
    model = create_model(meta["model"], num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                         **meta.get("kwargs", {}))  # fmt: skip
    load_weights(model, path, meta["model"])
    engine = Engine(recipe.runtime)
    loader = engine.accelerator.prepare(make_loader(dataset, recipe.data.eval_batch_size, False))
    model = model.to(engine.device)
    row: dict[str, Any] = {"role": path.parent.parent.name or path.stem, "model": meta["model"]}
    row[f"{split}_accuracy"] = engine.evaluate(model, loader)["accuracy"]
    if measure:
        example, _ = next(iter(make_loader(dataset, 1, False)))
        row.update(measure_model(model, example, recipe.measure.latency_repeats, recipe.measure.throughput_batch,
                                 recipe.measure.threads).as_dict())  # fmt: skip
    return row
