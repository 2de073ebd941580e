"""`tinykd export --format executorch|litert`: the file a phone app loads, checked by the runtime that will run it.

Phone runtimes take fixed shapes best (XNNPACK plans its memory once; LiteRT's dynamic shapes are a known weak
spot), and phones run one input at a time, so the file takes batch 1 and a text model one fixed sequence length
(the recipe's `data.max_length`, shorter texts padded and masked). Both are said in the file's card, a JSON file
beside it (`model.pte.json`): inputs and outputs with names, shapes and dtypes, the normalisation images need, the
label names, the precision, the model and its recipe, and how the file was verified. `compare` and `profile` read
the card to find the test set.

Precision: `fp32`, or `int8`: static (activations and per-channel weights, calibrated on training images) for a
model with convolutions, dynamic (int8 weights, activations quantized per call) for a text model, as ONNX
Runtime's `quantize --mode auto` does; a convolutional quantization-aware run (recipe `quantize`) brings the int8
it trained with instead ("trained": no calibration, verified against the QAT model it converts to). Each runtime
is one file (`executorch_rt`, `litert_rt`) with an `export` function and a registered `Predictor`; this file is
what they share: inputs, the card, the verification.

Verification, right after writing: fp32 within `tolerance` of PyTorch and top-1 agreement >= 99.9% on the first
test samples; int8 accuracy on the whole test set within `max_drop` points of PyTorch's fp32. A file that fails is
removed: a silently wrong model on a phone is worse than none.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.compress.fixed_shape import card_path, fixed_inputs, read_card
from tinykd.compress.predictors import Predictor, TorchPredictor, metrics_of, predict_all
from tinykd.data.inputs import batch_size, map_inputs
from tinykd.errors import TinykdError

FORMATS = {"executorch": ".pte", "litert": ".tflite"}
PRECISIONS = ("fp32", "int8")
AGREEMENT = 0.999  # top-1 agreement an fp32 file must reach against PyTorch
DEFAULT_TOLERANCE = 1e-4


# --- export ---------------------------------------------------------------------------------------------------------


def _runtime(fmt: str) -> Any:
    """The runtime module of a format (each is one file with `export`, `PREDICTOR`, `NAME` and `check_installed`)."""
    if fmt == "executorch":
        from tinykd.compress import executorch_rt as module
    else:
        from tinykd.compress import litert_rt as module
    module.check_installed()
    return module


def _sequence_length(recipe: Any, inputs: Any) -> int | None:
    """A text model's fixed length: the recipe's `data.max_length`, else the test set's longest text."""
    if not isinstance(inputs, dict):
        return None
    return int(getattr(recipe.data, "max_length", None) or next(iter(inputs.values())).shape[1])


def _card(fmt: str, precision: str, quant: str | None, example: Any, names: list[str], logits: np.ndarray,
          loaded: Any, recipe: Any, length: int | None, dtypes: list[str]) -> dict[str, Any]:  # fmt: skip
    """What an app developer needs to call the file, in one place."""
    from tinykd.compress.source import build_bundle
    from tinykd.measure import count_macs, count_params

    arrays = example if isinstance(example, dict) else {"input": example}
    inputs = [{"name": n, "shape": list(np.asarray(arrays[n]).shape), "dtype": d}
              for n, d in zip(names, dtypes, strict=True)]  # fmt: skip
    card: dict[str, Any] = {
        "format": f"{fmt} {precision}" + (f" ({quant})" if quant else ""),
        "runtime": fmt, "precision": precision, "quantization": quant, "inputs": inputs,
        "outputs": [{"name": "logits", "shape": list(logits.shape), "dtype": "float32"}],
        "batch": 1, "sequence_length": length, "model": loaded.meta.get("model", loaded.name),
        "params": count_params(loaded.model),
        "macs": None if isinstance(example, dict) else count_macs(loaded.model, torch.from_numpy(example)),
    }  # fmt: skip
    if length:
        card["text"] = (f"texts padded with 0 (attention_mask 0) or cut to {length} tokens: one fixed length, since "
                        f"{fmt} runs fixed shapes best; export again with --set data.max_length=N for another")
    bundle = build_bundle(recipe)
    test = bundle.test
    while not hasattr(test, "mean") and hasattr(test, "dataset"):  # a subset of the dataset
        test = test.dataset
    if hasattr(test, "mean") and hasattr(test, "std"):  # what the app must do to a 0-255 image before the call
        card["normalization"] = {"input": "(pixel - mean) / std, pixels 0-255, channels first",
                                 "mean": (test.mean.flatten()).tolist(), "std": (test.std.flatten()).tolist()}
    if bundle.classes:
        card["labels"] = list(bundle.classes)
    card["model_meta"] = {k: v for k, v in loaded.meta.items() if k in ("recipe", "task", "model", "kwargs",
                                                                         "num_classes", "in_channels", "image_size")}
    return card


def export_mobile(
    source: str | Path,
    fmt: str,
    precision: str = "fp32",
    out: str | Path | None = None,
    calibration: int = 500,
    tolerance: float = DEFAULT_TOLERANCE,
    verify_images: int = 1000,
    max_drop: float = 0.5,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    threads: int | None = None,
    recipe: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Export a run or checkpoint to ExecuTorch (.pte) or LiteRT (.tflite) in `precision`, write its card, and
    verify it in its runtime (raises, and removes the file, when it does not match PyTorch). The data (test set,
    calibration, sequence length) is the checkpoint's recipe's, or `recipe`'s when given."""
    from tinykd.compress.export import NamedInputs
    from tinykd.compress.source import check_writable, dataset_arrays, default_output
    from tinykd.loading import load_model, recipe_from_checkpoint
    from tinykd.tasks import is_generative

    if fmt not in FORMATS:
        raise TinykdError(f"--format must be one of onnx, pt2, {', '.join(FORMATS)}, not '{fmt}'")
    if precision not in PRECISIONS:
        raise TinykdError(f"--precision must be fp32 or int8, not '{precision}'")
    if tolerance <= 0 or verify_images < 1 or calibration < 1 or max_drop < 0:
        raise TinykdError("--tolerance must be > 0, --verify-images and --calibration at least 1, --max-drop >= 0")
    runtime = _runtime(fmt)
    loaded = load_model(source)
    task = loaded.meta.get("task")
    if is_generative(task):
        raise TinykdError(f"a {task} model does not export to {fmt} here: {runtime.NAME} would need the decoder "
                          "with its KV cache, step by step; use --format onnx (ONNX Runtime, KV cache)")  # fmt: skip
    recipe = recipe or recipe_from_checkpoint(loaded.meta, loaded.path, overrides)
    suffix = (".int8" if precision == "int8" else "") + FORMATS[fmt]
    path = Path(out) if out else default_output(source, suffix)
    check_writable(path, overwrite)
    test_inputs, labels = dataset_arrays(recipe, "test")
    length = _sequence_length(recipe, test_inputs)
    test_inputs = fixed_inputs(test_inputs, length)
    model = loaded.model.eval().cpu()
    text = isinstance(test_inputs, dict)
    names = list(test_inputs) if text else ["input"]
    module = NamedInputs(model, names).eval() if text else model
    first = map_inputs(lambda v: torch.from_numpy(np.ascontiguousarray(v[:1])), test_inputs)
    example = tuple(first[n] for n in names) if text else (first,)
    quant = None if precision == "fp32" else ("dynamic" if text else "static")
    start = time.perf_counter()
    if precision == "int8" and loaded.meta.get("qat") == "pt2e":  # the int8 it trained with, not a second one
        from tinykd.compress.pt2e_export import trained_int8

        quant = "trained"
        model = module = trained_int8(loaded, recipe, example[0])
    data, dtypes = runtime.export(module, example, quant, _calibration_set(recipe, calibration, quant))
    seconds = round(time.perf_counter() - start, 2)
    reference = predict_all(TorchPredictor(model), test_inputs).numpy()  # a QAT run: its converted graph
    card = _card(fmt, precision, quant, map_inputs(lambda v: v.numpy(), first), names, reference[:1], loaded, recipe,
                 length, dtypes)  # fmt: skip
    _write(path, data, card, loaded.tokenizer_dir if text else None)
    try:
        predictor = runtime.PREDICTOR.open(path, threads)
        inputs, outputs = predictor.file_io()  # the file's own view: LiteRT's static int8 takes int8, for one
        for mine, theirs in zip(card["inputs"], inputs, strict=False):
            mine.update(theirs)
        card["outputs"] = [{"name": "logits", **o} for o in outputs[:1]]
        verification = verify_file(predictor, reference, test_inputs, labels, precision, tolerance, verify_images,
                                   max_drop, loaded.meta.get("task"),
                                   "the QAT model in PyTorch" if quant == "trained" else "PyTorch fp32")  # fmt: skip
    except TinykdError as exc:
        for done in (path, card_path(path), path.with_name(path.name + ".tokenizer.json")):
            done.unlink(missing_ok=True)
        raise TinykdError(f"{exc}; {path} was removed") from None
    card["verification"] = verification
    card_path(path).write_text(json.dumps(card, indent=2, default=str) + "\n")
    report = {"format": fmt, "precision": precision, "quantization": quant, "path": str(path), "seconds": seconds,
              "size_bytes": path.stat().st_size, "card": str(card_path(path)), "model": loaded.name,
              "checkpoint": str(loaded.path), "sequence_length": length, "verification": verification,
              "runtime": runtime.NAME}  # fmt: skip
    return path, report


def _calibration_set(recipe: Any, count: int, quant: str | None) -> list[tuple[torch.Tensor, ...]]:
    """Static int8's calibration inputs: the first `count` training images, one at a time (the file's batch)."""
    from tinykd.compress.source import dataset_arrays

    if quant != "static":
        return []
    train, _ = dataset_arrays(recipe, "train", limit=count)
    return [(torch.from_numpy(np.ascontiguousarray(train[i : i + 1])),) for i in range(len(train))]


def _write(path: Path, data: bytes, card: dict[str, Any], tokenizer_dir: Path | None) -> None:
    """The file (whole or not at all), a text model's tokenizer beside it (the app tokenizes with the very same
    vocabulary), and the card."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    tokenizer = tokenizer_dir / "tokenizer.json" if tokenizer_dir else None
    if tokenizer is not None and tokenizer.is_file():
        shutil.copyfile(tokenizer, path.with_name(path.name + ".tokenizer.json"))
        card["tokenizer"] = path.name + ".tokenizer.json"
    card_path(path).write_text(json.dumps(card, indent=2, default=str) + "\n")


def verify_file(predictor: Predictor, reference: np.ndarray, inputs: Any, labels: np.ndarray, precision: str,
                tolerance: float, verify_images: int, max_drop: float, task: str | None = None,
                against: str = "PyTorch fp32") -> dict[str, Any]:  # fmt: skip
    """fp32: the first `verify_images` samples within `tolerance` and top-1 agreement >= 99.9%; int8: accuracy on
    every test sample within `max_drop` points of the `reference` logits' (`against` names them). Raises a
    one-line error otherwise."""
    from tinykd.tasks import get_task

    task_ = get_task(task or "classification")
    what = predictor.runtime
    count = batch_size(inputs) if precision == "int8" else min(verify_images, batch_size(inputs))
    subset = map_inputs(lambda v: v[:count], inputs)
    outputs = predict_all(predictor, subset, 64).numpy()
    ref = reference[:count]
    diff = float(np.abs(ref - outputs).max()) if ref.size else 0.0
    agree = float((ref.argmax(1) == outputs.argmax(1)).mean())
    acc_torch = metrics_of(task_, ref, labels[:count])["accuracy"]
    acc_file = metrics_of(task_, outputs, labels[:count])["accuracy"]
    report = {"samples": count, "max_abs_diff": diff, "top1_agreement": agree, "accuracy_pytorch": acc_torch,
              f"accuracy_{what}": acc_file, "tolerance": tolerance if precision == "fp32" else None,
              "max_drop_points": max_drop if precision == "int8" else None, "against": against}  # fmt: skip
    if not np.isfinite(outputs).all():
        raise TinykdError(f"verification failed: {what} returned non-finite logits")
    if precision == "fp32" and (diff > tolerance or agree < AGREEMENT):
        raise TinykdError(f"verification failed: {what} and PyTorch differ by up to {diff:.3g} on {count} test "
                          f"samples (tolerance {tolerance:g}), top-1 agreement {agree:.2%} (at least "
                          f"{AGREEMENT:.1%} needed)")  # fmt: skip
    if precision == "int8" and 100 * (acc_torch - acc_file) > max_drop:
        raise TinykdError(f"verification failed: the int8 file's accuracy in {what} is {acc_file:.2%} against "
                          f"{acc_torch:.2%} in {against} on {count} test samples, more than --max-drop "
                          f"{max_drop:g} points lower")  # fmt: skip
    return report


def describe_mobile(path: Path, report: dict[str, Any]) -> str:
    """Three lines for the terminal: what was written, its inputs, and how it was verified."""
    from tinykd.report import human_bytes

    v, card = report["verification"], read_card(path)
    quant = f", {report['quantization']} int8" if report["quantization"] else ""
    first = (f"exported {path} ({report['runtime']}{quant}, {human_bytes(report['size_bytes'])}) in "
             f"{report['seconds']} s; card: {report['card']}")  # fmt: skip
    shapes = ", ".join(f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in card.get("inputs", []))
    second = f"inputs: {shapes} -> logits {tuple(card.get('outputs', [{}])[0].get('shape', []))}"
    if report.get("sequence_length"):
        second += f"; one fixed length of {report['sequence_length']} tokens (shorter texts padded and masked)"
    acc = v[f"accuracy_{report['runtime']}"]
    if report["precision"] == "fp32":
        third = (f"verified on {v['samples']} test samples: max |diff| {v['max_abs_diff']:.2e} <= {v['tolerance']:g}, "
                 f"top-1 agreement {v['top1_agreement']:.2%}, accuracy {v['accuracy_pytorch']:.2%} (PyTorch) vs "
                 f"{acc:.2%} ({report['runtime']})")  # fmt: skip
    else:
        third = (f"verified on all {v['samples']} test samples: accuracy {acc:.2%} ({report['runtime']} int8) vs "
                 f"{v['accuracy_pytorch']:.2%} ({v.get('against', 'PyTorch fp32')}), top-1 agreement "
                 f"{v['top1_agreement']:.2%}")  # fmt: skip
    return f"{first}\n{second}\n{third}"


def available(fmt: str) -> bool:
    """Whether this environment has the runtime of `fmt` (the demo adds its rows only then)."""
    try:
        _runtime(fmt)
    except TinykdError:
        return False
    return True


def row_for_demo(checkpoint: str | Path, out: Path, role: str, recipe: Any, fmt: str = "executorch",
                 precision: str = "fp32") -> dict[str, Any]:  # fmt: skip
    """A model exported to a phone runtime (verified), measured there like the demo's other rows: accuracy on the
    whole test set, latency and throughput with `recipe`'s measure settings."""
    from tinykd.compress.predictors import evaluate, measure_row
    from tinykd.compress.source import dataset_arrays
    from tinykd.measure import timing_input

    m = recipe.measure
    threads = m.threads or torch.get_num_threads()
    path, report = export_mobile(checkpoint, fmt, precision, out, overwrite=True, threads=threads, recipe=recipe)
    print(describe_mobile(path, report).splitlines()[0])
    predictor = _runtime(fmt).PREDICTOR.open(path, threads)
    inputs, labels = dataset_arrays(recipe, "test")
    row = measure_row(predictor, timing_input(inputs, m.sequence_length), m.latency_repeats, m.throughput_batch)
    row.update(role=role, test_accuracy=evaluate(predictor, (inputs, labels))["accuracy"], path=str(path),
               macs=read_card(path).get("macs"))  # fmt: skip
    return row
