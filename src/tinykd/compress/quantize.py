"""`tinykd quantize`: int8 post-training quantization, with accuracy, size and latency before and after.

Three modes:

- `static` (the default): ONNX Runtime, QDQ format, per-channel int8 weights and int8 activations whose ranges
  come from N calibration images of the training split. Good for convolutional networks.
- `dynamic`: ONNX Runtime, int8 weights of MatMul/Gemm only, activations quantized on the fly. Convolutions
  stay fp32, because ORT's dynamic ConvInteger is several times slower than fp32 on CPU.
- `torch-dynamic`: PyTorch's `quantize_dynamic` on the nn.Linear layers (for MLPs and transformers).
- `int4`: 4-bit weights, the post-training baseline of quantization-aware distillation (recipe section
  `quantize`), in the same format. Image models: per channel, symmetric [-7, 7], and uint8 activations calibrated
  on N training images, through torchao's PT2E flow, written as ONNX QDQ with the weights packed as INT4. Text
  classifiers: weight-only, per group of `group_size` inputs, linear layers and embedding tables (torchao's
  `quantize_`), written with ONNX Runtime's `MatMulNBits` and INT4 tables.

Accuracy is measured on the whole test set of the model's own recipe, before and after, with the same runtime.
"""

from __future__ import annotations

import copy
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.compress.export import export_onnx, export_qdq_onnx, verify_onnx
from tinykd.compress.generative_ort import OrtGenerator, _files, generative_size
from tinykd.compress.int8 import DYNAMIC_OPS, TEXT_DYNAMIC_OPS, quantize_dynamic_onnx, quantize_static_onnx
from tinykd.compress.onnxrt import check_images_fit
from tinykd.compress.predictors import OnnxPredictor, TorchPredictor, evaluate, measure, open_predictor, speed
from tinykd.compress.source import check_writable, dataset_arrays, default_output
from tinykd.data.inputs import from_numpy, is_token_inputs, take
from tinykd.errors import TinykdError
from tinykd.loading import load_any_recipe, load_model, recipe_from_checkpoint
from tinykd.measure import count_macs, count_params, timing_input
from tinykd.report import add_ratios
from tinykd.tasks import is_generative

__all__ = ["DYNAMIC_OPS", "quantize_dynamic_onnx", "quantize_static_onnx"]  # the int8 calls, where they were

MODES = ("static", "dynamic", "torch-dynamic", "int4")
SUFFIXES = {"static": ".int8.onnx", "dynamic": ".dynamic-int8.onnx", "torch-dynamic": ".torch-int8.pt",
            "int4": ".int4.onnx"}  # fmt: skip


def quantize_torch_dynamic(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """PyTorch dynamic int8 of the nn.Linear layers (a copy; `model` is unchanged)."""
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    if not linears:
        raise TinykdError(f"--mode torch-dynamic quantizes nn.Linear layers, and {type(model).__name__} has none; "
                          "use --mode static (ONNX Runtime)")  # fmt: skip
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval().cpu(), {nn.Linear},
                                                       dtype=torch.qint8)  # fmt: skip
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return quantized, {"mode": "torch-dynamic", "linear_layers": linears,
                       "linear_share_of_params": linear_params / max(count_params(model), 1)}  # fmt: skip


def torch_save_size(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: comparable between a float and a quantized model."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _check_options(mode: str, calibration: int, group_size: int, tables: str) -> None:
    """The options that are wrong whatever the model, each a one-line error."""
    if mode not in (*MODES, "auto"):
        raise TinykdError(f"--mode must be one of auto, {', '.join(MODES)}, not '{mode}'")
    if calibration < 1:
        raise TinykdError(f"--calibration must be at least 1 image, not {calibration}")
    if mode == "int4" and (group_size < 16 or group_size & (group_size - 1)):
        raise TinykdError(f"--group-size must be a power of 2 of at least 16 (ONNX Runtime's MatMulNBits), not "
                          f"{group_size}")  # fmt: skip
    if tables not in ("per-group", "per-row"):
        raise TinykdError(f"--tables must be per-group or per-row, not '{tables}'")


def _text_mode(mode: str, text: bool) -> str:
    """`auto` made concrete: static for images, dynamic for text; static int8 is refused for text."""
    if mode == "auto":
        mode = "dynamic" if text else "static"
    if text and mode == "static":
        raise TinykdError("static int8 (calibrated activations) is for image models; quantize a text model with "
                          "--mode dynamic (int8 weights of MatMul/Gemm, activations quantized on the fly) or "
                          "--mode int4 (4-bit weights)")  # fmt: skip
    return mode


def quantize_model(
    source: str | Path,
    mode: str = "auto",
    calibration: int = 500,
    out: str | Path | None = None,
    calibration_data: str | Path | None = None,
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    batch: int | None = None,
    exporter: str = "auto",
    overwrite: bool = False,
    group_size: int = 32,
    tables: str = "per-group",
) -> tuple[Path, dict[str, Any]]:
    """Quantize a checkpoint, run folder or .onnx file; evaluate and measure before and after.

    `mode` auto is static for images and dynamic for text (ONNX Runtime's usual choice for transformers).
    `recipe` names the data for an .onnx file without tinykd metadata; `calibration_data` is an .npy file of
    normalised (N, C, H, W) images to use instead of the first `calibration` training images; `group_size` is the
    block of a text model's int4 weights, and `tables` (per-group or per-row) the scales of its embedding tables.
    """
    _check_options(mode, calibration, group_size, tables)
    given = open_predictor(source)
    loaded = given if isinstance(given, TorchPredictor) else None  # None: an .onnx file
    if loaded is None and mode in ("torch-dynamic", "int4"):
        raise TinykdError(f"--mode {mode} quantizes a PyTorch checkpoint or run folder, not an .onnx file")
    rec = load_any_recipe(recipe, overrides) if recipe else recipe_from_checkpoint(given.meta, source, overrides)
    if loaded is not None and is_generative(given.meta.get("task")):
        if mode not in ("auto", "dynamic"):
            raise TinykdError(f"a {given.meta['task']} model is quantized with --mode dynamic (ORT int8 weights of "
                              f"MatMul/Gemm, its KV cache in fp32), not {mode}")  # fmt: skip
        return quantize_generative_checkpoint(loaded, rec, out, threads, overwrite)
    images, labels = dataset_arrays(rec, "test")
    text = is_token_inputs(images)
    mode = _text_mode(mode, text)
    threads = threads or rec.measure.threads or torch.get_num_threads()
    timing = {"repeats": repeats or rec.measure.latency_repeats, "batch": batch or rec.measure.throughput_batch,
              "threads": threads, "example": timing_input(images, rec.measure.sequence_length)}  # fmt: skip
    path = Path(out) if out else default_output(source, SUFFIXES[mode])
    check_writable(path, overwrite)
    name = given.meta.get("model", Path(str(source)).name)
    start = time.perf_counter()
    if loaded is not None and mode == "torch-dynamic":
        rows, info = _torch_dynamic(loaded.model, name, path, images, labels, **timing)
    else:
        work = {"rec": rec, "calibration": calibration, "calibration_data": calibration_data, "exporter": exporter,
                "group_size": group_size, "tables": tables}  # fmt: skip
        rows, info = _quantize_onnx(given, mode, path, name, images, labels, timing, **work)
    before, after = rows
    add_ratios(rows, before, {"size_ratio": "size_bytes", "speedup": "latency_ms_p50"})
    report = {
        "source": str(source), "out": str(path), "mode": mode, **info,
        "test_images": len(labels), "accuracy_before": before["test_accuracy"],
        "accuracy_after": after["test_accuracy"],
        "accuracy_drop_points": round(100 * (before["test_accuracy"] - after["test_accuracy"]), 2),
        "size_before": before["size_bytes"], "size_after": after["size_bytes"],
        "smaller": after["size_ratio"], "latency_ms_before": before["latency_ms_p50"],
        "latency_ms_after": after["latency_ms_p50"], "speedup_b1": after["speedup"],
        "threads": threads, "seconds": round(time.perf_counter() - start, 2), "rows": rows,
    }  # fmt: skip
    return path, report


def _quantize_onnx(given: Any, mode: str, path: Path, name: str, images: Any, labels: np.ndarray,
                   timing: dict[str, Any], rec: Any, calibration: int, calibration_data: str | Path | None,
                   exporter: str, group_size: int,
                   tables: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """The ONNX modes: the fp32 file (the checkpoint exported and verified, or the .onnx file given) quantized
    into `path`; rows for both, evaluated and timed in ONNX Runtime."""
    text = is_token_inputs(images)
    with tempfile.TemporaryDirectory() as tmp:
        info: dict[str, Any] = {}
        if isinstance(given, TorchPredictor):  # the "before" model: the checkpoint as fp32 ONNX, verified
            fp32 = Path(tmp) / "fp32.onnx"
            exported = export_onnx(given.model, from_numpy(take(images, 1)), fp32, exporter, meta=given.meta)
            verify_onnx(given.model, fp32, take(images, 1000), labels[:1000])
            info = {"exporter": exported["exporter"], "opset": exported["opset"]}
        else:
            fp32 = given.path
        check_images_fit(fp32, take(images, 1), "test images")
        if mode == "static":
            info |= quantize_static_onnx(fp32, path, _calibration_set(rec, calibration, calibration_data))
        elif mode == "int4" and text:
            info |= _post_training_int4_text(given, path, group_size, tables, from_numpy(take(images, 2)))
        elif mode == "int4":
            info |= _post_training_int4(given, path, _calibration_set(rec, calibration, calibration_data))
        else:
            info |= quantize_dynamic_onnx(fp32, path, TEXT_DYNAMIC_OPS if text else DYNAMIC_OPS)
            if not info["quantized_nodes"]:
                info["note"] = "the model has no MatMul/Gemm node: nothing was quantized; use --mode static"
        after = ("int4 weights", path, "onnx int4 PTQ") if mode == "int4" else (f"int8 {mode}", path, "onnx int8")
        models = (("fp32", fp32, "onnx fp32"), after)
        rows = [_onnx_row(role, file, fmt, name, images, labels, **timing) for role, file, fmt in models]
    return rows, info


def _post_training_int4(loaded: Any, path: Path, calibration: np.ndarray) -> dict[str, Any]:
    """--mode int4: torchao PT2E post-training quantization, written as ONNX QDQ with INT4 weights."""
    from tinykd.models.qat import post_training_pt2e

    try:
        import torchao  # noqa: F401
    except ImportError:
        raise TinykdError("--mode int4 needs torchao: pip install 'tinykd[qat]' (or torchao)") from None
    start = time.perf_counter()
    converted = post_training_pt2e(loaded.model, "int4", torch.from_numpy(np.asarray(calibration, np.float32)))
    example = torch.from_numpy(np.asarray(calibration[:1], np.float32))
    meta = {**loaded.meta, "quantization": "torchao PT2E post-training, int4 weights per channel, uint8 "
            "activations", "calibration_images": len(calibration), "params": count_params(loaded.model),
            "macs": count_macs(loaded.model, example)}  # fmt: skip
    written = export_qdq_onnx(converted, torch.from_numpy(np.asarray(calibration[:2], np.float32)), path, "int4",
                              meta, kind="PTQ")  # fmt: skip
    return {"format": "torchao PT2E, ONNX QDQ", "calibration_images": len(calibration), "int4_tensors":
            written["int4_tensors"], "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def _post_training_int4_text(loaded: Any, path: Path, group_size: int, tables: str, example: Any) -> dict[str, Any]:
    """--mode int4 of a text classifier: torchao weight-only int4 per group (linear layers and embedding tables),
    written with MatMulNBits and INT4 tables; no calibration (the weights alone set the scales)."""
    from tinykd.compress.nbits import export_matmul_nbits
    from tinykd.models.qat import post_training_linear
    from tinykd.recipes.schema import QuantizeSpec

    start = time.perf_counter()
    spec = QuantizeSpec(weights="int4", activations="none", granularity="per-group", group_size=group_size,
                        embeddings=tables)  # fmt: skip
    quantized = post_training_linear(loaded.model, spec, "--group-size")
    meta = {**loaded.meta, "quantization": f"torchao post-training, int4 weights per group of {group_size}, "
            f"embedding tables {tables}, fp32 activations", "params": count_params(loaded.model)}  # fmt: skip
    written = export_matmul_nbits(quantized, example, path, meta, fmt="onnx int4 PTQ (MatMulNBits)")
    return {"format": "torchao, ONNX MatMulNBits and INT4 tables", "group_size": group_size, "tables": tables,
            "matmul_nbits": f"{written['matmul_nbits']} of {written['linear_layers']} linear layers",
            "int4_tables": f"{written['quantized_tables']} of {written['embedding_tables']} embedding tables",
            "weight_bytes": written["weight_bytes"], "params": meta["params"],
            "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def _onnx_row(role: str, file: Path, fmt: str, name: str, images: Any, labels: np.ndarray, repeats: int,
              batch: int, threads: int, example: Any) -> dict[str, Any]:  # fmt: skip
    """Test accuracy and measurements (timed on `example`) of an .onnx file in ONNX Runtime."""
    predictor = OnnxPredictor(file, threads, role, fmt, name)
    return {"role": role, "model": name, "format": fmt, "test_accuracy": evaluate(predictor, (images, labels))[
        "accuracy"], **measure(predictor, example, repeats, batch)}  # fmt: skip


def _torch_dynamic(model: nn.Module, name: str, path: Path, images: Any, labels: np.ndarray, repeats: int,
                   batch: int, threads: int, example: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """PyTorch dynamic int8: write the quantized state dict; rows for the model before and after (parameters and
    MACs are the fp32 model's, sizes those of torch.save files)."""
    quantized, info = quantize_torch_dynamic(model)
    torch.save(quantized.state_dict(), path)
    example = from_numpy(example)
    rows = []
    for role, m, fmt in (("fp32", model, "pytorch fp32"), ("int8 torch-dynamic", quantized, "pytorch int8")):
        predictor = TorchPredictor(m, label=role, fmt=fmt, threads=threads)
        rows.append({"role": role, "model": name, "format": fmt,
                     "test_accuracy": evaluate(predictor, (images, labels))["accuracy"], "params": count_params(model),
                     "size_bytes": torch_save_size(m), "macs": count_macs(model, example),
                     **speed(predictor, example, repeats, batch)})  # fmt: skip
    info["note"] = "sizes are torch.save files of the state dicts; load: quantize_dynamic, then load_state_dict"
    return rows, info


def _calibration_set(recipe: Any, n: int, data_file: str | Path | None) -> np.ndarray:
    """The first `n` training images of the recipe (no augmentation), or the images of an .npy file."""
    if data_file is None:
        images, _ = dataset_arrays(recipe, "train", limit=n)
        return images
    try:
        images = np.load(str(data_file), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TinykdError(f"cannot read calibration images from {data_file}: {exc}") from None
    if images.ndim != 4:
        raise TinykdError(f"calibration images in {data_file} have shape {images.shape}; expected (N, C, H, W)")
    return images[:n].astype(np.float32) if np.issubdtype(images.dtype, np.floating) else images[:n]


def quantize_generative_checkpoint(loaded: Any, recipe: Any, out: str | Path | None = None,
                                   threads: int | None = None, overwrite: bool = False, prompt_count: int = 16,
                                   new_tokens: int = 16) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """A causal-LM or seq2seq run as dynamic int8 ONNX with its KV cache: exported (`RUN/onnx/`, reused when
    there), quantized into `RUN/onnx-int8/`, then measured against the fp32 file and PyTorch: size on disk,
    greedy-decoding agreement with PyTorch on test prompts, new tokens per second at batch 1 and first-token
    latency, all in the same threads."""
    from tinykd.compress.export import export_generative_checkpoint
    from tinykd.compress.generative import verify_greedy
    from tinykd.compress.generative_ort import greedy_fn
    from tinykd.compress.source import build_bundle
    from tinykd.generation import base_dataset, prompts
    from tinykd.measure import generation_speed
    from tinykd.models.checkpoint import run_folder_of

    run_dir = run_folder_of(loaded.path)
    fp32 = run_dir / "onnx"
    if not any(fp32.glob("*.onnx")):
        export_generative_checkpoint(loaded, recipe, fp32, overwrite=True)
    target = Path(out) if out else run_dir / "onnx-int8"
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise TinykdError(f"{target} already exists; choose another --out or pass --overwrite")
    single = (fp32 / "model.onnx").is_file()
    info = quantize_generative_int8(fp32 / "model.onnx" if single else fp32,
                                    target / "model.onnx" if single else target)  # fmt: skip
    int8 = Path(info["path"])
    test = build_bundle(recipe).test
    rows_ids, eos = prompts(test, prompt_count), base_dataset(test).tokenizer.eos_token_id
    threads = threads or recipe.measure.threads or torch.get_num_threads()
    rows = []
    for label, fmt, source, size in (("student", "pytorch fp32", loaded.model, None),
                                     ("student", "onnx fp32", fp32, generative_size(fp32)),
                                     ("student", "onnx int8", int8, info["size_bytes"])):  # fmt: skip
        speed = generation_speed(greedy_fn(source, threads), rows_ids[0], new_tokens)
        row = {"role": label, "model": loaded.name, "format": fmt, "size_bytes": size,
               "gen_tokens_per_s": speed["tokens_per_s"], "first_token_ms": speed["first_token_ms"]}  # fmt: skip
        if fmt != "pytorch fp32":
            check = verify_greedy(loaded.model, source, rows_ids, new_tokens, eos)
            row["greedy_agreement"] = check["matching_tokens"] / max(check["compared_tokens"], 1)
        rows.append(row)
    report = {"task": loaded.meta["task"], "mode": "dynamic", "out": str(int8), "threads": threads, "rows": rows,
              "prompts": len(rows_ids), "new_tokens": new_tokens, "quantization": info}  # fmt: skip
    return int8, report


def describe_quantization(report: dict[str, Any]) -> str:
    """The headline for the terminal: accuracy, size and latency before and after."""
    from tinykd.report import human_bytes

    if is_generative(report.get("task")):
        fp32, int8 = report["rows"][1], report["rows"][2]
        return (f"int8 (dynamic, {report['task']}): size {human_bytes(fp32['size_bytes'])} -> "
                f"{human_bytes(int8['size_bytes'])} ({fp32['size_bytes'] / int8['size_bytes']:.1f}x smaller); greedy "
                f"tokens equal to PyTorch's: fp32 {fp32['greedy_agreement']:.1%}, int8 {int8['greedy_agreement']:.1%} "
                f"({report['prompts']} test prompts, {report['new_tokens']} new tokens); batch-1 generation "
                f"{fp32['gen_tokens_per_s']:.0f} -> {int8['gen_tokens_per_s']:.0f} tokens/s (threads: "
                f"{report['threads']}); written to {report['out']}")  # fmt: skip

    what = f"int8 ({report['mode']})"
    if report["mode"] == "int4":
        what = f"int4 weights ({report['format']})"
    return (f"{what}: test accuracy {report['accuracy_before']:.2%} -> "
            f"{report['accuracy_after']:.2%} ({-report['accuracy_drop_points']:+.2f} points); size "
            f"{human_bytes(report['size_before'])} -> {human_bytes(report['size_after'])} "
            f"({report['smaller']:.1f}x smaller); latency b1 p50 {report['latency_ms_before']:.3f} -> "
            f"{report['latency_ms_after']:.3f} ms ({report['speedup_b1']:.2f}x; threads: {report['threads']}); "
            f"written to {report['out']}")  # fmt: skip


def quantize_for_demo(
    checkpoint: str | Path, out: str | Path, calibration: int = 500, exporter: str = "auto"
) -> dict[str, Any]:
    """The demo's extra row: the distilled student as an int8 ONNX file (static for images, dynamic for text),
    measured like the other rows.

    Accuracy is on the whole test set in ONNX Runtime; latency and throughput use the recipe's measure settings.
    """
    path, report = quantize_model(checkpoint, "auto", calibration, out=out, exporter=exporter, overwrite=True)
    print(describe_quantization(report))
    row = dict(report["rows"][1])
    for key in ("size_ratio", "speedup"):
        row.pop(key, None)
    return {**row, "role": "student (int8 onnx)", "path": str(path)}


def export_for_demo(checkpoint: str | Path, out: str | Path, role: str, recipe: Any,
                    exporter: str = "auto") -> dict[str, Any]:  # fmt: skip
    """A model as a verified fp32 ONNX file, measured in ONNX Runtime like the int8 row, on `recipe`'s test set
    with its measure settings: the demo's teacher in the same runtime as the int8 student, so that the speed-up of
    one against the other is not also a change of runtime."""
    loaded = load_model(checkpoint)
    images, labels = dataset_arrays(recipe, "test")
    export_onnx(loaded.model, from_numpy(take(images, 1)), out, exporter, meta=loaded.meta)
    verify_onnx(loaded.model, out, take(images, 1000), labels[:1000])
    m = recipe.measure
    row = _onnx_row(role, Path(out), "onnx fp32", loaded.name, images, labels, m.latency_repeats, m.throughput_batch,
                    m.threads or torch.get_num_threads(), timing_input(images, m.sequence_length))  # fmt: skip
    return {**row, "path": str(out)}


def quantize_generative_int8(onnx_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """ONNX Runtime dynamic int8 (weights of MatMul and Gemm; activations quantized on the fly) of an exported file,
    or of each graph of a seq2seq folder into the folder `out_path`. The cache inputs and outputs stay fp32."""
    files = _files(onnx_path)
    OrtGenerator(onnx_path)  # a clear error for a file without the cache
    out = Path(out_path)
    if len(files) > 1 or Path(onnx_path).is_dir():
        targets = {role: out / f.name for role, f in files.items()}
    else:
        targets = {"model": out}
    report: dict[str, Any] = {"mode": "dynamic", "op_types": list(DYNAMIC_OPS), "files": {}}
    for role, source in files.items():
        info = quantize_dynamic_onnx(source, targets[role], DYNAMIC_OPS)
        report["files"][role] = {"path": str(targets[role]), "quantized_nodes": info["quantized_nodes"],
                                 "preprocess_skipped": info["preprocess_skipped"]}  # fmt: skip
    result = out if len(targets) > 1 or Path(onnx_path).is_dir() else targets["model"]
    report.update(path=str(result), size_bytes=generative_size(result), fp32_size_bytes=generative_size(onnx_path))
    return report
