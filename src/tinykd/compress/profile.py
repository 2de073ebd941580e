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

from tinykd.compress.export import export_onnx
from tinykd.compress.fixed_shape import FixedShapePredictor
from tinykd.compress.onnxrt import onnx_inputs
from tinykd.compress.predictors import (
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    is_model_path,
    measure_row,
    open_predictor,
)
from tinykd.compress.source import example_input
from tinykd.data.inputs import is_token_inputs
from tinykd.errors import TinykdError
from tinykd.measure import timing_input

TEXT_LENGTHS = (16, 64, 128)  # sequence lengths a text model is timed at
PHONE_SUFFIXES = (".pte", ".tflite")  # timed at 1 and 2 threads unless --threads says otherwise


def text_example(length: int, vocab_size: int, names: tuple[str, ...] = ("input_ids", "attention_mask")) -> dict:
    """One sequence of `length` seeded token ids (all attended), with the inputs in `names`: a text model's timing
    input when there is no data, since latency does not depend on which tokens."""
    ids = torch.randint(5, max(6, vocab_size), (1, length), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    example = timing_input({name: batch[name] for name in names}, length)
    return {name: example[name] for name in names}


def _untrained(name: str, num_classes: int, in_channels: int, image_size: int) -> TorchPredictor:
    """A registered model name, built untrained for `num_classes` classes of `in_channels` x `image_size`^2."""
    from tinykd.models import create_model
    from tinykd.models.registry import sized_for

    if Path(name).suffix in (".yaml", ".yml", ".json"):
        raise TinykdError(f"{name}: tinykd profile takes a model name, a checkpoint, a run folder or an .onnx file, "
                          "not a recipe")  # fmt: skip
    model = create_model(name, num_classes=num_classes, in_channels=in_channels,
                         **sized_for(name, {}, image_size))  # fmt: skip
    return TorchPredictor(model, {"model": name}, name)


def _examples(predictor: Predictor, source: str | Path, shape: tuple[int, int, int],
              lengths: tuple[int, ...]) -> list[tuple[str, int | None, Any]]:  # fmt: skip
    """(label suffix, sequence length, input) to time: one image, or one text per length the model takes (an
    .onnx file's rows are told apart by their sequence_length alone)."""
    suffix = "" if isinstance(predictor, OnnxPredictor | FixedShapePredictor) else " (seq {})"
    if isinstance(predictor, FixedShapePredictor):  # a phone file: its one fixed shape
        if predictor.length is None:
            return [("", None, example_input(shape))]
        names = tuple(predictor.names)
        return [("", predictor.length, text_example(predictor.length, 100, names))]
    if isinstance(predictor, OnnxPredictor):
        names = tuple(onnx_inputs(predictor.path))
        vocab, longest = (100, max(lengths)) if is_token_inputs(names) else (None, None)
    else:
        config = getattr(predictor.model, "config", None)
        vocab, names = getattr(config, "vocab_size", None), ("input_ids", "attention_mask")
        longest = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or \
            max(lengths)  # fmt: skip
    if not vocab:
        return [("", None, example_input(shape))]
    examples = [(suffix.format(n), n, text_example(n, vocab, names)) for n in lengths if n <= longest]
    if not examples:
        raise TinykdError(f"{source} takes at most {longest} tokens; no sequence length to time in {lengths}")
    return examples


def _onnx_rows(predictor: TorchPredictor, examples: list[tuple[str, int | None, Any]], eager: list[dict[str, Any]],
               exporter: str, repeats: int, batch: int) -> list[dict[str, Any]]:  # fmt: skip
    """The PyTorch model exported on the fly and timed in ONNX Runtime, one row per example."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        exported = export_onnx(predictor.model, examples[0][2], path, exporter,
                               meta={k: v for k, v in predictor.meta.items() if k != "recipe"})  # fmt: skip
        for (suffix, length, example), torch_row in zip(examples, eager, strict=True):
            onnx = OnnxPredictor(path, predictor.threads, predictor.label + suffix, "onnx fp32 (ort)", predictor.name)
            row = measure_row(onnx, example, repeats, batch)
            row.update(exporter=exported["exporter"], macs=torch_row["macs"], flops=torch_row["flops"])  # this length's
            rows.append({**row, **({"sequence_length": length} if length else {})})
    return rows


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
    phone = str(source).lower().endswith(PHONE_SUFFIXES)
    counts = [threads] if threads else ([1, 2] if phone else [torch.get_num_threads()])  # phones are thread-poor
    predictor = open_predictor(source, counts[0]) if is_model_path(source) else \
        _untrained(str(source), num_classes, in_channels, image_size)  # fmt: skip
    shape = predictor.image_shape((in_channels, image_size, image_size))
    examples = _examples(predictor, source, shape, lengths)
    rows = []
    for count in counts:
        predictor.threads = count
        tag = f", {count} thread{'s' if count > 1 else ''}" if len(counts) > 1 else ""
        rows += [{**measure_row(predictor, example, repeats, batch), "role": predictor.label + suffix + tag,
                  **({"sequence_length": length} if length else {})}
                 for suffix, length, example in examples]  # fmt: skip
    threads = counts[-1]
    if onnx and isinstance(predictor, TorchPredictor):
        rows += _onnx_rows(predictor, examples, list(rows), exporter, repeats, batch)
    sequence = ["sequence", *(n for _, n, _ in examples)] if examples[0][1] else None
    report = {"source": str(source), "input_shape": [1, *(sequence or shape)], "threads": counts if len(counts) > 1
              else threads, "repeats": repeats,
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
