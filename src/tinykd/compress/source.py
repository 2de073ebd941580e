"""Where the compression tools get their images and texts: from the recipe stored in the model's checkpoint
(`tinykd.loading` opens the models), so that every number is measured on the data the model was trained for,
never on a stand-in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.data.inputs import batch_size, from_numpy, map_inputs, take
from tinykd.errors import TinykdError


def onnx_label(path: Path) -> str:
    """`runs/kd/model.int8.onnx` is `kd/model.int8.onnx` (the run names it); any other file is its name."""
    return f"{path.parent.name}/{path.name}" if path.name.startswith("model.") and path.parent.name else path.name


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
