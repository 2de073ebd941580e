"""A batch's inputs, whatever their kind: one tensor (images) or a dict of tensors (texts: input_ids, masks, ...).

Code above the data layer handles inputs through these few functions, so that it never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch


def map_inputs(fn: Callable[[Any], Any], inputs: Any) -> Any:
    """`fn` applied to each array of `inputs` (a tensor, an array, or a mapping of them), in the same structure."""
    if isinstance(inputs, Mapping):
        return {k: fn(v) for k, v in inputs.items()}
    return fn(inputs)


def batch_size(inputs: Any) -> int:
    """How many samples `inputs` holds (the first dimension)."""
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return len(first)


def take(inputs: Any, n: int) -> Any:
    """The first `n` samples of `inputs`."""
    return map_inputs(lambda v: v[:n], inputs)


def to_numpy(inputs: Any) -> Any:
    """`inputs` as numpy arrays on the host (what ONNX Runtime and the other runtimes take)."""
    return map_inputs(lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v), inputs)


def from_numpy(inputs: Any) -> Any:
    """`inputs` as torch tensors (copies: numpy arrays from a runtime may be read-only)."""
    return map_inputs(lambda v: torch.from_numpy(np.array(v, copy=True)), inputs)


def input_names(inputs: Any) -> list[str]:
    """The names a model's inputs take in an exported graph: a mapping's keys, else the one `input`."""
    return list(inputs) if isinstance(inputs, Mapping) else ["input"]


def padding_mask(inputs: Any) -> torch.Tensor | None:
    """The padding mask of the positions the logits are for (1 for real tokens), or None for images: the
    decoder's for an encoder-decoder (its logits are the decoder's), else `attention_mask`."""
    if not isinstance(inputs, Mapping):
        return None
    return inputs["decoder_attention_mask"] if "decoder_attention_mask" in inputs else inputs.get("attention_mask")


def describe_inputs(inputs: Any) -> str:
    """A batch's shapes in words: `images of shape (4, 1, 8, 8)`, `input_ids (4, 12), attention_mask (4, 12)`."""
    if isinstance(inputs, torch.Tensor):
        return f"{'images' if inputs.ndim == 4 else 'inputs'} of shape {tuple(inputs.shape)}"
    if isinstance(inputs, Mapping):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items() if isinstance(v, torch.Tensor))
    return type(inputs).__name__


def is_token_inputs(inputs: Any) -> bool:
    """Whether `inputs` (a batch, or the names of an exported model's inputs) are a tokenizer's (`input_ids`)
    rather than images."""
    return isinstance(inputs, Mapping | list | tuple) and "input_ids" in inputs
