"""ExecuTorch: PyTorch's on-device runtime; a `.pte` program whose operators XNNPACK runs (Android, iOS, Linux CPUs).

Export: `torch.export` at the file's fixed shapes, then `to_edge_transform_and_lower` with the XNNPACK partitioner
and `to_executorch`. int8 goes through torchao's PT2E flow with ExecuTorch's `XNNPACKQuantizer`: static (per-channel
weights, activations calibrated on training images) for convolutional models, dynamic (the linear layers' weights
int8 per channel, activations quantized per call) for text models. The program is run by ExecuTorch's own Python
runtime (`executorch.runtime`), the same C++ runtime an app links, with XNNPACK's thread pool set per timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.compress.fixed_shape import FixedShapePredictor, quiet_native
from tinykd.compress.predictors import register
from tinykd.compress.pt2e_export import quantized_module
from tinykd.errors import TinykdError

NAME = "executorch"


def check_installed() -> None:
    """A missing ExecuTorch is one line naming the extra."""
    try:
        with quiet_native():  # cpuinfo's notes on the CPU, printed when ExecuTorch's native library loads
            import executorch.exir
            import executorch.extension.pybindings.portable_lib  # noqa: F401
    except ModuleNotFoundError:
        raise TinykdError("--format executorch needs ExecuTorch: pip install 'tinykd[executorch]'") from None


def xnnpack_quantizer(quant: str) -> Any:
    """Symmetric int8, per-channel weights: every supported op (static); or, for text, the linear layers on
    XNNPACK's dynamic int8 and the embedding tables int8 per row (weight only, ExecuTorch's `embedding_byte`
    kernel), the half of a small BERT that is embeddings included."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=quant == "dynamic")
    if quant != "dynamic":
        return XNNPACKQuantizer().set_global(config)
    import executorch.kernels.quantized  # noqa: F401  (registers embedding_byte for the export)
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer.embedding_quantizer import EmbeddingQuantizer

    return ComposableQuantizer([EmbeddingQuantizer(), XNNPACKQuantizer().set_module_type(torch.nn.Linear, config)])


def export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], quant: str | None,
           calibration: list[tuple[torch.Tensor, ...]]) -> tuple[bytes, list[str]]:  # fmt: skip
    """The .pte program of `module` at the example's shapes, XNNPACK-delegated; and each input's dtype."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.quant_fusion_pass import QuantFusionPass

    from tinykd.compress.onnxrt import _first_line

    try:
        with quiet_native():
            if quant in ("static", "dynamic"):  # "trained": a QAT run's graph, converted already
                module = quantized_module(module, example, quant, calibration, xnnpack_quantizer(quant))
            if quant:  # the out variants of what stays outside XNNPACK (quantize/dequantize, int8 tables)
                import executorch.kernels.quantized  # noqa: F401
            program = torch.export.export(module, example)
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            # what XNNPACK did not take (the int8 tables' lookups) becomes ExecuTorch's own quantized kernels
            passes = [QuantFusionPass(_fix_node_meta_val=True)] if quant else []
            data = lowered.to_executorch(ExecutorchBackendConfig(passes=passes)).buffer
    except Exception as exc:  # torch.export and the lowering raise many types for what they cannot take
        raise TinykdError(f"ExecuTorch cannot export this model{' in int8' if quant else ''}: {_first_line(exc)}"
                          ) from None  # fmt: skip
    return data, [str(t.dtype).replace("torch.", "") for t in example]


_POOL = {"generation": 0}  # bumped at every reset of XNNPACK's thread pool: a method loaded before must be reloaded


def set_threads(threads: int) -> None:
    """XNNPACK's thread pool in this process (ExecuTorch has one, shared by every program). Resetting it leaves the
    methods loaded before pointing at the old pool (a crash when they run), hence the generation count."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        with quiet_native():  # "Resetting threadpool to N threads."
            portable_lib._unsafe_reset_threadpool(threads)
        _POOL["generation"] += 1


@register(".pte")
class ExecuTorchPredictor(FixedShapePredictor):
    """A .pte program in ExecuTorch's runtime, on XNNPACK with `threads` threads."""

    runtime = NAME

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self._init(path, threads)
        check_installed()
        with quiet_native():  # cpuinfo's notes on the CPU, printed when the runtime first loads
            import executorch.kernels.quantized  # noqa: F401  (the int8 embedding tables' kernel)
            from executorch.runtime import Runtime


        if not self.path.is_file():
            raise TinykdError(f"{self.path} does not exist")
        self._runtime = Runtime
        self._load(self.threads)
        meta = self.method.metadata
        self.shapes = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        self.fixed_batch = self.shapes[0][0] if self.shapes and self.shapes[0] else 1
        self.names = [i["name"] for i in self.card.get("inputs", [])] or [f"input_{i}" for i in range(len(self.shapes))]
        self.dtypes = [_numpy_dtype(meta.input_tensor_meta(i).dtype()) for i in range(meta.num_inputs())]
        if len(self.shapes) > 1 or self.card.get("sequence_length"):
            self.length = int(self.card.get("sequence_length") or self.shapes[0][1])

    def _load(self, threads: int) -> None:
        """The program and its method, loaded with XNNPACK's pool at `threads` threads."""
        from tinykd.compress.onnxrt import _first_line

        set_threads(threads)
        self.program = self.method = None  # the old method first: it holds the delegate's state
        captured = None
        try:
            with quiet_native() as captured:
                self.program = self._runtime.get().load_program(self.path)
                self.method = self.program.load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError or ValueError for a damaged program
            reason = (captured.last_line() if captured else "") or _first_line(exc)
            raise TinykdError(f"ExecuTorch cannot load {self.path}: {reason} (is it a .pte program written by "
                              "ExecuTorch's to_executorch?)") from None  # fmt: skip
        self._generation = _POOL["generation"]

    def _current(self) -> Any:
        """The method, reloaded if the thread pool was reset since it was loaded (by this or another program)."""
        if self._generation != _POOL["generation"]:
            self._load(self.threads or 1)
        return self.method

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> ExecuTorchPredictor:
        return cls(path, threads)

    def _tensors(self, inputs: Any) -> list[torch.Tensor]:
        arrays = [inputs[n] for n in self.names] if isinstance(inputs, dict) else [inputs]
        return [torch.from_numpy(np.ascontiguousarray(a, dtype=d)) for a, d in zip(arrays, self.dtypes, strict=True)]

    def _run(self, inputs: Any) -> np.ndarray:
        return self._current().execute(self._tensors(inputs))[0].numpy()

    def call(self, inputs: Any) -> Any:
        from tinykd.compress.fixed_shape import fixed_inputs

        tensors = self._tensors(fixed_inputs(inputs, self.length))
        return lambda: self.method.execute(tensors)  # timing(): loaded at the timed thread count just before

    def _set_threads(self, threads: int) -> None:
        set_threads(threads)
        self._current()

    def file_io(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Inputs and outputs as the program declares them (name in the runtime, shape, dtype)."""
        meta = self.method.metadata

        def info(tensor: Any, name: str) -> dict[str, Any]:
            return {"runtime_name": name, "shape": list(tensor.sizes()),
                    "dtype": np.dtype(_numpy_dtype(tensor.dtype())).name}  # fmt: skip

        return ([info(meta.input_tensor_meta(i), f"input {i}") for i in range(meta.num_inputs())],
                [info(meta.output_tensor_meta(i), f"output {i}") for i in range(meta.num_outputs())])  # fmt: skip

    def image_shape(self, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        shape = self.shapes[0] if len(self.shapes) == 1 else []
        return tuple(shape[1:]) if len(shape) == 4 else fallback  # type: ignore[return-value]


SCALAR_TYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
                7: np.float64, 11: np.bool_}  # c10::ScalarType codes, which ExecuTorch's metadata gives


def _numpy_dtype(dtype: Any) -> Any:
    """numpy's dtype for one of ExecuTorch's ScalarType codes."""
    if int(dtype) not in SCALAR_TYPES:
        raise TinykdError(f"an input of ScalarType {dtype}, which tinykd does not feed")
    return SCALAR_TYPES[int(dtype)]


PREDICTOR = ExecuTorchPredictor
