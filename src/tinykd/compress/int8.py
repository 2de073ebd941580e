"""ONNX Runtime's int8 post-training quantization of an .onnx file: static (QDQ, activation ranges calibrated on
images) and dynamic (int8 weights of MatMul/Gemm, activations quantized on the fly). `tinykd quantize` chooses
between them and measures the result (`compress.quantize`).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tinykd.compress.onnxrt import check_images_fit, onnx_input, onnx_meta, read_onnx, write_onnx_meta
from tinykd.errors import TinykdError

DYNAMIC_OPS = ("MatMul", "Gemm")
TEXT_DYNAMIC_OPS = (*DYNAMIC_OPS, "Gather")  # a text model's token embeddings are a Gather: often most of it


@contextmanager
def _scratch_folder() -> Iterator[Path]:
    """A temporary folder, also the working directory while ORT runs: when its symbolic shape inference is
    incomplete, it saves `sym_shape_infer_temp.onnx` and a `<uuid>.data` file into the working directory."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        yield Path(tmp)


def _preprocess(fp32_path: Path, folder: Path) -> tuple[Path, str | None]:
    """ORT's recommended pre-processing (shape inference, graph optimisation); the input itself if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = folder / "preprocessed.onnx"
    try:
        quant_pre_process(str(fp32_path), str(out))
        return out, None
    except Exception as exc:  # pre-processing is an optimisation: quantize the file as it is
        return fp32_path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def quantize_static_onnx(
    fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, per_channel: bool = True
) -> dict[str, Any]:
    """Static int8 (QDQ) quantization with activation ranges from `calibration` (N, C, H, W float32 images)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32_path, out_path = Path(fp32_path).absolute(), Path(out_path).absolute()
    read_onnx(fp32_path)
    calibration = np.asarray(calibration)
    if calibration.ndim == 0 or len(calibration) == 0:
        raise TinykdError("the calibration set is empty; give at least one image (--calibration N)")
    if not np.issubdtype(calibration.dtype, np.floating):
        raise TinykdError(f"calibration images must be float (normalised like the training data), "
                          f"not {calibration.dtype}")  # fmt: skip
    check_images_fit(fp32_path, calibration, "calibration images")
    name, dims = onnx_input(fp32_path)
    step = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 64

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(calibration), step))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            if start is None:
                return None
            chunk = np.ascontiguousarray(calibration[start : start + step], dtype=np.float32)
            if len(chunk) < step and isinstance(dims[0], int) and dims[0] > 0:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], step - len(chunk), axis=0)])
            return {name: chunk}

    start = time.perf_counter()
    with _scratch_folder() as tmp:
        model_in, skipped = _preprocess(fp32_path, tmp)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(str(model_in), str(out_path), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    meta = {**onnx_meta(fp32_path), "format": "onnx int8", "quantization": "static QDQ per-channel",
            "calibration_images": len(calibration)}
    write_onnx_meta(out_path, meta)
    return {"mode": "static", "format": "QDQ", "per_channel": per_channel, "calibration_images": len(calibration),
            "preprocess_skipped": skipped, "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def quantize_dynamic_onnx(
    fp32_path: str | Path, out_path: str | Path, op_types: tuple[str, ...] = DYNAMIC_OPS
) -> dict[str, Any]:
    """Dynamic int8 quantization of the weights of `op_types` nodes (default: MatMul and Gemm only)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, out_path = Path(fp32_path).absolute(), Path(out_path).absolute()
    model = read_onnx(fp32_path)
    matched = sum(node.op_type in op_types for node in model.graph.node)
    start = time.perf_counter()
    with _scratch_folder() as tmp:
        model_in, skipped = _preprocess(fp32_path, tmp)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(model_in), str(out_path), op_types_to_quantize=list(op_types),
                         weight_type=QuantType.QInt8)  # fmt: skip
    write_onnx_meta(out_path, {**onnx_meta(fp32_path), "format": "onnx int8", "quantization": "dynamic"})
    return {"mode": "dynamic", "op_types": list(op_types), "quantized_nodes": matched,
            "preprocess_skipped": skipped, "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
