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
from torch import nn

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
        batches.append({k: v.numpy().astype(np.int64) for k, v in x.items()} if isinstance(x, dict)
                       else x.numpy().astype(np.float32))  # fmt: skip
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


def count(inputs: Inputs) -> int:
    """The number of samples in images or named text arrays."""
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def take(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples start..stop of images or named text arrays, contiguous (ONNX Runtime wants them so)."""
    if isinstance(inputs, dict):
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in inputs.items()}
    return np.ascontiguousarray(inputs[start:stop])


def timing_example(inputs: Inputs, sequence_length: int) -> Inputs:
    """What latency is timed on: the first image, or the first text made exactly `sequence_length` tokens long
    (its tokens repeated, all attended), since a text model's latency depends on the length."""
    if not isinstance(inputs, dict):
        return take(inputs, 0, 1)
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].astype(bool)]
    ids = np.resize(ids, sequence_length)[None]
    example = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64)}
    if "token_type_ids" in inputs:
        example["token_type_ids"] = np.zeros_like(ids, dtype=np.int64)
    return example


def to_torch(inputs: Inputs) -> Any:
    return {k: torch.from_numpy(v.copy()) for k, v in inputs.items()} if isinstance(inputs, dict) else \
        torch.from_numpy(inputs.copy())  # fmt: skip


@torch.inference_mode()
def torch_logits(model: nn.Module, inputs: Inputs, batch: int = 256, prepare: bool = True) -> np.ndarray:
    """The model's outputs on CPU in eval mode, batch by batch (`prepare=False`: leave the module as it is)."""
    from tinykd.models.outputs import call_model

    if prepare:
        model = model.eval().cpu()
    n = count(inputs)
    outs = [call_model(model, to_torch(take(inputs, i, i + batch))).float().numpy() for i in range(0, n, batch)]
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; labels of -1 (padding) are not counted."""
    valid = labels >= 0
    return float((logits.argmax(1)[valid] == labels[valid]).mean()) if valid.any() else float("nan")


def example_input(shape: tuple[int, int, int], images: Inputs | None = None) -> Any:
    """One input of batch 1: a real image (or text) when there are some, else a seeded random image."""
    if images is not None and count(images):
        return to_torch(take(images, 0, 1))
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
