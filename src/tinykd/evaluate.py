"""`tinykd eval`: rebuild a model from its checkpoint's metadata, test it, measure it."""

from __future__ import annotations

from typing import Any

from tinykd.compress.predictors import TorchPredictor
from tinykd.compress.predictors import measure as measure_predictor
from tinykd.data import make_loader
from tinykd.engine import Engine
from tinykd.errors import TinykdError
from tinykd.loading import load_model, recipe_from_checkpoint
from tinykd.measure import timing_input
from tinykd.pipeline import build_data


def evaluate_checkpoint(
    checkpoint: str, split: str = "test", overrides: list[str] | None = None, measure: bool = True
) -> dict[str, Any]:
    """Accuracy on the recipe's dataset (and measurements) of a tinykd checkpoint or run folder."""
    if split not in ("test", "val"):
        raise TinykdError(f"--split must be test or val, not '{split}'")
    loaded = load_model(checkpoint)  # the checks and the rebuild are shared with the edge commands
    recipe = recipe_from_checkpoint(loaded.meta, loaded.path, overrides)
    bundle = build_data(recipe, augment=False)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        raise TinykdError("this run had no validation split (data.val_size=0); use --split test")
    model = loaded.model
    engine = Engine(recipe.runtime)
    loader = engine.accelerator.prepare(make_loader(dataset, recipe.data.eval_batch_size, False))
    model = model.to(engine.device)
    row: dict[str, Any] = {"role": loaded.label, "model": loaded.name}
    row[f"{split}_accuracy"] = engine.evaluate(model, loader)["accuracy"]
    if measure:
        example, _ = next(iter(make_loader(dataset, 1, False)))
        example = timing_input(example, recipe.measure.sequence_length)  # text: at the stated sequence length
        predictor = TorchPredictor(model, loaded.meta, loaded.label, threads=recipe.measure.threads)  # on the CPU
        row.update(measure_predictor(predictor, example, recipe.measure.latency_repeats,
                                     recipe.measure.throughput_batch))  # fmt: skip
    return row
