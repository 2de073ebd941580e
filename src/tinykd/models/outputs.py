"""What a model returns, read one way: a tensor, a tuple whose first item is the logits, or an object with
`.logits` (Hugging Face). The engine, the distiller and the tools all call models through this."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Run a model on a tensor or a dict of tensors and return its logits (plain, tuple or `.logits`)."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")
