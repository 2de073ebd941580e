"""ONNX files and ONNX Runtime: reading, metadata, size on disk, inputs and sessions (`predictors.OnnxPredictor`
runs them).

tinykd writes its metadata (model name, recipe, parameters, MACs, format) into an exported file's
`metadata_props`, so that a later `quantize`, `profile` or `compare` of the bare .onnx file still knows its
dataset and can report accuracy on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tinykd.errors import TinykdError

META_KEY = "tinykd"
INLINE_LIMIT = 1_800_000_000  # protobuf's 2 GiB limit: larger models keep an external data file


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # no terminal colour codes in a one-line error
    return text.splitlines()[0][:300] if text else type(exc).__name__


def strip_debug_info(proto: Any) -> None:
    """Drop per-node debugging metadata (the dynamo exporter's stack traces, local paths, FX nodes): a shipped
    file needs none of it, and it was about 10% of a small model's file."""
    for graph in [proto.graph, *(f for f in proto.functions)]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""



def read_onnx(path: str | Path, load_external_data: bool = False) -> Any:
    """The ModelProto of an .onnx file; a file that is not an ONNX model is a one-line error."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise TinykdError(f"ONNX file {p} does not exist")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data)
    except Exception as exc:  # protobuf raises several types for a file that is not a model
        raise TinykdError(f"{p} is not an ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from None  # fmt: skip
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise TinykdError(f"{p} is not an ONNX model (it has no graph with inputs, outputs and nodes)")
    return model


def onnx_meta(path: str | Path) -> dict[str, Any]:
    """tinykd's metadata in an .onnx file ({} when it was not written by tinykd)."""
    model = read_onnx(path)
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return {}
    return {}


def write_onnx_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Store `meta` as tinykd's metadata in an .onnx file whose tensors are all inline."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == META_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    onnx.save_model(model, str(path), save_as_external_data=False)


def onnx_size(path: str | Path) -> int:
    """Bytes on disk of an .onnx file plus the external data files its tensors point to."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    p = Path(path)
    model = read_onnx(p)
    files = {p.resolve()}
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            files.add((p.parent / ExternalDataInfo(tensor).location).resolve())
    return sum(f.stat().st_size for f in files if f.is_file())


def onnx_params(model: Any) -> int:
    """Elements of the float and integer weight tensors (initializers with more than one element)."""
    total = 0
    for tensor in model.graph.initializer:
        n = int(np.prod(tensor.dims)) if tensor.dims else 1
        if n > 1:
            total += n
    return total


def onnx_inputs(path: str | Path) -> dict[str, list[int | str]]:
    """The graph's inputs (initializers left out) and their dims (a str for a symbolic one, e.g. 'batch')."""
    model = read_onnx(path)
    initializers = {t.name for t in model.graph.initializer}

    def dims(value: Any) -> list[int | str]:
        shape = value.type.tensor_type.shape.dim
        return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in shape]

    return {i.name: dims(i) for i in model.graph.input if i.name not in initializers}


def onnx_input(path: str | Path) -> tuple[str, list[int | str]]:
    """The name of the (single) image input and its dims (a str for a symbolic one, e.g. 'batch')."""
    inputs = onnx_inputs(path)
    if len(inputs) != 1:
        raise TinykdError(f"{path} takes {len(inputs)} inputs ({', '.join(inputs)}); this step needs an image model "
                          "with one input")  # fmt: skip
    return next(iter(inputs.items()))


def session(path: str | Path, threads: int | None = None) -> Any:
    """A CPU InferenceSession with a fixed number of intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    read_onnx(path)  # a clear error for a file that is not a model
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise TinykdError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None


def check_images_fit(path: str | Path, images: Any, what: str = "images") -> None:
    """The images must have the model's input shape (apart from the batch dimension); text inputs must be named
    as the model's inputs."""
    if isinstance(images, Mapping):
        missing = sorted(set(onnx_inputs(path)) - set(images))
        if missing:
            raise TinykdError(f"{Path(path).name} takes inputs {', '.join(missing)} that the {what} do not have")
        return
    _, dims = onnx_input(path)
    expected = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    got = list(images.shape[1:])
    if images.ndim != len(dims) or any(e is not None and e != g for e, g in zip(expected, got, strict=False)):
        want = "(N, " + ", ".join(str(e) if e is not None else "?" for e in expected) + ")"
        raise TinykdError(f"the {what} have shape {tuple(images.shape)} but {Path(path).name} takes {want}")


ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(float16)": np.float16, "tensor(bool)": np.bool_}  # fmt: skip


def feeds(sess: Any, inputs: Any) -> dict[str, np.ndarray]:
    """What `sess.run` takes: each of the graph's inputs, of the type the graph declares; one array is the
    graph's one input, named arrays go by name."""
    given = inputs if isinstance(inputs, Mapping) else {sess.get_inputs()[0].name: inputs}
    return {i.name: np.ascontiguousarray(given[i.name], dtype=ORT_TYPES.get(i.type)) for i in sess.get_inputs()}


def onnx_image_shape(path: Path, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) of an image model's one input when the file fixes them, else `fallback` (text models too)."""
    inputs = onnx_inputs(path)
    if len(inputs) != 1:
        return fallback
    dims = next(iter(inputs.values()))
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return int(dims[1]), int(dims[2]), int(dims[3])
    return fallback
