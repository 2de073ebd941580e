"""Ship it to the edge: export, quantize, prune, profile and compare models after distillation.

Each tool is a plain function (a module or a file in; a result and a report dict out), and the CLI is a thin
face over them. Heavy optional libraries (onnx, onnxruntime, torch_pruning, matplotlib) are imported inside
the functions, and this package imports its modules lazily: `from tinykd.compress import export_onnx` pulls
in the exporter and not the pruner.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_onnx": "export", "export_pt2": "export", "verify_onnx": "export", "export_checkpoint": "export",
    "quantize_static_onnx": "quantize", "quantize_dynamic_onnx": "quantize", "quantize_torch_dynamic": "quantize",
    "quantize_model": "quantize", "quantize_for_demo": "quantize",
    "prune_model": "prune", "prune_run": "prune", "prune_command": "prune",
    "profile_model": "profile", "compare_models": "compare",
    "open_predictor": "predictors", "Predictor": "predictors", "evaluate": "predictors", "measure": "predictors",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinykd.compress' has no attribute '{name}'")
    return getattr(importlib.import_module(f"tinykd.compress.{module}"), name)
