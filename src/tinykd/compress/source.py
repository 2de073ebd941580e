"""Where the compression tools get their models and their images.

A model comes from a tinykd checkpoint or run folder (rebuilt from its metadata, pruned ones included), and
its images from the recipe stored in that checkpoint, so that every number is measured on the data the model
was trained for, never on a stand-in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.data.inputs import batch_size, from_numpy, map_inputs, take
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import load_weights, read_meta, resolve_checkpoint, run_folder_of


@dataclass
class Loaded:
    """A trained PyTorch model rebuilt from a tinykd checkpoint, with the checkpoint's metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return str(self.meta["model"])

    @property
    def label(self) -> str:
        return checkpoint_label(self.path)


def checkpoint_label(path: Path) -> str:
    """`runs/kd/checkpoints/best.safetensors` is `kd`; any other file is its stem."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem


def onnx_label(path: Path) -> str:
    """`runs/kd/model.int8.onnx` is `kd/model.int8.onnx` (the run names it); any other file is its name."""
    return f"{path.parent.name}/{path.name}" if path.name.startswith("model.") and path.parent.name else path.name


def is_checkpoint_source(source: str | Path) -> bool:
    """A run folder or a checkpoint file (as opposed to a recipe, an .onnx file or a model name)."""
    p = Path(source)
    return p.is_dir() or (p.is_file() and p.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"))


def load_checkpoint_model(source: str | Path) -> Loaded:
    """Rebuild the model a tinykd checkpoint (or run folder) was saved from, and load its weights (eval mode)."""
    from tinykd.models import create_model
    from tinykd.models.registry import sized_for

    path = resolve_checkpoint(source)
    if path.suffix != ".safetensors":
        raise TinykdError(f"{path}: expected a tinykd checkpoint (.safetensors with metadata) or a run folder")
    meta = read_meta(path)
    if "model" not in meta:
        raise TinykdError(f"{path} has no tinykd metadata (model name); it was not written by tinykd")
    num_classes, in_channels = meta.get("num_classes"), meta.get("in_channels")
    if (num_classes is None or in_channels is None) and "recipe" in meta:
        bundle = build_bundle(checkpoint_recipe(meta, path))
        num_classes, in_channels = bundle.num_classes, bundle.in_channels
    if num_classes is None or in_channels is None:
        raise TinykdError(f"{path}: its metadata gives neither num_classes and in_channels nor a recipe")
    kwargs = sized_for(meta["model"], meta.get("kwargs", {}), meta.get("image_size"))
    model = create_model(meta["model"], num_classes=num_classes, in_channels=in_channels, **kwargs)
    load_weights(model, path, meta["model"])
    return Loaded(model.eval(), meta, path)


def checkpoint_recipe(meta: dict[str, Any], where: Path | str, overrides: list[str] | None = None) -> Any:
    """The validated recipe stored in a checkpoint's (or an .onnx file's) metadata, with `--set` overrides."""
    from tinykd.recipes import validate_recipe
    from tinykd.recipes.load import apply_override

    if "recipe" not in meta:
        raise TinykdError(f"{where} has no tinykd recipe in its metadata, so its dataset is unknown; "
                          "pass --recipe RECIPE to name the data")  # fmt: skip
    data = json.loads(json.dumps(meta["recipe"]))
    tokenizer = saved_tokenizer(meta, where)
    if tokenizer is not None and isinstance(data.get("data"), dict) and not data["data"].get("tokenizer"):
        data["data"]["tokenizer"] = str(tokenizer)  # the text was tokenized with the run's own tokenizer
    for item in overrides or []:
        apply_override(data, item)
    return validate_recipe(data)


def saved_tokenizer(meta: dict[str, Any], where: Path | str) -> Path | None:
    """The tokenizer folder a text checkpoint names (relative to its run folder), when it is there."""
    if not meta.get("tokenizer") or not str(where).endswith(".safetensors"):
        return None
    folder = run_folder_of(Path(where)) / str(meta["tokenizer"])
    return folder if folder.is_dir() else None


def load_any_recipe(source: str | Path, overrides: list[str] | None = None) -> Any:
    """A recipe given as a YAML file or a built-in name, or the recipe inside a checkpoint or run folder."""
    from tinykd.recipes import load_recipe

    if is_checkpoint_source(source):
        path = resolve_checkpoint(source)
        return checkpoint_recipe(read_meta(path), path, overrides)
    return load_recipe(str(source), overrides)


_BUNDLES: dict[str, Any] = {}
_ARRAYS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def build_bundle(recipe: Any) -> Any:
    """The recipe's datasets without augmentation (built once per data section and seed in this process)."""
    from tinykd.pipeline import build_data

    key = json.dumps([recipe.data.model_dump(mode="json"), recipe.seed], sort_keys=True)
    if key not in _BUNDLES:
        _BUNDLES[key] = build_data(recipe, augment=False)
    return _BUNDLES[key]


Inputs = np.ndarray | dict[str, np.ndarray]  # images (N, C, H, W), or a text model's named int64 arrays (N, T)


def dataset_arrays(recipe: Any, split: str = "test", limit: int | None = None) -> tuple[Inputs, np.ndarray]:
    """The inputs and int64 labels of a split (train, val or test; the first `limit`): normalised float32 images
    (N, C, H, W), or for text `{input_ids, attention_mask}` (N, T) padded to the split's longest text."""
    from tinykd.data import BatchSubset, make_loader

    key = json.dumps([recipe.data.model_dump(mode="json"), recipe.seed, split, limit], sort_keys=True)
    if key in _ARRAYS:
        return _ARRAYS[key]
    bundle = build_bundle(recipe)
    dataset = getattr(bundle, split)
    if dataset is None:
        raise TinykdError(f"the recipe has no {split} split (data.val_size=0)")
    if limit is not None and limit < len(dataset):
        dataset = BatchSubset(dataset, range(limit))
    batches, labels = [], []
    for x, y in make_loader(dataset, 512, train=False):
        batches.append(map_inputs(lambda v: v.numpy().astype(np.float32 if v.is_floating_point() else np.int64), x))
        labels.append(y.numpy().astype(np.int64))
    _ARRAYS[key] = _concatenate(batches), np.concatenate(labels)
    return _ARRAYS[key]


def _concatenate(batches: list[Inputs]) -> Inputs:
    """Join batches; text batches (padded each to its own longest text) are padded to the longest of all with 0,
    which the attention mask leaves out."""
    if not isinstance(batches[0], dict):
        return np.concatenate(batches)  # type: ignore[arg-type]
    width = max(b["input_ids"].shape[1] for b in batches)  # type: ignore[index]
    return {k: np.concatenate([np.pad(b[k], ((0, 0), (0, width - b[k].shape[1]))) for b in batches])  # type: ignore[index]
            for k in batches[0]}  # fmt: skip


def example_input(shape: tuple[int, int, int], images: Inputs | None = None) -> Any:
    """One input of batch 1: a real image (or text) when there are some, else a seeded random image."""
    if images is not None and batch_size(images):
        return from_numpy(take(images, 1))
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))


def input_shape_of(meta: dict[str, Any]) -> tuple[int, int, int] | None:
    """(C, H, W) from a checkpoint's metadata, when it has them."""
    if meta.get("in_channels") and meta.get("image_size"):
        return int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"])
    return None


def default_output(source: str | Path, suffix: str) -> Path:
    """Where a tool writes by default: inside a run folder as `model<suffix>`, else beside the checkpoint."""
    p = Path(source)
    if p.is_dir():
        return p / f"model{suffix}"
    if p.parent.name == "checkpoints":
        return p.parent.parent / f"model{suffix}"
    name = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.stem
    return p.with_name(name + suffix)


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to replace a file unless asked; make its folder."""
    if path.exists() and not overwrite:
        raise TinykdError(f"{path} already exists; choose another --out or pass --overwrite")
    if path.is_dir():
        raise TinykdError(f"{path} is a folder; --out takes a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
