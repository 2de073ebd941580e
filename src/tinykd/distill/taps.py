"""Feature taps: read the output of any sub-module by its dotted path, through forward hooks.

`FeatureTaps(model, ["layer3", "encoder.layer.5"])` keeps the latest output
of each named module, so loss terms can use intermediate features of
unmodified models (torchvision, timm, Hugging Face). A module that returns a
tuple or a model-output object (as transformer layers do) gives its first
tensor. `PATH:input` reads the module's first input instead of its output:
`fc:input` is the embedding a classifier `fc` sees (what relational terms
such as RKD, PKT and CRD compare). Hooks are removed by `remove()` or on
leaving a `with` block.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError, close_matches
from tinykd.losses.base import TAP_INPUT as INPUT


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a feature term wants from a module's output (a tensor, tuple, dict or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"a tapped module returned {type(output).__name__}, which holds no tensor")


def find_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """`model.get_submodule(path)`, with an error that lists close matches of the existing paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise TinykdError(
            f"no module '{path}' in the {role} ({type(model).__name__}){close_matches(path, names)}; "
            f"top-level modules: {', '.join(n for n in names if '.' not in n)}"
        ) from None


class FeatureTaps:
    """Forward hooks that record the outputs of named sub-modules of one model."""

    def __init__(self, model: nn.Module, paths: Iterable[str], role: str = "model") -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in dict.fromkeys(paths):  # keep order, drop duplicates
            module_path, reads_input = (path[: -len(INPUT)], True) if path.endswith(INPUT) else (path, False)
            module = find_module(model, module_path, role)
            self._handles.append(module.register_forward_hook(self._recorder(path, reads_input)))

    def _recorder(self, path: str, reads_input: bool):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[path] = first_tensor(inputs if reads_input else output)

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """Return the recorded features and forget them (so no step sees a stale feature)."""
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
