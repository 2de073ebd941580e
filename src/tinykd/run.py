"""`tinykd.run(recipe)`: a whole run from a recipe to a folder of results (see `rundir` for what it holds).

It builds the pieces (`pipeline`), trains them (`engine`), then tests and measures the best student beside
its teacher and writes the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import torch

from tinykd.data.text import GENERATIVE_TASKS, TOKEN_TASKS
from tinykd.distill.ensemble import TeacherEnsemble
from tinykd.engine import Engine
from tinykd.engine.log import describe_breakdown
from tinykd.engine.runtime import resolve_precision
from tinykd.engine.trackers import check_trackers
from tinykd.errors import RunInterrupted, TinykdError
from tinykd.generation import perplexity, prompts, seq2seq_scores
from tinykd.measure import count_macs, count_params, first_sample, generation_speed_row, measure_model
from tinykd.models.checkpoint import load_weights, save_model
from tinykd.models.hf import hf_checkpoint_spec, is_hf_model, save_hf_directory
from tinykd.models.qat import is_pt2e
from tinykd.pipeline import (
    build_data,
    build_distiller,
    build_model,
    build_student,
    build_teacher,
    measure_input,
    needs_teacher,
    open_teacher_cache,
    plain_student,
    probe_batch,
    training_set,
)
from tinykd.recipes import Recipe, dump_recipe, load_recipe
from tinykd.recipes.schema import ModelSpec
from tinykd.report import format_table, rows_markdown
from tinykd.rundir import RunResult, check_resume_dir, checkpoint_bytes, prepare_run_dir, run_recipe_file

__all__ = ["RunResult", "fill_teacher_cache", "run", "run_generations"]


def run(
    recipe: Recipe | str | Path | dict[str, Any] | None,
    out: str | Path | None = None,
    overwrite: bool = False,
    mode: Literal["auto", "train", "distill"] = "auto",
    dry_run: bool = False,
    resume: str | Path | None = None,
) -> RunResult:
    """Run a recipe end to end; returns the run folder, its metrics (also in report.json) and the trained model.

    Everything that can be checked is checked before the run folder is touched: the recipe, the data, the
    models and their checkpoints, the loss terms on a probe batch, the free disk space. `dry_run` stops there.
    `resume` is a run folder to continue from its newest complete checkpoint (`recipe` may then be None: the
    folder's own is used), with the result an uninterrupted run would have had.
    """
    if recipe is None and resume is not None:
        recipe = run_recipe_file(resume)
    if recipe is None:
        raise TinykdError("give a recipe (a YAML file or a built-in name), or --resume RUN")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    _check_mode(recipe, mode)
    check_trackers(recipe.runtime.log_with)  # before any work: a tracker asked for but not installed is one line
    start = time.perf_counter()
    engine = Engine(recipe.runtime)  # first: it knows the ranks, and only the main process touches the folder
    engine.seed(recipe.seed)

    data = build_data(recipe, static_shapes=engine.device.type == "xla")  # XLA: one compiled shape per step
    text = data.tokenizer is not None
    unit = "texts" if text else "images"
    if data.skipped and engine.is_main:
        shown = "; ".join(data.skipped[:3]) + (f"; and {len(data.skipped) - 3} more" if len(data.skipped) > 3 else "")
        print(f"tinykd: data.bad_images=skip: left out {len(data.skipped)} unreadable file(s): {shown}")
    teacher = build_teacher(recipe, data, for_init=True)
    student = build_student(recipe, data, teacher)
    if not needs_teacher(recipe):
        teacher = None  # it was loaded only to start the student from its layers
    probe_inputs = probe_batch(data)
    precisions = [resolve_precision(spec.precision, engine.device.type) for spec in recipe.teacher_specs]
    distiller = build_distiller(recipe, student, teacher, probe_inputs, precisions, len(data.train))
    needed = checkpoint_bytes(distiller, student, recipe)
    run_dir = engine.on_main(
        lambda: check_resume_dir(resume, recipe, out, overwrite, needed) if resume is not None
        else prepare_run_dir(out, recipe.name, overwrite, dry_run, needed)
    )  # fmt: skip
    if dry_run:
        if engine.is_main:
            print(f"tinykd: dry run of {recipe.name}: recipe, data ({len(data.train)} train {unit}), models and "
                  f"loss terms are valid; loss = {distiller.formula()}; would write to {run_dir}")  # fmt: skip
        return RunResult(run_dir, {"dry_run": True, "loss": distiller.formula()}, student)
    if engine.is_main and resume is None:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    if text and engine.is_main and not (run_dir / "tokenizer").is_dir():
        data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))  # the run's checkpoints name it

    cache = open_teacher_cache(recipe, data, distiller)
    train_set = training_set(data, distiller)
    train_loader = engine.loader(train_set, recipe.data.batch_size, True, recipe.data.num_workers, recipe.seed)
    val_loader = engine.loader(data.val, recipe.data.eval_batch_size, False) if data.val is not None else None
    meta = {"model": recipe.trained.name, "kwargs": recipe.trained.kwargs, "num_classes": data.num_classes,
            "in_channels": data.in_channels, "image_size": data.image_size, "classes": data.classes,
            "recipe": recipe.model_dump(mode="json")}  # fmt: skip
    if is_pt2e(student):  # its checkpoints also hold the fake quantizers' state; a plain model skips it
        meta["qat"] = "pt2e"
    if is_hf_model(student):  # rebuilt from its own config (a layer-copied student has no name of its own)
        meta["model"], meta["kwargs"] = hf_checkpoint_spec(student, data.task)
    if text:
        meta.update(tokenizer="tokenizer", task=data.task, max_length=data.max_length)
    if engine.is_main:
        verb = "distilling" if teacher is not None else "training"
        procs = engine.accelerator.num_processes
        print(f"tinykd: {recipe.name}: {verb} {meta['model']} on {recipe.data.name} ({len(data.train)} train "
              f"{unit}) on {engine.describe()}; global batch {recipe.data.batch_size * procs} "
              f"({recipe.data.batch_size} per process x {procs}), lr {recipe.train.optimizer.lr:g} (as given, "
              f"not scaled); loss = {distiller.formula()}")
    try:
        fit = engine.fit(distiller, student, train_loader, val_loader, recipe.train, run_dir,
                         save=lambda model, path: save_model(model, path, meta), resume=resume is not None)  # fmt: skip
    except RunInterrupted as stop:
        command = "distill" if teacher is not None else "train"
        stop.args = (f"{stop}; resume with: tinykd {command} --resume {run_dir}",)
        raise
    finally:
        if cache is not None:  # what the teacher computed is kept, even when the run stops
            cache.flush()
    if cache is not None and engine.is_main:
        print(f"tinykd: {cache.summary()}")

    # The report: test accuracy of the best student (and of the teacher), then the measurements.
    if isinstance(teacher, TeacherEnsemble):
        teacher.full_precision()  # report the teachers as they ship (fp32), whatever format they ran in
    elif teacher is not None and distiller.teacher_dtype is not None:
        teacher.float()  # report the teacher as it ships (fp32), whatever format it ran in during distillation
    if fit.best_checkpoint is not None:
        load_weights(engine.accelerator.unwrap_model(student), fit.best_checkpoint, meta["model"])
    test_loader = engine.accelerator.prepare(engine.loader(data.test, recipe.data.eval_batch_size, False))
    trained = student
    if is_pt2e(engine.accelerator.unwrap_model(student)):  # the report's student: its fp32 weights, a plain model
        trained = plain_student(recipe, data, engine.accelerator.unwrap_model(student)).to(engine.device)
    models = {"model": trained} if teacher is None else {"teacher": teacher, "student": trained}
    example = measure_input(data, probe_inputs, recipe.measure.sequence_length) if text else probe_inputs
    rows: list[dict[str, Any]] = []
    for role, model in models.items():
        name = meta["model"] if role != "teacher" else " + ".join(spec.name for spec in recipe.teacher_specs)
        row: dict[str, Any] = {"role": role, "model": name}
        if model is not student and role != "teacher":  # the QAT-trained weights without their quantizers
            row["format"] = "pytorch fp32 (QAT weights, unquantized)"
        scores = engine.evaluate(model, test_loader)
        row["test_accuracy"] = scores["accuracy"]
        if data.task in GENERATIVE_TASKS:  # accuracy is per predicted token; perplexity of the same tokens
            row["test_perplexity"] = perplexity(scores["loss"])
        if data.task == "seq2seq" and recipe.measure.generate_samples and engine.is_main \
                and engine.device.type != "xla":  # fmt: skip  # decoding is host-driven, a graph per length
            generated = seq2seq_scores(engine.accelerator.unwrap_model(model), data.test,
                                       recipe.measure.generate_samples, recipe.data.eval_batch_size)  # fmt: skip
            row.update(test_exact_match=generated["exact_match"], test_rouge_l=generated["rouge_l"])
        if recipe.measure.enabled and engine.is_main:
            stats = measure_model(engine.accelerator.unwrap_model(model), example,
                                  recipe.measure.latency_repeats, recipe.measure.throughput_batch,
                                  recipe.measure.threads)  # fmt: skip
            row.update(stats.as_dict())
            if data.task in GENERATIVE_TASKS:
                row.update(generation_speed_row(engine.accelerator.unwrap_model(model), prompts(data.test, 1)[0],
                                                recipe.measure.new_tokens, recipe.measure.threads))  # fmt: skip
        rows.append(row)
    if recipe.quantize is not None and engine.device.type != "xla":
        rows.append(_qat_row(engine, recipe, data, student, test_loader, meta, run_dir, example))
    metrics = {
        "name": recipe.name, "dataset": recipe.data.name, "loss": distiller.formula(), "epochs": recipe.train.epochs,
        "best_val_accuracy": fit.best_accuracy, "best_epoch": fit.best_epoch,
        "train_seconds": round(fit.seconds, 2), "train_img_per_s": round(fit.images_per_second, 1),
        "total_seconds": round(time.perf_counter() - start, 2), "device": str(engine.device),
        "checkpoint": str(fit.best_checkpoint) if fit.best_checkpoint else None, "models": rows,
    }  # fmt: skip
    metrics["environment"] = environment(engine)
    if fit.time_breakdown is not None:
        metrics["time_breakdown"] = fit.time_breakdown
    if recipe.train.nonfinite == "skip":
        metrics["skipped_steps"] = fit.skipped_steps
    if data.skipped:
        metrics["skipped_files"] = {"count": len(data.skipped), "files": data.skipped[:1000]}
    if fit.xla is not None:
        metrics["xla"] = fit.xla
    if cache is not None:
        metrics["teacher_cache"] = {"folder": str(cache.folder), "batches_read": cache.served,
                                    "batches_computed": cache.computed, "bytes": cache.size_bytes(),
                                    "format": cache.format}  # fmt: skip
    if text:
        metrics["sequence_length"] = recipe.measure.sequence_length
    if engine.is_main:
        if is_hf_model(engine.accelerator.unwrap_model(student)):  # the best student as a Hugging Face directory
            save_hf_directory(engine.accelerator.unwrap_model(student), run_dir / "model", data.tokenizer)
            metrics["hf_model"] = str(run_dir / "model")
        if data.classes:
            metrics["classes"] = list(data.classes)
        (run_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (run_dir / "report.md").write_text(_report_markdown(metrics))
        _write_page(engine, models, data, recipe, run_dir)
        print(format_table(rows, title=f"{recipe.name}: test set"))
        print(f"run folder: {run_dir}")
    return RunResult(run_dir, metrics, engine.accelerator.unwrap_model(student))


def environment(engine: Engine) -> dict[str, Any]:
    """Where the run happened, for the report: device, processes, precision and the versions that matter."""
    import os
    import platform
    import sys

    from tinykd.version import __version__

    versions = {"tinykd": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "torchao", "torch_xla", "onnxruntime"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return {"run": engine.describe(), "processes": engine.accelerator.num_processes, "precision": engine.precision,
            "machine": platform.machine(), "cpus": os.cpu_count(), "versions": versions}  # fmt: skip


def _write_page(engine: Engine, models: dict[str, Any], data: Any, recipe: Recipe, run_dir: Path) -> None:
    """report.html, with the predictions it shows per class (classification runs): a failure here is one line,
    the run folder stays as it is."""
    from tinykd.html_report import write_html_report

    try:
        if data.task not in TOKEN_TASKS and data.task != "masked-lm":
            save_predictions(engine, models, data.test, recipe.data.eval_batch_size, run_dir, data.classes)
        write_html_report([run_dir])
    except Exception as exc:  # the run's results are saved already: say what failed, keep going
        print(f"tinykd: report.html not written: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}")


def save_predictions(engine: Engine, models: dict[str, Any], test_set: Any, batch: int, run_dir: Path,
                     classes: list[str] | None = None, grid: int = 16) -> None:  # fmt: skip
    """`predictions.npz` (test labels and each model's top-1) and, for images, `disagreements.png`: up to `grid`
    test images where teacher and student disagree, with both predictions."""
    import numpy as np

    from tinykd.compress.predictors import TorchPredictor

    labels: list[Any] = []
    preds: dict[str, list[Any]] = {role: [] for role in models}
    predictors = {role: TorchPredictor(engine.accelerator.unwrap_model(model), device=engine.device)
                  for role, model in models.items()}  # fmt: skip
    for inputs, targets in engine.loader(test_set, batch, False):
        keep = targets >= 0  # not the padding of the last batch
        labels.append(targets[keep].numpy())
        for role, predictor in predictors.items():
            preds[role].append(predictor.predict(inputs).argmax(-1).cpu()[keep].numpy())
    saved = {"labels": np.concatenate(labels), **{role: np.concatenate(p) for role, p in preds.items()}}
    np.savez_compressed(run_dir / "predictions.npz", **saved)
    if "teacher" not in saved or "student" not in saved:
        return
    differ = np.flatnonzero(saved["teacher"] != saved["student"])[:grid]
    first = test_set[int(differ[0])][0] if len(differ) else None
    if not isinstance(first, torch.Tensor) or first.dim() != 3:
        return  # text, or nothing to show
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    def name(c: int) -> str:
        return str(classes[c]) if classes and c < len(classes) else str(c)

    cols = min(8, len(differ))
    fig = Figure(figsize=(1.6 * cols, 2.0 * -(-len(differ) // cols)))
    FigureCanvasAgg(fig)
    for k, index in enumerate(differ):
        image = test_set[int(index)][0].float()
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)  # normalised for the eye
        ax = fig.add_subplot(-(-len(differ) // cols), cols, k + 1)
        ax.imshow((image[0] if image.shape[0] == 1 else image[:3].permute(1, 2, 0)).numpy(), cmap="gray")
        ax.set_title(f"{name(int(saved['labels'][index]))}\nT: {name(int(saved['teacher'][index]))}\n"
                     f"S: {name(int(saved['student'][index]))}", fontsize=7)  # fmt: skip
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(run_dir / "disagreements.png", dpi=90)


def fill_teacher_cache(recipe: Recipe | str | Path | dict[str, Any]) -> dict[str, Any]:
    """Fill the recipe's `teacher.cache` ahead of training: the teacher's outputs for every batch of every epoch
    the run will see (the same sampler, seed and augmentation), so the runs that follow never run the teacher."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.teacher is None or recipe.teacher.cache is None:
        raise TinykdError("tinykd cache-teacher needs a recipe with a teacher and teacher.cache (a folder)")
    if not needs_teacher(recipe):
        raise TinykdError("tinykd cache-teacher: no loss term reads the teacher, so there is nothing to cache")
    start = time.perf_counter()
    engine = Engine(recipe.runtime)
    engine.seed(recipe.seed)
    data = build_data(recipe, static_shapes=engine.device.type == "xla")
    teacher = build_teacher(recipe, data, for_init=True)
    student = build_student(recipe, data, teacher)
    precisions = [resolve_precision(spec.precision, engine.device.type) for spec in recipe.teacher_specs]
    distiller = build_distiller(recipe, student, teacher, probe_batch(data), precisions, len(data.train))
    cache = open_teacher_cache(recipe, data, distiller)
    assert cache is not None
    before = len(cache)
    loader = engine.loader(training_set(data, distiller), recipe.data.batch_size, True, recipe.data.num_workers,
                           recipe.seed)  # fmt: skip

    def fill(inputs: Any) -> None:
        if inputs.teacher is None and cache.read_only:
            taps = ", ".join(cache.manifest["taps"])
            raise TinykdError(f"teacher cache {cache.folder} holds more teacher taps ({taps}) than this recipe's terms "
                              "read, and lacks some of its batches: fill it with the recipe that started it, or give "
                              "an empty folder")  # fmt: skip
        if inputs.teacher is None:  # not cached yet
            distiller.fill_cache(inputs)

    engine.replay(distiller, loader, recipe.train, fill)  # the batches, device, memory format and autocast of fit
    cache.flush()
    seconds = time.perf_counter() - start
    stats = {"folder": str(cache.folder), "epochs": recipe.train.epochs, "batches_added": len(cache) - before,
             "batches": len(cache), "bytes": cache.size_bytes(), "seconds": round(seconds, 2),
             "format": cache.format}  # fmt: skip
    if engine.is_main:
        per_epoch = stats["bytes"] / max(recipe.train.epochs, 1) / 2**20
        print(f"tinykd: {cache.summary()}; filled in {seconds:.1f} s, {per_epoch:.2f} MiB per epoch")
    return stats


def _qat_row(engine: Engine, recipe: Recipe, data: Any, student: Any, test_loader: Any, meta: dict[str, Any],
             run_dir: Path, example: Any) -> dict[str, Any]:  # fmt: skip
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

    spec = recipe.quantize
    assert spec is not None
    converted = convert_qat(engine.accelerator.unwrap_model(student), spec)
    role = f"student ({spec.weights} QAT)"
    scores = engine.evaluate(converted.to(engine.device), test_loader)
    pt2e = is_pt2e(converted)
    form = "pt2e" if pt2e else "pytorch" if data.task in GENERATIVE_TASKS else \
        "nbits" if spec.weights == "int4" and spec.granularity != "per-channel" and spec.group_size >= 16 else "qdq"
    if form == "pytorch":
        row = {"role": role, "model": meta["model"], "format": f"torchao {describe(spec)}",
               "test_accuracy": scores["accuracy"], "size_bytes": state_bytes(converted)}  # fmt: skip
        if engine.is_main:
            torch.save(converted.state_dict(), run_dir / "model.qat.pt")
            if recipe.measure.enabled:  # torchao's low-bit model as it runs in PyTorch
                from tinykd.compress.predictors import TorchPredictor, speed

                figures = speed(TorchPredictor(converted, threads=recipe.measure.threads), example,
                                recipe.measure.latency_repeats, recipe.measure.throughput_batch)  # fmt: skip
                row.update({k: v for k, v in figures.items() if k != "threads"})
        return row
    fmt = {"pt2e": f"onnx {spec.weights} QAT", "nbits": "onnx int4 QAT (MatMulNBits)",
           "qdq": f"onnx {spec.weights} QAT (QDQ)"}[form]  # fmt: skip
    row = {"role": role, "model": meta["model"], "format": fmt, "test_accuracy_pytorch": scores["accuracy"]}
    if not engine.is_main:
        return row
    from tinykd.compress.onnxrt import onnx_size
    from tinykd.compress.predictors import OnnxPredictor, evaluate, measure
    from tinykd.tasks import get_task

    path = run_dir / "model.qat.onnx"
    converted = converted.cpu()
    one = first_sample(example)
    if pt2e:
        from tinykd.compress.export import export_qdq_onnx

        plain = plain_student(recipe, data, engine.accelerator.unwrap_model(student))
        sizes = {"params": count_params(plain), "macs": count_macs(plain, one)}
        # the recipe is in the file's metadata: `tinykd compare` finds its test set
        written = export_qdq_onnx(converted, example, path, spec.weights, meta | sizes)
    else:
        from tinykd.compress.nbits import export_linear_qdq, export_matmul_nbits

        export = export_matmul_nbits if form == "nbits" else export_linear_qdq
        written = export(converted, example, path, meta, fmt=fmt)
        row["matmul_nbits" if form == "nbits" else "qdq_layers"] = \
            f"{written['replaced']} of {written['linear_layers']} linear layers"  # fmt: skip
        if written["embedding_tables"]:
            tables = f"{written['quantized_tables']} of {written['embedding_tables']} embedding tables"
            row[f"{spec.weights}_tables"] = tables
    row["weight_bytes"] = written["weight_bytes"]  # the file's tensors: codes, scales, zero points, biases
    runtime = OnnxPredictor(path, recipe.measure.threads)
    host_batches = engine.loader(data.test, recipe.data.eval_batch_size, False)  # all of it, on the host
    row["test_accuracy"] = evaluate(runtime, host_batches, get_task(data.task or "classification"))["accuracy"]
    if recipe.measure.enabled:
        figures = measure(runtime, one, recipe.measure.latency_repeats, recipe.measure.throughput_batch)
        row.update({k: v for k, v in figures.items() if k != "threads"})
    else:
        row["size_bytes"] = onnx_size(path)
    return row


def generate_teacher_data(recipe: Recipe | str | Path | dict[str, Any], out: str | Path, num_beams: int = 1,
                          max_new_tokens: int | None = None, limit: int | None = None,
                          prompt_tokens: int = 8) -> dict[str, Any]:  # fmt: skip
    """Sequence-level KD (Kim & Rush 2016), `tinykd generate`: the recipe's teacher writes its outputs for every
    training source (seq2seq) or continues every training text's first `prompt_tokens` tokens (causal-lm); the
    result is a table with the recipe's columns that a student recipe reads as `data.train`."""
    from tinykd.generation import OUTPUT_FORMATS, write_teacher_outputs

    if Path(out).suffix.lower() not in OUTPUT_FORMATS:  # before any work
        raise TinykdError(f"{out}: write the generated data as {' or '.join(OUTPUT_FORMATS)}")
    if num_beams < 1 or prompt_tokens < 1 or (limit is not None and limit < 1) or \
            (max_new_tokens is not None and max_new_tokens < 1):  # fmt: skip
        raise TinykdError("--num-beams, --prompt-tokens, --limit and --max-new-tokens must be >= 1")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.teacher is None or not (recipe.teacher.checkpoint or recipe.teacher.name.startswith("hf:")):
        raise TinykdError("tinykd generate needs a recipe with one trained teacher (teacher.checkpoint, or an hf: "
                          "directory)")  # fmt: skip
    if recipe.data.task not in GENERATIVE_TASKS:
        raise TinykdError(f"tinykd generate writes a generative teacher's outputs; data.task is {recipe.data.task}: "
                          "use causal-lm or seq2seq")  # fmt: skip
    start = time.perf_counter()
    engine = Engine(recipe.runtime)
    engine.seed(recipe.seed)
    data = build_data(recipe)
    teacher = build_model(recipe.teacher, data, "teacher")
    device = engine.device if engine.device.type != "xla" else "cpu"  # decoding is host-driven: a graph per length
    teacher.to(device)
    d = recipe.data
    columns = (d.source_column or "text", d.target_column) if d.task == "seq2seq" else (d.text_column or "text", "")

    def progress(done: int, total: int) -> None:
        if engine.is_main and (done == total or done % max(1, total // 10) < d.eval_batch_size):
            print(f"tinykd: generate: {done}/{total} texts ({time.perf_counter() - start:.0f} s)", flush=True)

    stats = write_teacher_outputs(teacher, data.train, out, columns, num_beams, max_new_tokens, d.eval_batch_size,
                                  limit, prompt_tokens, progress)  # fmt: skip
    stats["seconds"] = round(time.perf_counter() - start, 2)
    if engine.is_main:
        print(f"tinykd: wrote {stats['rows']} rows of the teacher's outputs to {stats['file']} in "
              f"{stats['seconds']} s; train a student on them with data.train={stats['file']}")  # fmt: skip
    return stats


def run_generations(recipe: Recipe | str | Path | dict[str, Any], generations: int, out: str | Path | None = None,
                    overwrite: bool = False) -> list[RunResult]:  # fmt: skip
    """Born-again distillation (Furlanello et al. 2018): generation 1 is the recipe as given; generation k + 1
    is the same student, trained from scratch again, distilled from generation k's best checkpoint.

    The runs are `OUT/gen1`, `OUT/gen2`, ...; a finished generation is kept and an interrupted one resumed, so
    running the command again continues the chain. `OUT/generations.json` and `.md` hold each generation's
    accuracy. Terms that tap the teacher by module path must name paths of the student's architecture.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if generations < 1:
        raise TinykdError(f"--generations must be >= 1, got {generations}")
    if generations > 1 and recipe.trained.init_from_teacher is not None:
        raise TinykdError("--generations retrains the same student from scratch each generation; "
                          "student.init_from_teacher copies layers of one given teacher: remove it")  # fmt: skip
    if generations > 1 and recipe.trained.checkpoint:
        raise TinykdError("--generations trains each student from scratch; remove student.checkpoint")
    _check_mode(recipe, "distill")
    root = Path(out) if out else Path("runs") / f"{recipe.name}-born-again"
    name = recipe.name
    results: list[RunResult] = []
    rows: list[dict[str, Any]] = []
    for k in range(1, generations + 1):
        if k > 1:  # the student of generation k - 1 teaches generation k
            previous = results[-1].run_dir.resolve()  # absolute: the saved recipe works from anywhere
            teacher = {"name": recipe.trained.name, "kwargs": recipe.trained.kwargs, "checkpoint": str(previous),
                       "precision": recipe.teacher_specs[0].precision}  # fmt: skip
            recipe = recipe.model_copy(update={"teacher": ModelSpec(**teacher), "teachers": None,
                                               "name": f"{name}-gen{k}"})  # fmt: skip
        folder = root / f"gen{k}"
        if (folder / "report.json").is_file() and not overwrite:
            print(f"tinykd: generation {k}: finished earlier, kept ({folder})")
            result = RunResult(folder, json.loads((folder / "report.json").read_text()))
        elif (folder / "recipe.yaml").is_file() and not overwrite:
            print(f"tinykd: generation {k}: resuming {folder}")
            result = run(recipe, folder, mode="distill", resume=folder)
        else:
            result = run(recipe, folder, overwrite=overwrite, mode="distill")
        results.append(result)
        student = next(r for r in result.metrics["models"] if r["role"] == "student")
        teacher_row = next(r for r in result.metrics["models"] if r["role"] == "teacher")
        rows.append({"generation": k, "teacher": "given" if k == 1 else f"gen{k - 1}",
                     "teacher_test_accuracy": teacher_row["test_accuracy"],
                     "test_accuracy": student["test_accuracy"],
                     "best_val_accuracy": result.metrics["best_val_accuracy"], "run": str(folder)})  # fmt: skip
    (root / "generations.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| generation | teacher | teacher test acc | student test acc | best val acc |", "|---|---|---|---|---|"]
    lines += [f"| {r['generation']} | {r['teacher']} | {r['teacher_test_accuracy']:.2%} | {r['test_accuracy']:.2%} | "
              f"{r['best_val_accuracy']:.2%} |" for r in rows]  # fmt: skip
    (root / "generations.md").write_text("\n".join(lines) + "\n")
    print(f"born-again generations of {recipe.trained.name}:\n" + "\n".join(lines) + f"\nfolder: {root}")
    return results


def _check_mode(recipe: Recipe, mode: str) -> None:
    if mode == "distill" and not recipe.teacher_specs:
        raise TinykdError("tinykd distill needs a 'teacher' section (or 'teachers', a list) in the recipe (name and "
                          "checkpoint)")  # fmt: skip
    if mode == "distill" and not needs_teacher(recipe):
        raise TinykdError("tinykd distill: no loss term uses the teacher; add e.g. kd: {weight: 0.9, temperature: 4}")
    if mode == "train" and needs_teacher(recipe):
        raise TinykdError("tinykd train trains without a teacher, but the recipe has teacher loss terms; "
                          "use tinykd distill")  # fmt: skip


def _report_markdown(metrics: dict[str, Any]) -> str:
    lines = [
        f"# {metrics['name']}",
        "",
        f"- dataset: {metrics['dataset']}; epochs: {metrics['epochs']}; device: {metrics['device']}",
        f"- loss = {metrics['loss']}",
        f"- best validation accuracy {metrics['best_val_accuracy']:.4f} at epoch {metrics['best_epoch']}",
        f"- training {metrics['train_seconds']} s ({metrics['train_img_per_s']} img/s); "
        f"whole run {metrics['total_seconds']} s",
        *([f"- {describe_breakdown(metrics['time_breakdown'])}"] if metrics.get("time_breakdown") else []),
        "",
        rows_markdown(metrics["models"]),
        "",
    ]
    return "\n".join(lines)
