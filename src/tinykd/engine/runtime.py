"""Turn `runtime.*` into an Accelerator, and fail loudly when the hardware asked for is not there.

What was asked is what runs: `cuda` without a GPU, or `xla` without torch_xla,
is an error, never a quiet fall-back to the CPU. Two of Accelerate's silent
paths are closed here:

- with torch_xla importable, Accelerate picks XLA even when told `cpu=True`;
  its switch `USE_TORCH_XLA` is read once, when accelerate is imported, so it
  is set here before the first import (accelerate is imported lazily);
- under torchrun, a CPU job without `cpu=True` runs every rank alone; we pass
  it, and check that the world size Accelerate sees is the one launched.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

import torch

from tinykd.errors import TinykdError
from tinykd.recipes.schema import RuntimeSpec

if TYPE_CHECKING:
    from accelerate import Accelerator

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
_current: tuple[tuple[str, str, bool], Accelerator] | None = None


def xla_installed() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def available_devices() -> dict[str, bool]:
    """Which backends this process can use."""
    mps = getattr(torch.backends, "mps", None)
    return {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(mps and mps.is_available()),
        "xla": xla_installed(),
    }


def _xla_wanted_by_environment() -> bool:
    """`auto` takes XLA only where the environment points at it (PJRT_DEVICE set, or a TPU VM's devices)."""
    return bool(os.environ.get("PJRT_DEVICE")) or os.path.exists("/dev/accel0") or bool(os.environ.get("TPU_NAME"))


def resolve_device(requested: str) -> str:
    """`auto` -> cuda, else xla (when torch_xla is installed and PJRT_DEVICE is set), else mps, else cpu."""
    found = available_devices()
    if requested == "auto":
        if found["cuda"]:
            return "cuda"
        if found["xla"] and _xla_wanted_by_environment():
            return "xla"
        return "mps" if found["mps"] else "cpu"
    if not found[requested]:
        hint = {
            "cuda": "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)",
            "mps": "no Apple MPS device is available",
            "xla": "torch_xla is not installed (see docs/tpu.md: pip install torch==2.9.0 torch_xla==2.9.0)",
        }[requested]
        raise TinykdError(f"runtime.device={requested} was asked for, but {hint}; use runtime.device=auto or cpu")
    return requested


def bf16_is_fast(device: str) -> bool:
    """Whether bf16 runs natively here: a CUDA GPU that supports it, a TPU, or a CPU with AMX or AVX512-BF16.

    Elsewhere (an AVX2 CPU) torch emulates bf16, and a bf16 model runs many times slower than in fp32.
    """
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "xla":
        return True
    if device == "cpu":
        checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported",
                                                                               None))  # fmt: skip
        return any(check() for check in checks if check is not None)
    return False


def resolve_precision(precision: str, device: str) -> str:
    """`auto` -> bf16 where it is native (`bf16_is_fast`), else fp32; any other value as given."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_fast(device) else "fp32"


def _set_accelerate_xla_switch(use_xla: bool) -> None:
    """Make Accelerate's XLA detection agree with the device we chose."""
    os.environ["USE_TORCH_XLA"] = "1" if use_xla else "0"
    if "accelerate" in sys.modules and xla_installed():
        import accelerate.utils.imports as imports

        if imports._torch_xla_available != use_xla:  # accelerate was imported before the choice was made
            imports._torch_xla_available = use_xla
            imports._tpu_available = use_xla
            imports.is_torch_xla_available.cache_clear()


def _never_skip_the_mask(*args: object, **kwargs: object) -> bool:
    return False


def _keep_transformers_masks_on_device() -> None:
    """transformers' SDPA masks ask `padding_mask.all()` on the host to skip an all-ones mask: on XLA each such
    question ends the graph and runs it (two extra executions per distillation step). Skipping the mask is only an
    optimisation, so on XLA the mask is always built; the step stays one graph."""
    if importlib.util.find_spec("transformers") is None:
        return
    from transformers import masking_utils

    for name in ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa"):
        if hasattr(masking_utils, name):
            setattr(masking_utils, name, _never_skip_the_mask)


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate launch) started, 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(runtime: RuntimeSpec) -> Accelerator:
    """One Accelerator per process and configuration (Accelerate keeps global state, so it is reused)."""
    global _current
    device = resolve_device(runtime.device)
    precision = resolve_precision(runtime.precision, device)
    if precision == "fp16" and device in ("cpu", "xla"):
        raise TinykdError(f"runtime.precision=fp16 needs a GPU; on {device} use bf16 or fp32")
    _set_determinism(runtime.deterministic)
    key = (device, precision, runtime.compile)
    if _current is not None and _current[0] == key:
        return _current[1]
    _set_accelerate_xla_switch(device == "xla")
    if device == "xla":
        _keep_transformers_masks_on_device()
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if _current is not None:
        AcceleratorState._reset_state()
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision=_PRECISION[precision],
        dataloader_config=DataLoaderConfiguration(non_blocking=device == "cuda"),
        dynamo_backend="inductor" if runtime.compile else "no",
    )
    if accelerator.num_processes != launched_world_size():
        raise TinykdError(f"{launched_world_size()} processes were launched but Accelerate joined "
                          f"{accelerator.num_processes}; launch with torchrun or accelerate launch")  # fmt: skip
    got = accelerator.device.type
    if got != device and not (device == "cuda" and got == "cuda"):
        raise TinykdError(f"runtime.device={device} was resolved, but Accelerate placed the run on {got}")
    _current = (key, accelerator)
    return accelerator


_determinism_set_here = False


def _set_determinism(deterministic: bool) -> None:
    """GPU kernels that use atomics (cuDNN's convolution backward, scatter-add) and cuDNN's autotuner make two runs of
    the same recipe differ; `runtime.deterministic` turns them off. Reset only what this function set, so that a
    user's own global setting survives the runs that did not ask."""
    global _determinism_set_here
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any GPU work
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        _determinism_set_here = True
    elif _determinism_set_here:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        _determinism_set_here = False


def end_processes(finished: bool) -> None:
    """Leave a multi-process job cleanly: wait for every rank (after a success only: a rank that failed alone
    would never arrive), then destroy the process group. A rank that exits with the group alive can abort in
    its communication threads ("terminate called without an active exception") and fail a finished job."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if finished and _current is not None:
        _current[1].wait_for_everyone()
    gc.collect()  # what the runs left (Engine.fit freed Accelerate's references) goes before the group, not at exit
    torch.distributed.destroy_process_group()


def describe_run(accelerator: Accelerator, precision: str) -> str:
    """Where a run happens, in words: `cpu, 1 process, fp32`, `cuda, 4 processes (NCCL), bf16`, `xla, fp32`."""
    n = accelerator.num_processes
    parts = [accelerator.device.type]
    if accelerator.device.type != "xla" or n > 1:
        backend = ""
        if n > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = f" ({str(torch.distributed.get_backend()).upper()})"
        parts.append(f"{n} process{'es' if n > 1 else ''}{backend}")
    return ", ".join([*parts, precision])


def xla_counts(device: torch.device) -> dict[str, int] | None:
    """Graphs compiled and executed so far in this process (torch_xla's metrics); None off XLA."""
    if device.type != "xla":
        return None
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met

    xm.wait_device_ops()  # executions are asynchronous: let the ones started finish before counting

    def samples(name: str) -> int:
        data = met.metric_data(name)
        return int(data[0]) if data else 0

    return {"compilations": samples("CompileTime"), "executions": samples("ExecuteTime")}


class GraphCounts:
    """On XLA, the graphs compiled and executed during `fit`: in all, and by the training steps alone."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.start, self.epoch_start = device, xla_counts(device), None
        self.train = {"compilations": 0, "executions": 0}

    def begin_epoch(self) -> None:
        self.epoch_start = xla_counts(self.device)

    def end_epoch(self) -> None:
        """Count the epoch's training steps (before validation runs its own graphs)."""
        if self.epoch_start is not None:
            now = xla_counts(self.device)
            for key in self.train:
                self.train[key] += now[key] - self.epoch_start[key]  # type: ignore[index]

    def totals(self, train_steps: int) -> dict[str, int] | None:
        """{compilations, executions, train_compilations, train_executions, train_steps}; None off XLA."""
        if self.start is None:
            return None
        now = xla_counts(self.device)
        totals = {k: now[k] - self.start[k] for k in now}  # type: ignore[index]
        return {**totals, **{f"train_{k}": v for k, v in self.train.items()}, "train_steps": train_steps}


def step_boundary(device: torch.device) -> None:
    """On XLA, cut the graph here: one compiled graph per step, executed once, whatever is read later."""
    if device.type == "xla":
        import torch_xla

        torch_xla.sync()


def describe_environment() -> list[tuple[str, str]]:
    """(name, value) rows for `tinykd env`: versions, devices, and what each runtime.device would use."""
    import platform

    rows = [("python", platform.python_version()), ("torch", torch.__version__)]
    for package in ("torchvision", "torch_xla", "accelerate", "timm", "onnx", "onnxruntime"):
        rows.append((package, _version(package)))
    rows.append(("cpu threads", str(torch.get_num_threads())))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                      f"bf16={'yes' if torch.cuda.is_bf16_supported() else 'no'}"))  # fmt: skip
    else:
        rows.append(("cuda", "not available (torch.cuda.is_available() is False)"))
    if xla_installed():
        rows.append(("xla", f"torch_xla installed; PJRT_DEVICE={os.environ.get('PJRT_DEVICE', '(unset)')}"))
    rows.append(("launched processes", str(launched_world_size())))
    rows.append(("bf16 native", ", ".join(f"{d}: {'yes' if bf16_is_fast(d) else 'no'}" for d in ("cpu", "cuda"))))
    for choice in ("auto", "cpu", "cuda", "mps", "xla"):
        try:
            rows.append((f"runtime.device={choice}", f"runs on {resolve_device(choice)}"))
        except TinykdError as exc:
            rows.append((f"runtime.device={choice}", f"error: {str(exc).split(';')[0]}"))
    return rows


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-")) if package != "torch_xla" else version("torch_xla")
    except PackageNotFoundError:
        return "not installed"
