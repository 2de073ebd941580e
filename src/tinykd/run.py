"""`tinykd.run(recipe)`: a whole run from a recipe to a folder of results (see `rundir` for what it holds).

Four phases over one assembly (`assemble`): train the student (`Engine.fit`), test the best student beside its
teacher, measure them, and write the report. `fill_teacher_cache` is the same assembly, replayed without training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from torch import nn

from tinykd.assemble import Assembly, assemble
from tinykd.distill.ensemble import TeacherEnsemble
from tinykd.engine.resume import FitResult
from tinykd.engine.trackers import check_trackers
from tinykd.errors import RunInterrupted, TinykdError
from tinykd.generation import prompts, seq2seq_scores
from tinykd.measure import generation_speed_row, measure_model
from tinykd.models.checkpoint import CheckpointMeta, load_weights, save_model
from tinykd.models.hf import is_hf_model, save_hf_directory
from tinykd.models.qat import is_pt2e
from tinykd.pipeline import needs_teacher, plain_student
from tinykd.recipes import Recipe, dump_recipe, load_recipe
from tinykd.report import format_table, report_markdown
from tinykd.run_report import environment, run_facts, write_page
from tinykd.rundir import RunResult, check_resume_dir, checkpoint_bytes, prepare_run_dir, run_recipe_file

__all__ = ["RunResult", "check_mode", "fill_teacher_cache", "run"]


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
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    check_mode(recipe, mode)
    check_trackers(recipe.runtime.log_with)  # before any work: a tracker asked for but not installed is one line
    start = time.perf_counter()
    parts = assemble(recipe)
    engine, distiller = parts.engine, parts.distiller
    assert distiller is not None
    needed = checkpoint_bytes(distiller, parts.student, recipe)
    run_dir = engine.on_main(
        lambda: check_resume_dir(resume, recipe, out, overwrite, needed) if resume is not None
        else prepare_run_dir(out, recipe.name, overwrite, dry_run, needed)
    )  # fmt: skip
    if dry_run:
        if engine.is_main:
            print(f"tinykd: dry run of {recipe.name}: recipe, data ({len(parts.data.train)} train {parts.data.unit}), "
                  f"models and loss terms are valid; loss = {distiller.formula()}; would write to {run_dir}")
        return RunResult(run_dir, {"dry_run": True, "loss": distiller.formula()}, parts.student)
    meta = parts.checkpoint_meta()
    fit = train(parts, run_dir, meta, resumed=resume is not None)
    models = trained_models(parts, fit, meta)
    test_loader = parts.test_loader()
    rows = [test_row(parts, role, model, meta, test_loader) for role, model in models.items()]
    if recipe.quantize is not None and engine.device.type != "xla":
        from tinykd.compress.qat_row import qat_row

        rows.append(qat_row(parts, test_loader, meta, run_dir, parts.timing_input()))
    metrics = run_metrics(parts, fit, rows, time.perf_counter() - start)
    student = engine.accelerator.unwrap_model(parts.student)
    if engine.is_main:
        if is_hf_model(student):  # the best student as a Hugging Face directory
            save_hf_directory(student, run_dir / "model", parts.data.tokenizer, parts.data.classes)
            metrics["hf_model"] = str(run_dir / "model")
        write_reports(parts, run_dir, metrics, models)
    return RunResult(run_dir, metrics, student)


def train(parts: Assembly, run_dir: Path, meta: CheckpointMeta, resumed: bool) -> FitResult:
    """The training phase: the folder's first files, then `Engine.fit`; the teacher cache is kept, even when the
    run stops."""
    engine, recipe, data, distiller = parts.engine, parts.recipe, parts.data, parts.distiller
    assert distiller is not None
    if engine.is_main and not resumed:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    if engine.is_main:
        data.save_tokenizer(run_dir)
    cache = parts.open_cache()
    train_loader, val_loader = parts.train_loader(), parts.eval_loader("val")
    if engine.is_main:
        verb = "distilling" if parts.teacher is not None else "training"
        procs = engine.accelerator.num_processes
        print(f"tinykd: {recipe.name}: {verb} {meta.model} on {recipe.data.name} ({len(data.train)} train "
              f"{parts.data.unit}) on {engine.describe()}; global batch {recipe.data.batch_size * procs} "
              f"({recipe.data.batch_size} per process x {procs}), lr {recipe.train.optimizer.lr:g} (as given, "
              f"not scaled); loss = {distiller.formula()}")
    try:
        fit = engine.fit(distiller, parts.student, parts.task, train_loader, val_loader, recipe.train, run_dir,
                         save=lambda model, path: save_model(model, path, meta), resume=resumed)  # fmt: skip
    except RunInterrupted as stop:
        command = "distill" if parts.teacher is not None else "train"
        stop.args = (f"{stop}; resume with: tinykd {command} --resume {run_dir}",)
        raise
    finally:
        if cache is not None:  # what the teacher computed is kept, even when the run stops
            cache.flush()
    if cache is not None and engine.is_main:
        print(f"tinykd: {cache.summary()}")
    return fit


def trained_models(parts: Assembly, fit: FitResult, meta: CheckpointMeta) -> dict[str, nn.Module]:
    """The models the report tests, by role: the best student (its fp32 weights, for a QAT student) and the teacher
    as it ships (fp32, whatever format it ran in during distillation)."""
    engine, teacher, student = parts.engine, parts.teacher, parts.student
    assert parts.distiller is not None
    if isinstance(teacher, TeacherEnsemble):
        teacher.full_precision()
    elif teacher is not None and parts.distiller.teacher_dtype is not None:
        teacher.float()
    if fit.best_checkpoint is not None:
        load_weights(engine.accelerator.unwrap_model(student), fit.best_checkpoint, meta.model)
    trained = student
    if is_pt2e(engine.accelerator.unwrap_model(student)):  # the report's student: its fp32 weights, a plain model
        trained = plain_student(parts.recipe, parts.data, engine.accelerator.unwrap_model(student))
        trained = trained.to(engine.device)
    return {"model": trained} if teacher is None else {"teacher": teacher, "student": trained}


def test_row(parts: Assembly, role: str, model: nn.Module, meta: CheckpointMeta, test_loader: Any) -> dict[str, Any]:
    """One model's row of the report: its scores on the test set, then (main process) its measurements."""
    engine, recipe, task = parts.engine, parts.recipe, parts.task
    name = meta.model if role != "teacher" else " + ".join(spec.name for spec in recipe.teacher_specs)
    row: dict[str, Any] = {"role": role, "model": name}
    if model is not parts.student and role != "teacher":  # the QAT-trained weights without their quantizers
        row["format"] = "pytorch fp32 (QAT weights, unquantized)"
    scores = engine.evaluate(model, test_loader, task)
    row.update({f"test_{metric}": scores[metric] for metric in task.report_metrics})
    plain = engine.accelerator.unwrap_model(model)
    if task.scores_generations and recipe.measure.generate_samples and engine.is_main \
            and engine.device.type != "xla":  # fmt: skip  # decoding is host-driven, a graph per length
        generated = seq2seq_scores(plain, parts.data.test, recipe.measure.generate_samples,
                                   recipe.data.eval_batch_size)  # fmt: skip
        row.update(test_exact_match=generated["exact_match"], test_rouge_l=generated["rouge_l"])
    if recipe.measure.enabled and engine.is_main:
        m = recipe.measure
        row.update(measure_model(plain, parts.timing_input(), m.latency_repeats, m.throughput_batch,
                                 m.threads).as_dict())  # fmt: skip
        if task.generative:
            row.update(generation_speed_row(plain, prompts(parts.data.test, 1)[0], m.new_tokens, m.threads))
    return row


def run_metrics(parts: Assembly, fit: FitResult, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """report.json's contents: the run's settings, its training, and the rows of the models it tested."""
    recipe, engine, data, distiller, cache = parts.recipe, parts.engine, parts.data, parts.distiller, parts.cache
    assert distiller is not None
    metrics = {
        "name": recipe.name, "dataset": recipe.data.name, "loss": distiller.formula(), "epochs": recipe.train.epochs,
        "best_val_accuracy": fit.best_accuracy, "best_epoch": fit.best_epoch,
        "train_seconds": round(fit.seconds, 2), "train_samples_per_s": round(fit.samples_per_second, 1),
        "total_seconds": round(seconds, 2), "device": str(engine.device),
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
    metrics.update(data.report_fields(recipe.measure.sequence_length))
    if data.classes:
        metrics["classes"] = list(data.classes)
    return metrics


def write_reports(parts: Assembly, run_dir: Path, metrics: dict[str, Any], models: dict[str, nn.Module]) -> None:
    """report.json, report.md and report.html in the run folder, and the table on the terminal (main process)."""
    (run_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    name, rows = parts.recipe.name, metrics["models"]
    (run_dir / "report.md").write_text(report_markdown(name, run_facts(metrics), rows))
    write_page(parts.engine, models, parts.data, parts.task, parts.recipe.data.eval_batch_size, run_dir)
    print(format_table(rows, title=f"{name}: test set"))
    print(f"run folder: {run_dir}")


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
    parts = assemble(recipe)
    engine, distiller, cache = parts.engine, parts.distiller, parts.open_cache()
    assert cache is not None and distiller is not None
    before = len(cache)

    def fill(inputs: Any) -> None:
        if inputs.teacher is None and cache.read_only:
            taps = ", ".join(cache.manifest["taps"])
            raise TinykdError(f"teacher cache {cache.folder} holds more teacher taps ({taps}) than this recipe's terms "
                              "read, and lacks some of its batches: fill it with the recipe that started it, or give "
                              "an empty folder")  # fmt: skip
        if inputs.teacher is None:  # not cached yet
            distiller.fill_cache(inputs)

    engine.replay(distiller, parts.train_loader(), recipe.train, fill)  # fit's batches, device, format, autocast
    cache.flush()
    seconds = time.perf_counter() - start
    stats = {"folder": str(cache.folder), "epochs": recipe.train.epochs, "batches_added": len(cache) - before,
             "batches": len(cache), "bytes": cache.size_bytes(), "seconds": round(seconds, 2),
             "format": cache.format}  # fmt: skip
    if engine.is_main:
        per_epoch = stats["bytes"] / max(recipe.train.epochs, 1) / 2**20
        print(f"tinykd: {cache.summary()}; filled in {seconds:.1f} s, {per_epoch:.2f} MiB per epoch")
    return stats


def check_mode(recipe: Recipe, mode: str) -> None:
    if mode == "distill" and not recipe.teacher_specs:
        raise TinykdError("tinykd distill needs a 'teacher' section (or 'teachers', a list) in the recipe (name and "
                          "checkpoint)")  # fmt: skip
    if mode == "distill" and not needs_teacher(recipe):
        raise TinykdError("tinykd distill: no loss term uses the teacher; add e.g. kd: {weight: 0.9, temperature: 4}")
    if mode == "train" and needs_teacher(recipe):
        raise TinykdError("tinykd train trains without a teacher, but the recipe has teacher loss terms; "
                          "use tinykd distill")  # fmt: skip
