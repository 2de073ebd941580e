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


def is_token_inputs(inputs: Any) -> bool:
    """Whether `inputs` are a tokenizer's (a mapping with `input_ids`) rather than images."""
    return isinstance(inputs, Mapping) and "input_ids" in inputs
