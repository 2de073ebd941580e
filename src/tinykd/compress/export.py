"""`tinykd export`: a portable file (ONNX, or a torch.export program), verified before it is declared done.

The ONNX file is made by torch's dynamo exporter where it works and by the legacy TorchScript exporter
otherwise, with a dynamic batch dimension, all weights inline (one file to copy) and tinykd's metadata. Then
ONNX Runtime runs it on real test images beside PyTorch: a difference above the tolerance is an error, and
the file is removed, because a silently wrong export is worse than none.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.compress.onnxrt import INLINE_LIMIT, _first_line, onnx_size, read_onnx, strip_debug_info
from tinykd.compress.predictors import OnnxPredictor, Pt2Predictor, TorchPredictor, metrics_of, predict_all
from tinykd.compress.source import build_bundle, check_writable, dataset_arrays, default_output, example_input
from tinykd.data.inputs import is_token_inputs
from tinykd.errors import TinykdError
from tinykd.loading import load_model, recipe_from_checkpoint
from tinykd.measure import count_macs, count_params, first_sample, repeat_sample
from tinykd.models.checkpoint import run_folder_of
from tinykd.tasks import is_generative

EXPORTERS = ("auto", "dynamo", "legacy")
DEFAULT_TOLERANCE = 1e-3  # max |logit difference| allowed between ONNX Runtime (or torch.export) and eager PyTorch


def _probe(example: Any) -> Any:
    """Two copies of one input: batch 2, so that exporters keep the batch dimension symbolic (not 0/1)."""
    return repeat_sample(first_sample(example), 2)


class NamedInputs(nn.Module):
    """A text model seen by the exporters as `forward(input_ids, attention_mask, ...) -> logits`: positional
    inputs in the order of `names`, one tensor out (a Hugging Face model takes keywords and returns an object)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        from tinykd.models.outputs import call_model

        return call_model(self.model, dict(zip(self.names, inputs, strict=True)))


def _exportable(model: nn.Module, probe: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[dict]]:
    """(module, positional inputs, input names, dynamic dims per input) for either kind of model.

    Text inputs get a dynamic batch and sequence length; images a dynamic batch."""
    if is_token_inputs(probe):
        names = list(probe)
        return NamedInputs(model, names).eval(), tuple(probe.values()), names, [{0: "batch", 1: "sequence"}
                                                                                 for _ in names]  # fmt: skip
    return model, (probe,), ["input"], [{0: "batch"}]


def _max_length(model: nn.Module) -> int | None:
    """The longest sequence a text model's position embeddings allow (torch.export must be told the bound)."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def export_onnx(
    model: nn.Module,
    example: Any,
    path: str | Path,
    exporter: str = "auto",
    opset: int | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `model` as one self-contained .onnx file with a dynamic batch dimension; returns what was done.

    `exporter`: `dynamo` (torch.export based), `legacy` (TorchScript, deprecated but fast and robust), or
    `auto`: dynamo, falling back to legacy with the reason recorded.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise TinykdError(f"--exporter must be one of {', '.join(EXPORTERS)}, not '{exporter}'")
    path = Path(path)
    model = model.eval().cpu()
    probe = _probe(example)
    start = time.perf_counter()
    used, fallback = exporter, None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        if exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(model, probe, raw, opset)
                used = "dynamo"
            except Exception as exc:  # the dynamo exporter raises many types for what it cannot capture
                if exporter == "dynamo":
                    raise TinykdError(f"the dynamo ONNX exporter failed: {_first_line(exc)}; "
                                      "try --exporter legacy") from None  # fmt: skip
                used, fallback = "legacy", _first_line(exc)
        if used == "legacy":
            try:
                _export_legacy(model, probe, raw, opset)
            except Exception as exc:  # reported as one line
                raise TinykdError(f"the model cannot be exported to ONNX: {_first_line(exc)}") from None
        proto = onnx.load(str(raw))  # with its external data, if the exporter wrote some
        strip_debug_info(proto)
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        # MACs of a text model depend on the sequence length: they are measured per length (tinykd profile)
        macs = None if is_token_inputs(example) else count_macs(model, example)
        info = {**(meta or {}), "format": "onnx fp32", "params": count_params(model), "macs": macs,
                "exporter": used, "opset": opset_used}  # fmt: skip
        proto.metadata_props.add(key="tinykd", value=_json(info))
        path.parent.mkdir(parents=True, exist_ok=True)
        external = proto.ByteSize() > INLINE_LIMIT
        onnx.save_model(proto, str(path), save_as_external_data=external,
                        location=path.name + ".data" if external else None)  # fmt: skip
    onnx.checker.check_model(str(path))
    return {"format": "onnx", "path": str(path), "exporter": used, "opset": opset_used,
            "fallback_reason": fallback, "seconds": round(time.perf_counter() - start, 2),
            "size_bytes": onnx_size(path), "params": info["params"], "macs": info["macs"]}  # fmt: skip


def export_qdq_onnx(converted: nn.Module, example: torch.Tensor, path: str | Path, weights: str,
                    meta: dict[str, Any] | None = None, kind: str = "QAT") -> dict[str, Any]:  # fmt: skip
    """Write a student converted by torchao's PT2E flow (`models/qat.py`) as one ONNX QDQ file: its
    quantize/dequantize ops become QuantizeLinear/DequantizeLinear, weights stored as int8 or, for 4-bit weights,
    packed as ONNX INT4 (two per byte, opset 21), so the file on disk is the size of the low-bit model. `meta`
    should carry the fp32 model's `params` and `macs`: the converted graph holds its weights as constants."""
    import onnx

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            _export_dynamo(converted.eval().cpu(), _probe(example), raw, None)
        except Exception as exc:  # the dynamo exporter raises many types
            raise TinykdError(f"the quantized student cannot be exported to ONNX: {_first_line(exc)}") from None
        proto = onnx.load(str(raw))
    strip_debug_info(proto)
    del proto.graph.value_info[:]  # intermediate shapes: runtimes infer them, and at this size they are a quarter
    packed = pack_int4_weights(proto) if weights == "int4" else 0
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    info = {**(meta or {}), "format": f"onnx {weights} {kind}", "int4_tensors": packed, "opset": opset}
    proto.metadata_props.add(key="tinykd", value=_json(info))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp_path))
    onnx.checker.check_model(str(tmp_path))
    tmp_path.replace(path)
    return {"path": str(path), "size_bytes": onnx_size(path), "opset": opset, "int4_tensors": packed,
            "weight_bytes": sum(t.ByteSize() for t in proto.graph.initializer)}  # fmt: skip


def _pack_nibbles(values: np.ndarray) -> bytes:
    """int8 values in [-8, 7] as ONNX INT4 raw data: two per byte, the first in the low nibble."""
    flat = values.astype(np.int8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    return ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8).tobytes()


def pack_int4_weights(proto: Any) -> int:
    """Store every int8 weight of a DequantizeLinear whose values fit [-8, 7] (and its zero point) as INT4, and
    raise the opset to 21, the first whose DequantizeLinear takes INT4; the number of tensors packed.

    The exporter writes the 4-bit QAT weights as int8 (torch has no int4 dtype for them): packing halves them
    again without changing a value, and ONNX Runtime dequantizes INT4 per channel."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    packed = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        weight = initializers.get(node.input[0])
        zero = initializers.get(node.input[2]) if len(node.input) > 2 else None
        zero_types = (TensorProto.INT8, TensorProto.INT4)  # INT4: a zero point shared with a packed weight
        if weight is None or weight.data_type != TensorProto.INT8 or (zero is not None
                                                                      and zero.data_type not in zero_types):
            continue  # fmt: skip
        values = numpy_helper.to_array(weight)
        if values.size == 0 or values.min() < -8 or values.max() > 7:
            continue
        weight.CopyFrom(helper.make_tensor(weight.name, TensorProto.INT4, values.shape, _pack_nibbles(values), True))
        if zero is not None and zero.data_type == TensorProto.INT8:
            z = numpy_helper.to_array(zero)
            zero.CopyFrom(helper.make_tensor(zero.name, TensorProto.INT4, z.shape, _pack_nibbles(z), True))
        packed += 1
    if packed:
        raise_opset(proto, 21)
    return packed


def raise_opset(proto: Any, version: int) -> None:
    """Raise the model's default-domain opset to at least `version` (21: DequantizeLinear takes INT4 and blocks)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, version)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _export_dynamo(model: nn.Module, probe: Any, path: Path, opset: int | None) -> None:
    module, inputs, names, dims = _exportable(model, probe)
    # one Dim object per axis name: every text input shares one batch size and one sequence length
    bounds = {"sequence": {"max": _max_length(model)} if _max_length(model) else {}}
    named = {name: torch.export.Dim(name, **bounds.get(name, {})) for d in dims for name in d.values()}
    shapes: Any = tuple({axis: named[name] for axis, name in d.items()} for d in dims)
    if isinstance(module, NamedInputs):
        shapes = (shapes,)  # forward(*inputs): one entry, for the variadic argument
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on its own internals; failures still raise
        torch.onnx.export(module, inputs, str(path), dynamo=True, input_names=names, output_names=["logits"],
                          dynamic_shapes=shapes, opset_version=opset, verbose=False)  # fmt: skip


def _export_legacy(model: nn.Module, probe: Any, path: Path, opset: int | None) -> None:
    module, inputs, names, dims = _exportable(model, probe)
    axes = {name: d for name, d in zip(names, dims, strict=True)} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated: we know, it is the fall-back
        torch.onnx.export(module, inputs, str(path), dynamo=False, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset)  # fmt: skip


def compare_outputs(
    reference: Any, outputs: Any, labels: np.ndarray, tolerance: float, what: str, task: Any = None
) -> dict[str, Any]:
    """Max |difference|, top-1 agreement and both accuracies (`task`'s; classification by default); an error when
    the difference exceeds `tolerance`."""
    from tinykd.tasks import get_task

    reference, outputs = np.asarray(reference), np.asarray(outputs)
    task = task or get_task("classification")
    diff = float(np.abs(reference - outputs).max()) if reference.size else 0.0
    agree = float((reference.argmax(1) == outputs.argmax(1)).mean())
    report = {"images": len(reference), "max_abs_diff": diff, "top1_agreement": agree, "tolerance": tolerance,
              "accuracy_pytorch": metrics_of(task, reference, labels)["accuracy"],
              f"accuracy_{what}": metrics_of(task, outputs, labels)["accuracy"]}  # fmt: skip
    if not np.isfinite(diff) or diff > tolerance:
        raise TinykdError(f"verification failed: {what} and PyTorch differ by up to {diff:.3g} on {len(reference)} "
                          f"test images (tolerance {tolerance:g}; top-1 agreement {agree:.2%})")  # fmt: skip
    return report


def verify_onnx(
    model: nn.Module, path: str | Path, images: np.ndarray, labels: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE, threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the file in ONNX Runtime and the model in PyTorch on the same images; compare (raises on mismatch)."""
    outputs = predict_all(OnnxPredictor(Path(path), threads), images)
    return compare_outputs(predict_all(TorchPredictor(model), images), outputs, labels, tolerance, "onnxruntime")


def export_pt2(model: nn.Module, example: torch.Tensor, path: str | Path) -> dict[str, Any]:
    """Save a torch.export ExportedProgram (dynamic batch where the model allows it) with torch.export.save."""
    path = Path(path)
    model = model.eval().cpu()
    probe = _probe(example.cpu())
    start = time.perf_counter()
    dynamic = True
    try:
        program = torch.export.export(model, (probe,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception:  # try again with a fixed batch size
        dynamic = False
        try:
            program = torch.export.export(model, (example[:1].cpu(),))
        except Exception as exc:  # reported as one line
            raise TinykdError(f"torch.export cannot capture this model: {_first_line(exc)}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return {"format": "pt2", "path": str(path), "dynamic_batch": dynamic,
            "seconds": round(time.perf_counter() - start, 2), "size_bytes": path.stat().st_size,
            "params": count_params(model)}  # fmt: skip


def verify_pt2(
    model: nn.Module, path: str | Path, images: np.ndarray, labels: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE, dynamic: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Load the saved program back and compare it with eager PyTorch on the same images (raises on mismatch)."""
    outputs = predict_all(Pt2Predictor.open(Path(path)), images, 256 if dynamic else 1)
    return compare_outputs(predict_all(TorchPredictor(model), images), outputs, labels, tolerance, "torch.export")


def export_checkpoint(
    source: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    exporter: str = "auto",
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    verify_images: int = 1000,
    overwrite: bool = False,
    overrides: list[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export a tinykd checkpoint or run folder, then verify the file on the first `verify_images` test images."""
    if fmt not in ("onnx", "pt2"):
        raise TinykdError(f"--format must be onnx, pt2, executorch or litert, not '{fmt}'")
    if tolerance <= 0 or verify_images < 1:
        raise TinykdError("--tolerance must be > 0 and --verify-images at least 1")
    loaded = load_model(source)
    recipe = recipe_from_checkpoint(loaded.meta, loaded.path, overrides)
    if is_generative(loaded.meta.get("task")):
        if fmt != "onnx":
            raise TinykdError(f"a {loaded.meta['task']} model exports to onnx (with its KV cache), not {fmt}")
        return export_generative_checkpoint(loaded, recipe, out, overwrite, min(verify_images, 16))
    images, labels = dataset_arrays(recipe, "test", limit=verify_images)
    path = Path(out) if out else default_output(source, f".{fmt}")
    check_writable(path, overwrite)
    example = example_input((0, 0, 0), images)
    if fmt == "onnx":
        report = export_onnx(loaded.model, example, path, exporter, opset, meta=loaded.meta)
        read_onnx(path)
    else:
        report = export_pt2(loaded.model, example, path)
    try:
        verify = (verify_onnx(loaded.model, path, images, labels, tolerance) if fmt == "onnx"
                  else verify_pt2(loaded.model, path, images, labels, tolerance, report["dynamic_batch"]))  # fmt: skip
    except TinykdError as exc:
        path.unlink(missing_ok=True)
        raise TinykdError(f"{exc}; {path} was removed") from None
    report.update(model=loaded.name, checkpoint=str(loaded.path), verification=verify)
    return path, report


def export_generative_checkpoint(loaded: Any, recipe: Any, out: str | Path | None, overwrite: bool,
                                 prompt_count: int = 16,
                                 new_tokens: int = 16) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """A causal-LM or seq2seq student as ONNX with its KV cache (`compress.generative`), in a folder, verified by
    greedy decoding of the first `prompt_count` test texts in ONNX Runtime against PyTorch, token for token."""
    import shutil

    from tinykd.compress.generative import export_generative, verify_greedy
    from tinykd.compress.generative_ort import generative_size
    from tinykd.generation import base_dataset, prompts
    from tinykd.models.hf import save_hf_directory

    task = loaded.meta["task"]
    folder = Path(out) if out else run_folder_of(loaded.path) / "onnx"
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise TinykdError(f"{folder} already exists; choose another --out or pass --overwrite")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tinykd-hf-") as tmp:
        save_hf_directory(loaded.model, tmp)
        export_generative(tmp, folder, task=task)
    test = build_bundle(recipe).test
    rows, eos = prompts(test, prompt_count), base_dataset(test).tokenizer.eos_token_id
    try:
        check = verify_greedy(loaded.model, folder, rows, new_tokens, eos, raise_on_mismatch=True)
    except TinykdError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise TinykdError(f"{exc}; {folder} was removed") from None
    report = {"format": "onnx", "task": task, "exporter": "dynamo (KV cache)", "size_bytes": generative_size(folder),
              "seconds": round(time.perf_counter() - start, 2), "model": loaded.name, "checkpoint": str(loaded.path),
              "verification": {"prompts": check["prompts"], "matching_tokens": check["matching_tokens"],
                               "compared_tokens": check["compared_tokens"], "new_tokens": new_tokens}}  # fmt: skip
    return folder, report


def describe_export(path: Path, report: dict[str, Any]) -> str:
    """Two lines for the terminal: what was written, and how it was verified."""
    from tinykd.report import human_bytes

    if is_generative(report.get("task")):
        v = report["verification"]
        return (f"exported {path}/ ({report['task']}, {report['exporter']}, {human_bytes(report['size_bytes'])}) in "
                f"{report['seconds']} s\nverified on {v['prompts']} test prompts: ONNX Runtime's greedy decoding "
                f"equals PyTorch's, {v['matching_tokens']}/{v['compared_tokens']} tokens")  # fmt: skip

    how = (f"{report['exporter']} exporter, opset {report['opset']}" if report["format"] == "onnx"
           else f"torch.export, {'dynamic' if report['dynamic_batch'] else 'fixed'} batch")  # fmt: skip
    first = f"exported {path} ({how}, {human_bytes(report['size_bytes'])}) in {report['seconds']} s"
    if report.get("fallback_reason"):
        first += f"; the dynamo exporter failed ({report['fallback_reason']}), so the legacy one was used"
    v = report["verification"]
    other = next(k for k in v if k.startswith("accuracy_") and k != "accuracy_pytorch")
    second = (f"verified on {v['images']} test images: max |diff| {v['max_abs_diff']:.2e} <= {v['tolerance']:g}, "
              f"top-1 agreement {v['top1_agreement']:.2%}, accuracy {v['accuracy_pytorch']:.2%} (PyTorch) vs "
              f"{v[other]:.2%} ({other[len('accuracy_'):]})")  # fmt: skip
    return f"{first}\n{second}"
