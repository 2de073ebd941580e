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
from tinykd.compress.onnxrt import measure_onnx, onnx_inputs, onnx_meta
from tinykd.compress.source import example_input, input_shape_of
from tinykd.errors import TinykdError
from tinykd.loading import is_checkpoint_source, load_model
from tinykd.measure import measure_model


def torch_row(model: nn.Module, example: Any, label: str, name: str, repeats: int, batch: int,
              threads: int, fmt: str = "pytorch fp32") -> dict[str, Any]:  # fmt: skip
    """One row of figures for a PyTorch model, eager mode."""
    stats = measure_model(model, example, repeats, batch, threads).as_dict()
    return {"role": label, "model": name, "format": fmt, **stats, "flops": 2 * int(stats["macs"])}


def onnx_row(path: Path, example: Any, label: str, name: str, repeats: int, batch: int, threads: int,
             fmt: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One row of figures for an .onnx file in ONNX Runtime (CPU)."""
    numpy = {k: v.numpy() for k, v in example.items()} if isinstance(example, dict) else example.numpy()
    stats = measure_onnx(path, numpy, repeats, batch, threads)
    row = {"role": label, "model": name, "format": fmt or onnx_meta(path).get("format", "onnx"), **stats}
    if row.get("macs") is not None:
        row["flops"] = 2 * int(row["macs"])
    return row


def onnx_image_shape(path: Path, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) of an image model's one input when the file fixes them, else `fallback` (text models too)."""
    inputs = onnx_inputs(path)
    if len(inputs) != 1:
        return fallback
    dims = next(iter(inputs.values()))
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return int(dims[1]), int(dims[2]), int(dims[3])
    return fallback


TEXT_LENGTHS = (16, 64, 128)  # sequence lengths a text model is timed at


def text_example(length: int, vocab_size: int, names: tuple[str, ...] = ("input_ids", "attention_mask")) -> dict:
    """One sequence of `length` seeded token ids (all attended): latency does not depend on which tokens."""
    ids = torch.randint(5, max(6, vocab_size), (1, length), generator=torch.Generator().manual_seed(0))
    parts = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {name: parts[name] for name in names}


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
    lengths: tuple[int, ...] = TEXT_LENGTHS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Profile a registered model name, a checkpoint, a run folder or an .onnx file; one row per runtime (and,
    for a text model, per sequence length in `lengths`).

    A model name is built untrained for `num_classes` classes of `in_channels` x `image_size`^2 images
    (the input of a checkpoint comes from its metadata).
    """
    if repeats < 1 or batch < 1:
        raise TinykdError("--repeats and --batch must be at least 1")
    threads = threads or torch.get_num_threads()
    fallback = (in_channels, image_size, image_size)
    rows: list[dict[str, Any]] = []
    shape: Any = fallback
    if str(source).endswith(".onnx"):
        path = Path(source)
        meta = onnx_meta(path)
        names = tuple(onnx_inputs(path))
        if "input_ids" in names:  # a text model
            shape = ["sequence", *lengths]
            for length in lengths:
                row = onnx_row(path, text_example(length, 100, names), path.name, meta.get("model", "-"), repeats,
                               batch, threads)  # fmt: skip
                rows.append({**row, "sequence_length": length})
        else:
            shape = onnx_image_shape(path, fallback)
            rows.append(onnx_row(path, example_input(shape), path.name, meta.get("model", "-"), repeats, batch,
                                 threads))  # fmt: skip
    else:
        if is_checkpoint_source(source):
            loaded = load_model(source)
            model, name, label = loaded.model, loaded.name, loaded.label
            shape = input_shape_of(loaded.meta) or fallback
            meta = loaded.meta
        else:
            from tinykd.models import create_model
            from tinykd.models.registry import sized_for

            if Path(str(source)).suffix in (".yaml", ".yml", ".json"):
                raise TinykdError(f"{source}: tinykd profile takes a model name, a checkpoint, a run folder or an "
                                  ".onnx file, not a recipe")  # fmt: skip
            name = label = str(source)
            kwargs = sized_for(name, {}, image_size)
            model = create_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs).eval()
            meta = {"model": name}
        config = getattr(model, "config", None)
        vocab = getattr(config, "vocab_size", None)
        longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or \
            max(lengths)  # fmt: skip
        examples = [(f" (seq {n})", n, text_example(n, vocab)) for n in lengths if n <= longest] if vocab else \
            [("", None, example_input(shape))]  # fmt: skip
        if not examples:
            raise TinykdError(f"{source} takes at most {longest} tokens; no sequence length to time in {lengths}")
        if vocab:
            shape = ["sequence", *(n for _, n, _ in examples)]
        fmt = "pytorch fp32 (pruned)" if meta.get("pruned") else "pytorch fp32"
        for suffix, length, example in examples:
            rows.append({**torch_row(model, example, label + suffix, name, repeats, batch, threads, fmt),
                         **({"sequence_length": length} if length else {})})  # fmt: skip
        if onnx:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                exported = export_onnx(model, examples[0][2], path, exporter, meta={k: v for k, v in meta.items()
                                                                                   if k != "recipe"})  # fmt: skip
                for (suffix, length, example), eager in zip(examples, list(rows), strict=True):
                    row = onnx_row(path, example, label + suffix, name, repeats, batch, threads, "onnx fp32 (ort)")
                    row.update(exporter=exported["exporter"], macs=eager["macs"], flops=eager["flops"])  # this length's
                    rows.append({**row, **({"sequence_length": length} if length else {})})
    report = {"source": str(source), "input_shape": [1, *shape], "threads": threads, "repeats": repeats,
              "batch": batch, "rows": rows}  # fmt: skip
    return rows, report


def describe_profile(report: dict[str, Any]) -> str:
    """The details the table leaves out: p90 latency, FLOPs, threads and repeats."""
    from tinykd.report import human_count

    shape = report["input_shape"]
    what = (f"sequence lengths {', '.join(map(str, shape[2:]))}" if "sequence" in shape else f"input {tuple(shape)}")
    lines = [f"{what}; threads: {report['threads']}; latency: {report['repeats']} timed calls at batch 1 after a "
             f"warm-up; throughput at batch {report['batch']}"]  # fmt: skip
    for row in report["rows"]:
        flops = f", {human_count(row['flops'])} FLOPs" if row.get("flops") is not None else ""
        lines.append(f"{row['format']}: latency p50 {row['latency_ms_p50']:.3f} ms, p90 {row['latency_ms_p90']:.3f} "
                     f"ms{flops}")  # fmt: skip
    return "\n".join(lines)
