"""`tinykd compare`: teacher, students, pruned and quantized models in one table, against the first.

Every model is measured here, now, with the same thread count, repeats and batch, so that the rows can be
compared: accuracy on its recipe's test set (a PyTorch model in eager mode, an .onnx file in ONNX Runtime),
parameters, size on disk, MACs, latency and throughput, then the compression (fewer parameters, smaller
file) and the speed-up against the first model given, usually the teacher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tinykd.compress.onnxrt import onnx_image_shape, onnx_meta
from tinykd.compress.predictors import TorchPredictor, evaluate, is_model_path, measure_row, open_predictor
from tinykd.compress.source import dataset_arrays, example_input, input_shape_of, onnx_label
from tinykd.errors import TinykdError
from tinykd.loading import is_checkpoint_source, load_any_recipe, recipe_from_checkpoint
from tinykd.measure import timing_input
from tinykd.models.checkpoint import read_meta, resolve_checkpoint
from tinykd.report import RATIOS, add_ratios


def _test_set(meta: dict[str, Any], where: str, recipe: str | None, overrides: list[str] | None) -> Any:
    """(inputs, labels, timing example) of the model's test set, or None when its data is unknown."""
    if recipe:
        rec = load_any_recipe(recipe, overrides)
    elif "recipe" in meta:
        rec = recipe_from_checkpoint(meta, where, overrides)
    else:
        return None
    inputs, labels = dataset_arrays(rec, "test")
    return inputs, labels, timing_input(inputs, rec.measure.sequence_length)


def compare_row(
    source: str, threads: int, repeats: int, batch: int, recipe: str | None = None,
    overrides: list[str] | None = None, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy and measurements of one run folder, checkpoint, .onnx file or (untrained) model name."""
    if not is_model_path(source):  # a model name, built untrained: no accuracy
        from tinykd.models import create_model
        from tinykd.models.registry import sized_for

        if Path(str(source)).suffix in (".yaml", ".yml", ".safetensors"):
            raise TinykdError(f"{source} does not exist")
        kwargs = sized_for(str(source), {}, in_shape[-1])
        model = create_model(str(source), num_classes=num_classes, in_channels=in_shape[0], **kwargs)
        return measure_row(TorchPredictor(model, label=str(source), threads=threads), example_input(in_shape),
                           repeats, batch)  # fmt: skip
    predictor = open_predictor(source, threads)
    if str(source).endswith(".onnx"):
        predictor.label = onnx_label(predictor.path)
    test = _test_set(predictor.meta, str(predictor.path), recipe, overrides)
    example = test[2] if test else example_input(predictor.image_shape(in_shape))
    row = measure_row(predictor, example, repeats, batch)
    if test is not None:
        row["test_accuracy"] = evaluate(predictor, test[:2])["accuracy"]
    return row


def reference_input(sources: list[str]) -> tuple[tuple[int, int, int], int] | None:
    """The input shape and classes of the first checkpoint or .onnx file given (for bare model names)."""
    for source in sources:
        if str(source).endswith(".onnx") and Path(source).is_file():
            meta = onnx_meta(source)
            shape = onnx_image_shape(Path(source), (0, 0, 0))
            if shape != (0, 0, 0):
                return shape, int(meta.get("num_classes", 10))
        elif is_checkpoint_source(source):
            path = resolve_checkpoint(source)
            meta = read_meta(path) if path.suffix == ".safetensors" else {}
            shape = input_shape_of(meta)
            if shape is not None:
                return shape, int(meta.get("num_classes", 10))
    return None


def compare_models(
    sources: list[str],
    out: str | Path | None = None,
    threads: int | None = None,
    repeats: int = 200,
    batch: int = 64,
    recipe: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per model, with ratios against the first; with `out`, writes compare.md, .json and .png there.

    A bare model name (untrained: no accuracy) takes the input of the first checkpoint or .onnx file given,
    else Fashion-MNIST's (1, 28, 28) and 10 classes.
    """
    if not sources:
        raise TinykdError("give at least one model to compare: run folders, checkpoints or .onnx files")
    if repeats < 1 or batch < 1:
        raise TinykdError("--repeats and --batch must be at least 1")
    threads = threads or torch.get_num_threads()
    shape, num_classes = reference_input(sources) or ((1, 28, 28), 10)
    rows = [compare_row(s, threads, repeats, batch, recipe, overrides, shape, num_classes) for s in sources]
    first = rows[0]
    add_ratios(rows, first, RATIOS)
    report = {"models": rows, "threads": threads, "repeats": repeats, "batch": batch, "reference": first["role"],
              "sources": [str(s) for s in sources]}  # fmt: skip
    if out is not None:
        report["files"] = write_comparison(rows, report, Path(out))
    return rows, report


def write_comparison(rows: list[dict[str, Any]], report: dict[str, Any], folder: Path) -> dict[str, str]:
    """compare.md, compare.json and compare.png (accuracy against latency) in `folder`."""
    from tinykd.report import rows_markdown

    if folder.exists() and not folder.is_dir():
        raise TinykdError(f"--out {folder} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    md, js, png = folder / "compare.md", folder / "compare.json", folder / "compare.png"
    md.write_text(f"# tinykd compare\n\n{rows_markdown(rows)}\n\n{notes(report)}\n")
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")
    files = {"markdown": str(md), "json": str(js)}
    if plot_accuracy_latency(rows, png, report["threads"]):
        files["plot"] = str(png)
    return files


def notes(report: dict[str, Any]) -> str:
    return (f"Ratios are against {report['reference']}. Latency: batch 1, median of {report['repeats']} calls after a "
            f"warm-up; throughput at batch {report['batch']}; CPU threads: {report['threads']}. PyTorch rows run "
            f"eager fp32, .onnx rows in ONNX Runtime (CPU), .pte rows in ExecuTorch and .tflite rows in LiteRT "
            f"(XNNPACK; files of batch 1, so their throughput is at batch 1). Size: the file on disk (safetensors "
            f"for PyTorch, the .onnx file with any external data).")  # fmt: skip


MARKERS = {"QAT": "^", "PTQ": "s", "pruned": "D", "fp32": "o"}  # shape: how the model was made smaller


def kind_of(row: dict[str, Any]) -> str:
    """`QAT` (quantization-aware distillation), `PTQ` (quantized after training), `pruned` or `fp32`, from the
    row's format (`onnx int4 QAT`, `onnx int8`, `pytorch fp32 (pruned)`, ...)."""
    fmt = str(row.get("format", ""))
    if "QAT" in fmt:
        return "QAT"
    if any(bits in fmt for bits in ("int8", "int4", "PTQ")):
        return "PTQ"
    return "pruned" if "pruned" in fmt else "fp32"


RUNTIMES = {"onnx": ("ONNX Runtime", "tab:blue"), "executorch": ("ExecuTorch", "tab:red"),
            "litert": ("LiteRT", "tab:green")}  # fmt: skip  (a row's format starts with its runtime; else PyTorch)


def runtime_of(row: dict[str, Any]) -> tuple[str, str]:
    """(runtime, edge colour) of a row, from its format: `onnx int8`, `executorch int8 (static)`, `pytorch fp32`."""
    fmt = str(row.get("format", ""))
    return next((v for k, v in RUNTIMES.items() if fmt.startswith(k)), ("PyTorch", "black"))


def plot_accuracy_latency(rows: list[dict[str, Any]], path: Path, threads: int | None = None) -> bool:
    """Accuracy against batch-1 latency, marker area by file size, shape by kind (circle fp32, square PTQ,
    triangle QAT, diamond pruned) and edge colour by runtime; False when no row has an accuracy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tinykd.report import human_bytes

    points = [r for r in rows if r.get("test_accuracy") is not None and r.get("latency_ms_p50")]
    if not points:
        return False
    biggest = max(r["size_bytes"] for r in points)
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, row in enumerate(points):
        x, y = row["latency_ms_p50"], 100 * row["test_accuracy"]
        runtime, edge = runtime_of(row)
        label = f"{i + 1}. {row['role']} ({row.get('format', '?')}, {runtime}, {human_bytes(row['size_bytes'])})"
        ax.scatter([x], [y], s=40 + 1600 * row["size_bytes"] / biggest, color=f"C{i % 10}", alpha=0.55,
                   edgecolors=edge, linewidths=2.0, label=label, marker=MARKERS[kind_of(row)])  # fmt: skip
        ax.annotate(str(i + 1), (x, y), ha="center", va="center", fontsize=8)
    legend = ax.legend(fontsize=8, loc="best", labelspacing=1.0)
    for handle in legend.legend_handles:
        handle.set_sizes([60])  # type: ignore[union-attr]
    latencies = [r["latency_ms_p50"] for r in points]
    if max(latencies) / min(latencies) > 20:
        ax.set_xscale("log")
    ax.margins(0.25)
    ax.set_xlabel(f"latency at batch 1, p50 (ms, CPU{f', threads: {threads}' if threads else ''})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against latency (area: size on disk; circle fp32, square PTQ, triangle QAT, diamond\n"
                 "pruned; edge: the runtime, black PyTorch, blue ONNX Runtime, red ExecuTorch, green LiteRT)",
                 fontsize=9)  # fmt: skip
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True
