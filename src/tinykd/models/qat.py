"""Quantization-aware training of a student's linear layers, through torchao.

A recipe's `quantize` section (`weights: int8|int4`, `activations: int8|none`, `granularity`, `group_size`) picks
one torchao base configuration: `Int8DynamicActivationIntxWeightConfig` (int8 activations quantized per token on
the fly, int8 or int4 weights) or `IntxWeightOnlyConfig`. `QATConfig(base, step="prepare")` swaps every
`nn.Linear` for torchao's `FakeQuantizedLinear`, which rounds its weights (and inputs) to the target grid in the
forward pass and lets gradients through (straight-through estimator) while the teacher distils into it;
`step="convert"` then stores the real low-bit weights, and the converted model computes what the fake-quantized
one did (tests assert equality on a batch).

The scales are computed from the weights at every step (symmetric min-max, per channel or per group), so the
fake-quantized model has no state of its own: its state_dict is the fp32 model's, checkpoints and `--resume`
are unchanged, and a resumed run stays bit for bit. Convolutions are not covered by torchao's QAT of modules
(that is its PT2E flow); a student with convolutions is refused in one line rather than half quantized.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError

WEIGHT_DTYPES = {"int8": torch.int8, "int4": torch.int4}


def _base_config(spec: Any) -> Any:
    """torchao's post-training configuration that the QAT prepares for and converts to."""
    try:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError:
        raise TinykdError("recipe section 'quantize' needs torchao: pip install 'tinykd[qat]' (or torchao)") from None
    granularity = PerGroup(spec.group_size) if spec.granularity == "per-group" else PerAxis(0)
    dtype = WEIGHT_DTYPES[spec.weights]
    if spec.activations == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity)


def describe(spec: Any) -> str:
    """E.g. `int4 weights (per group of 32), int8 activations`."""
    how = f"per group of {spec.group_size}" if spec.granularity == "per-group" else "per channel"
    acts = "int8 activations (dynamic, per token)" if spec.activations == "int8" else "fp32 activations"
    return f"{spec.weights} weights ({how}), {acts}"


def prepare_qat(model: nn.Module, spec: Any) -> list[str]:
    """Swap the linear layers of `model` (in place) for fake-quantized ones; the names of those layers.

    One line, before any training, when torchao cannot cover the model: convolutions, no linear layer, or a
    per-group size that does not divide a layer's input width."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if convs:
        raise TinykdError(f"quantize: torchao's quantization-aware training covers linear layers; the student has "
                          f"{len(convs)} convolution(s) ({convs[0]}, ...): use an MLP or transformer student, or "
                          "post-training int8 (tinykd quantize) for convolutional ones")  # fmt: skip
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TinykdError("quantize: the student has no nn.Linear layer for quantization-aware training (GPT-2's "
                          "transformers Conv1D layers are not nn.Linear)")  # fmt: skip
    if spec.granularity == "per-group":
        for name in linears:
            width = model.get_submodule(name).in_features
            if width % spec.group_size:
                raise TinykdError(f"quantize.group_size={spec.group_size} does not divide the {width} inputs of "
                                  f"layer {name}; give a group_size that divides every linear layer's input width "
                                  "or granularity: per-channel")  # fmt: skip
    quantize_(model, QATConfig(_base_config(spec), step="prepare"))
    return linears


def convert_qat(model: nn.Module, spec: Any) -> nn.Module:
    """A copy of a fake-quantized model with real low-bit weights (the model itself is left as it is)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    converted = copy.deepcopy(model).cpu().eval()
    quantize_(converted, QATConfig(_base_config(spec), step="convert"))
    return converted


def state_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(state_dict)`: torchao's low-bit tensors are subclasses that safetensors cannot hold."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())
