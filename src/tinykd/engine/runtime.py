"""Turn `runtime.device` and `runtime.precision` into an Accelerator, and fail loudly when it cannot be had.

What was asked is what runs: `cuda` without a GPU is an error, never a quiet
fall-back to the CPU.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tinykd.errors import TinykdError
from tinykd.recipes.schema import RuntimeSpec

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
_current: tuple[tuple[str, str], Accelerator] | None = None


def available_devices() -> dict[str, bool]:
    """Which backends this process can use."""
    import importlib.util

    mps = getattr(torch.backends, "mps", None)
    return {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
        "xla": importlib.util.find_spec("torch_xla") is not None,
    }


def resolve_device(requested: str) -> str:
    """`auto` -> the best backend present (cuda, then mps, then cpu); a named one must be present."""
    found = available_devices()
    if requested == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if found[d])
    if not found[requested]:
        hint = {
            "cuda": "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)",
            "mps": "no Apple MPS device is available",
            "xla": "torch_xla is not installed (see docs/tpu.md)",
        }[requested]
        raise TinykdError(f"runtime.device={requested} was asked for, but {hint}; use runtime.device=auto or cpu")
    return requested


def make_accelerator(runtime: RuntimeSpec) -> Accelerator:
    """One Accelerator per process and configuration (Accelerate keeps global state, so reuse it)."""
    global _current
    device = resolve_device(runtime.device)
    if device == "xla":
        raise TinykdError("runtime.device=xla is not supported by this version of tinykd yet; use cpu or cuda")
    if runtime.precision == "fp16" and device == "cpu":
        raise TinykdError("runtime.precision=fp16 needs a GPU; on CPU use bf16 or fp32")
    key = (device, runtime.precision)
    if _current is not None and _current[0] == key:
        return _current[1]
    if _current is not None:
        AcceleratorState._reset_state()
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=_PRECISION[runtime.precision])
    _current = (key, accelerator)
    return accelerator
