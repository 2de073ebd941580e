"""The quantization-aware student of a run, converted to real low-bit weights and tested as it will ship: the
extra row of a run whose recipe has a `quantize` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinykd.assemble import Assembly
from tinykd.compress.predictors import OnnxPredictor, TorchPredictor, evaluate, measure, speed
from tinykd.measure import count_macs, count_params, first_sample
from tinykd.models.checkpoint import CheckpointMeta
from tinykd.models.qat import is_pt2e
from tinykd.pipeline import plain_student


def qat_row(parts: Assembly, test_loader: Any, meta: CheckpointMeta, run_dir: Path, example: Any) -> dict[str, Any]:
    """The quantization-aware student converted to real low-bit weights, evaluated like the others.

    Where a runtime can run it, the row is a file in ONNX Runtime (`RUN/model.qat.onnx`: its test accuracy, size
    on disk and latency), with the converted PyTorch model's accuracy beside it:
    - a convolutional student (torchao's PT2E flow): ONNX QDQ, 4-bit weights packed two per byte as INT4;
    - int4 per-group linear layers of a classifier (groups of 16 or more): ONNX Runtime's `MatMulNBits`;
    - other linear layers of a classifier (int8, per channel, small groups): standard ONNX QDQ, the codes behind
      DequantizeLinear and torchao's per-token int8 activations as a blocked QuantizeLinear/DequantizeLinear;
    and its quantized embedding tables (`quantize.embeddings`) as INT4 or INT8 behind a DequantizeLinear.
    Generative students keep the torchao model itself as the row: saved as `model.qat.pt` (its state_dict:
    torchao's tensors, which safetensors cannot hold), timed in PyTorch."""
    from tinykd.models.qat import convert_qat, describe, state_bytes

    engine, recipe, data, student = parts.engine, parts.recipe, parts.data, parts.student
    spec = recipe.quantize
    assert spec is not None
    converted = convert_qat(engine.accelerator.unwrap_model(student), spec)
    role = f"student ({spec.weights} QAT)"
    scores = engine.evaluate(converted.to(engine.device), test_loader, parts.task)
    pt2e = is_pt2e(converted)
    form = "pt2e" if pt2e else "pytorch" if parts.task.generative else \
        "nbits" if spec.weights == "int4" and spec.granularity != "per-channel" and spec.group_size >= 16 else "qdq"
    if form == "pytorch":
        row = {"role": role, "model": meta.model, "format": f"torchao {describe(spec)}",
               "test_accuracy": scores["accuracy"], "size_bytes": state_bytes(converted)}  # fmt: skip
        if engine.is_main:
            torch.save(converted.state_dict(), run_dir / "model.qat.pt")
            if recipe.measure.enabled:  # torchao's low-bit model as it runs in PyTorch
                figures = speed(TorchPredictor(converted, threads=recipe.measure.threads), example,
                                recipe.measure.latency_repeats, recipe.measure.throughput_batch)  # fmt: skip
                row.update({k: v for k, v in figures.items() if k != "threads"})
        return row
    fmt = {"pt2e": f"onnx {spec.weights} QAT", "nbits": "onnx int4 QAT (MatMulNBits)",
           "qdq": f"onnx {spec.weights} QAT (QDQ)"}[form]  # fmt: skip
    row = {"role": role, "model": meta.model, "format": fmt, "test_accuracy_pytorch": scores["accuracy"]}
    if not engine.is_main:
        return row
    from tinykd.compress.onnxrt import onnx_size

    path = run_dir / "model.qat.onnx"
    converted = converted.cpu()
    one = first_sample(example)
    if pt2e:
        from tinykd.compress.export import export_qdq_onnx

        plain = plain_student(recipe, data, engine.accelerator.unwrap_model(student))
        sizes = {"params": count_params(plain), "macs": count_macs(plain, one)}
        # the recipe is in the file's metadata: `tinykd compare` finds its test set
        written = export_qdq_onnx(converted, example, path, spec.weights, meta.as_dict() | sizes)
    else:
        from tinykd.compress.nbits import export_linear_qdq, export_matmul_nbits

        export = export_matmul_nbits if form == "nbits" else export_linear_qdq
        written = export(converted, example, path, meta.as_dict(), fmt=fmt)
        row["matmul_nbits" if form == "nbits" else "qdq_layers"] = \
            f"{written['replaced']} of {written['linear_layers']} linear layers"  # fmt: skip
        if written["embedding_tables"]:
            tables = f"{written['quantized_tables']} of {written['embedding_tables']} embedding tables"
            row[f"{spec.weights}_tables"] = tables
    row["weight_bytes"] = written["weight_bytes"]  # the file's tensors: codes, scales, zero points, biases
    runtime = OnnxPredictor(path, recipe.measure.threads)
    host_batches = engine.loader(data.test, recipe.data.eval_batch_size, False)  # all of it, on the host
    row["test_accuracy"] = evaluate(runtime, host_batches, parts.task)["accuracy"]
    if recipe.measure.enabled:
        figures = measure(runtime, one, recipe.measure.latency_repeats, recipe.measure.throughput_batch)
        row.update({k: v for k, v in figures.items() if k != "threads"})
    else:
        row["size_bytes"] = onnx_size(path)
    return row
