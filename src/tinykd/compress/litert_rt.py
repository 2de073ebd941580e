"""LiteRT (formerly TensorFlow Lite): a `.tflite` flatbuffer, run by LiteRT's interpreter (XNNPACK on CPUs).

Export: `litert_torch.convert` at the file's fixed shapes (64-bit integer inputs become int32, LiteRT's own). int8
is LiteRT's own post-conversion quantizer (`ai_edge_quantizer`), the tool Google ships for .tflite files:
`dynamic_wi8_afp32` (int8 weights, activations quantized per call, embedding tables included) for text models;
static int8 (per-channel weights and activations, calibrated on training images) for convolutional models goes
through torchao's PT2E flow with litert_torch's quantizer instead, which kept 0.3 points where the
`static_wi8_ai8` recipe lost 4.6 on the same student. A static file takes and returns int8 (its card gives the
scale and zero point); tinykd's predictor quantizes the input and dequantizes the logits with them.

LiteRT's converter pins `typing-extensions<4.13` (through xdsl), older than what pydantic in tinykd's main
environment needs: `pip install 'tinykd[litert]'` resolves both in a user's environment, and tinykd's own tests
run it in `.venv-litert` (see the Makefile).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.compress.fixed_shape import FixedShapePredictor, quiet_native
from tinykd.compress.predictors import register
from tinykd.compress.pt2e_export import quantized_module
from tinykd.errors import TinykdError

NAME = "litert"
SIGNATURE = "serving_default"  # the one signature litert_torch.convert writes


def check_installed() -> None:
    """A missing LiteRT is one line naming the extra."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ModuleNotFoundError as exc:
        raise TinykdError(f"--format litert needs LiteRT's converter, quantizer and interpreter (missing: {exc.name}):"
                          " pip install 'tinykd[litert]'") from None  # fmt: skip


def export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], quant: str | None,
           calibration: list[tuple[torch.Tensor, ...]]) -> tuple[bytes, list[str]]:  # fmt: skip
    """The .tflite flatbuffer of `module` at the example's shapes (int8 through ai_edge_quantizer); and each
    input's dtype in the file."""
    if quant == "trained":
        raise TinykdError("a quantization-aware run's own int8 exports to ExecuTorch (--format executorch) and ONNX "
                          "(the run's model.qat.onnx); LiteRT's converter does not take torchao's converted graph: "
                          "use --precision fp32 with --format litert")  # fmt: skip
    import litert_torch

    from tinykd.compress.onnxrt import _first_line

    with tempfile.TemporaryDirectory(prefix="tinykd-litert-") as tmp:
        path = Path(tmp) / "model.tflite"
        try:
            with quiet_native():
                if quant == "static":
                    _static(module, example, calibration).export(str(path))
                    data = path.read_bytes()
                else:
                    litert_torch.convert(module.eval(), example).export(str(path))
                    data = path.read_bytes()
                    if quant:
                        data = _dynamic(data)
        except TinykdError:
            raise
        except Exception as exc:  # the converter raises many types for what it cannot take
            raise TinykdError(f"LiteRT cannot convert this model{' to int8' if quant else ''}: {_first_line(exc)}"
                              ) from None  # fmt: skip
    dtypes = ["int32" if t.dtype in (torch.int64, torch.int32) else str(t.dtype).replace("torch.", "")
              for t in example]  # fmt: skip
    return data, dtypes


def _static(module: torch.nn.Module, example: tuple[torch.Tensor, ...],
            calibration: list[tuple[torch.Tensor, ...]]) -> Any:  # fmt: skip
    """Static int8 through PT2E with litert_torch's quantizer (symmetric, per-channel weights), converted."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
    converted = quantized_module(module, example, "static", calibration, quantizer, fold=False)
    return litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def _dynamic(data: bytes) -> bytes:
    """Dynamic int8 of a converted float file by ai_edge_quantizer's `dynamic_wi8_afp32` recipe."""
    from ai_edge_quantizer import quantizer, recipe

    engine = quantizer.Quantizer(bytearray(data))
    engine.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    quantized = engine.quantize(None, enable_progress_report=False).quantized_model
    if quantized is None:
        raise TinykdError("LiteRT's quantizer returned no model")
    return bytes(quantized)


@register(".tflite")
class LiteRtPredictor(FixedShapePredictor):
    """A .tflite file in LiteRT's interpreter (its XNNPACK delegate) with `threads` threads."""

    runtime = NAME

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self._init(path, threads)
        check_installed()
        if not self.path.is_file():
            raise TinykdError(f"{self.path} does not exist")
        self._threads_built: int | None = None
        self._make(self.threads)
        details = self.interpreter.get_input_details()
        order = self.interpreter.get_signature_list()[SIGNATURE]["inputs"]  # args_0, args_1, ... in call order
        by_name = {d["name"]: d for d in details}
        self.inputs = [next(d for n, d in by_name.items() if n.endswith(arg)) for arg in order]
        self.arg_names = list(order)
        output = self.interpreter.get_output_details()[0]
        self.output_index, self.output_quantization = output["index"], output.get("quantization", (0.0, 0))
        self.fixed_batch = int(self.inputs[0]["shape"][0]) if len(self.inputs[0]["shape"]) else 1
        self.names = [i["name"] for i in self.card.get("inputs", [])] or self.arg_names
        if len(self.inputs) > 1 or self.card.get("sequence_length"):
            self.length = int(self.card.get("sequence_length") or self.inputs[0]["shape"][1])

    def _make(self, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from tinykd.compress.onnxrt import _first_line

        captured = None
        try:
            with quiet_native() as captured:
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError or RuntimeError for a damaged file
            reason = _first_line(exc) or (captured.last_line() if captured else "")
            raise TinykdError(f"LiteRT cannot load {self.path}: {reason} (is it a .tflite model?)") from None
        self._threads_built = threads

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> LiteRtPredictor:
        return cls(path, threads)

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        """Each input in the file's dtype; a float input that the file takes as int8 is quantized with the file's
        own scale and zero point (a fully int8 model's first step on the phone)."""
        arrays = [inputs[n] for n in self.names] if isinstance(inputs, dict) else [inputs]
        return {arg: _to_file(np.asarray(a), d) for arg, a, d in zip(self.arg_names, arrays, self.inputs, strict=True)}

    def _invoke(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One call: tensors set, the interpreter invoked, the logits read (what the signature runner does, without
        its per-call bookkeeping, a tenth of a millisecond at this size)."""
        for arg, detail in zip(self.arg_names, self.inputs, strict=True):
            self.interpreter.set_tensor(detail["index"], feeds[arg])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)

    def _run(self, inputs: Any) -> np.ndarray:
        out = self._invoke(self._feeds(inputs))
        if out.dtype in (np.int8, np.uint8) and self.output_quantization[0]:  # int8 logits, dequantized
            scale, zero = self.output_quantization
            return (out.astype(np.float32) - zero) * scale
        return out

    def call(self, inputs: Any) -> Any:
        from tinykd.compress.fixed_shape import fixed_inputs

        feeds = self._feeds(fixed_inputs(inputs, self.length))
        return lambda: self._invoke(feeds)

    def _set_threads(self, threads: int) -> None:
        if threads != self._threads_built:  # the interpreter's threads are fixed when it is made
            self._make(threads)

    def file_io(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Inputs and outputs as the file declares them (tensor name, shape, dtype, int8 scale and zero point)."""

        def info(detail: dict[str, Any]) -> dict[str, Any]:
            row = {"runtime_name": detail["name"], "shape": [int(d) for d in detail["shape"]],
                   "dtype": np.dtype(detail["dtype"]).name}  # fmt: skip
            scale, zero = detail.get("quantization", (0.0, 0))
            if scale:
                row["quantization"] = {"scale": float(scale), "zero_point": int(zero),
                                       "real_value": "scale * (q - zero_point)"}  # fmt: skip
            return row

        return [info(d) for d in self.inputs], [info(d) for d in self.interpreter.get_output_details()]

    def image_shape(self, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        shape = list(self.inputs[0]["shape"]) if len(self.inputs) == 1 else []
        return tuple(int(d) for d in shape[1:]) if len(shape) == 4 else fallback  # type: ignore[return-value]


def _to_file(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """`values` in the dtype of the file's input `detail`, quantized when the file takes int8 for floats."""
    dtype = detail["dtype"]
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and np.issubdtype(values.dtype, np.floating) and scale:
        info = np.iinfo(dtype)
        values = np.clip(np.round(values / scale) + zero, info.min, info.max)
    return np.ascontiguousarray(values, dtype=dtype)


PREDICTOR = LiteRtPredictor
