"""`tinykd profile`: what a model costs, in PyTorch eager and in ONNX Runtime, on this CPU.

Parameters, MACs (torch's FLOP counter; FLOPs = 2 x MACs), size on disk (an .onnx file's external data
included), latency at batch 1 (p50 and p90 of many timed calls after a warm-up, with a fixed thread count)
and throughput at a larger batch. A PyTorch model gets an ONNX Runtime row too, exported on the fly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinykd.compress.export import export_onnx
from tinykd.compress.onnxrt import measure_onnx, onnx_input, onnx_meta
from tinykd.compress.source import example_input, input_shape_of, is_checkpoint_source, load_checkpoint_model
from tinykd.errors import TinykdError
from tinykd.measure import measure_model


def torch_row(model: nn.Module, example: torch.Tensor, label: str, name: str, repeats: int, batch: int,
              threads: int, fmt: str = "pytorch fp32") -> dict[str, Any]:  # fmt: skip
    """One row of figures for a PyTorch model, eager mode."""
    stats = measure_model(model, example, repeats, batch, threads).as_dict()
    return {"role": label, "model": name, "format": fmt, **stats, "flops": 2 * int(stats["macs"])}


def onnx_row(path: Path, example: torch.Tensor, label: str, name: str, repeats: int, batch: int, threads: int,
             fmt: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One row of figures for an .onnx file in ONNX Runtime (CPU)."""
    stats = measure_onnx(path, example.numpy(), repeats, batch, threads)
    row = {"role": label, "model": name, "format": fmt or onnx_meta(path).get("format", "onnx"), **stats}
    if row.get("macs") is not None:
        row["flops"] = 2 * int(row["macs"])
    return row


def onnx_image_shape(path: Path, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    _, dims = onnx_input(path)
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return int(dims[1]), int(dims[2]), int(dims[3])
    return fallback


def profile_model(
    source: str | Path,
    threads: int | None = None,
    repeats: int = 200,
    batch: int = 64,
    onnx: bool = True,
    exporter: str = "auto",
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Profile a registered model name, a checkpoint, a run folder or an .onnx file; one row per runtime.

    A model name is built untrained for `num_classes` classes of `in_channels` x `image_size`^2 images
    (the input of a checkpoint comes from its metadata).
    """
    if repeats < 1 or batch < 1:
        raise TinykdError("--repeats and --batch must be at least 1")
    threads = threads or torch.get_num_threads()
    fallback = (in_channels, image_size, image_size)
    rows: list[dict[str, Any]] = []
    if str(source).endswith(".onnx"):
        path = Path(source)
        shape = onnx_image_shape(path, fallback)
        meta = onnx_meta(path)
        rows.append(onnx_row(path, example_input(shape), path.name, meta.get("model", "-"), repeats, batch, threads))
    else:
        if is_checkpoint_source(source):
            loaded = load_checkpoint_model(source)
            model, name, label = loaded.model, loaded.name, loaded.label
            shape = input_shape_of(loaded.meta) or fallback
            meta = loaded.meta
        else:
            from tinykd.models import create_model

            if Path(str(source)).suffix in (".yaml", ".yml", ".json"):
                raise TinykdError(f"{source}: tinykd profile takes a model name, a checkpoint, a run folder or an "
                                  ".onnx file, not a recipe")  # fmt: skip
            name = label = str(source)
            model = create_model(name, num_classes=num_classes, in_channels=in_channels).eval()
            shape, meta = fallback, {"model": name}
        example = example_input(shape)
        fmt = "pytorch fp32 (pruned)" if meta.get("pruned") else "pytorch fp32"
        rows.append(torch_row(model, example, label, name, repeats, batch, threads, fmt))
        if onnx:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                exported = export_onnx(model, example, path, exporter, meta={k: v for k, v in meta.items()
                                                                             if k != "recipe"})  # fmt: skip
                row = onnx_row(path, example, label, name, repeats, batch, threads, "onnx fp32 (ort)")
                row["exporter"] = exported["exporter"]
                rows.append(row)
    report = {"source": str(source), "input_shape": [1, *shape], "threads": threads, "repeats": repeats,
              "batch": batch, "rows": rows}  # fmt: skip
    return rows, report


def describe_profile(report: dict[str, Any]) -> str:
    """The details the table leaves out: p90 latency, FLOPs, threads and repeats."""
    from tinykd.report import human_count

    lines = [f"input {tuple(report['input_shape'])}; threads: {report['threads']}; latency: {report['repeats']} "
             f"timed calls at batch 1 after a warm-up; throughput at batch {report['batch']}"]  # fmt: skip
    for row in report["rows"]:
        flops = f", {human_count(row['flops'])} FLOPs" if row.get("flops") is not None else ""
        lines.append(f"{row['format']}: latency p50 {row['latency_ms_p50']:.3f} ms, p90 {row['latency_ms_p90']:.3f} "
                     f"ms{flops}")  # fmt: skip
    return "\n".join(lines)
