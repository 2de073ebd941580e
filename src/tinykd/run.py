"""`tinykd.run(recipe)`: a whole run from a recipe to a folder of results.

The run folder holds what a user needs to inspect, reproduce and reuse a run:

    recipe.yaml          the resolved recipe (defaults included)
    metrics.jsonl        one JSON object per log interval and per epoch
    checkpoints/         best.safetensors and last.safetensors: the student alone
    checkpoints/resume/  the newest full training states (`--resume RUN` continues from the last one)
    report.json, report.md   test accuracy and measurements, teacher beside student
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tinykd.data import DataBundle, build_datasets
from tinykd.distill import Distiller
from tinykd.engine import Engine, make_loader
from tinykd.errors import RunInterrupted, TinykdError
from tinykd.measure import measure_model
from tinykd.models import create_model
from tinykd.models.checkpoint import load_weights, save_model
from tinykd.recipes import Recipe, dump_recipe, load_recipe
from tinykd.recipes.schema import ModelSpec
from tinykd.report import format_table, rows_markdown


@dataclass
class RunResult:
    """What a run produced: its folder and its headline numbers."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the trained student, best checkpoint loaded

    @property
    def student_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.safetensors"


def prepare_run_dir(
    out: str | Path | None, name: str, overwrite: bool = False, dry_run: bool = False, needed_bytes: int = 0
) -> Path:
    """Make the run folder; refuse a non-empty one unless `overwrite`; check that it is writable, and that its disk
    has `needed_bytes` free, before training.

    With `dry_run`, only check: nothing is created or removed.
    """
    run_dir = Path(out) if out else Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and not run_dir.is_dir():
        raise TinykdError(f"run folder {run_dir} exists and is a file; choose another --out")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if occupied and not overwrite:
        raise TinykdError(
            f"run folder {run_dir} already exists and is not empty; choose another --out or pass --overwrite"
        )
    check_free_space(run_dir, needed_bytes)  # before anything is removed
    if occupied and not dry_run:
        shutil.rmtree(run_dir)
    if dry_run:
        existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise TinykdError(f"cannot write to run folder {run_dir}: {existing} is not writable")
        return run_dir
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as exc:
        raise TinykdError(f"cannot write to run folder {run_dir}: {exc.strerror or exc}") from None
    return run_dir


# What may differ when a run is resumed: where and how fast it runs, not what it computes.
RESUME_MAY_CHANGE = ("runtime", "measure", "data.root", "data.download", "data.num_workers", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.max_skipped_steps")  # fmt: skip


def run_recipe_file(run_dir: str | Path) -> Path:
    """The recipe a run folder was started with; a folder that is not a run says so."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        what = "does not exist" if not Path(run_dir).exists() else "is not a tinykd run folder (no recipe.yaml)"
        raise TinykdError(f"cannot resume {run_dir}: it {what}")
    return path


def check_resume_dir(
    resume: str | Path, recipe: Recipe, out: str | Path | None, overwrite: bool, needed_bytes: int = 0
) -> Path:
    """The run folder to continue: it must be a tinykd run of the same recipe, unfinished, writable, with room."""
    run_dir = Path(resume)
    if overwrite:
        raise TinykdError("--resume continues a run and --overwrite starts it again; give one of them")
    if out is not None and Path(out).absolute() != run_dir.absolute():
        raise TinykdError(f"--resume writes into the run's own folder {run_dir}; drop --out {out}")
    saved_file = run_recipe_file(run_dir)
    if (run_dir / "report.json").is_file():
        raise TinykdError(f"{run_dir} already finished (it has report.json): nothing to resume")
    changes = recipe_changes(load_recipe(saved_file), recipe)
    if changes:
        shown = "; ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise TinykdError(f"the recipe differs from the one {run_dir} was started with: {shown}; resume with the "
                          f"same recipe (only {', '.join(RESUME_MAY_CHANGE)} may change)")  # fmt: skip
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise TinykdError(f"cannot write to run folder {run_dir}")
    check_free_space(run_dir, needed_bytes)
    return run_dir


def recipe_changes(saved: Recipe, given: Recipe) -> list[str]:
    """`key: old -> new` for every field that differs, except those a resume may change."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    old, new = flat(saved.model_dump(mode="json")), flat(given.model_dump(mode="json"))
    keys = sorted(set(old) | set(new))
    may_change = [k for k in keys if any(k == a or k.startswith(a + ".") for a in RESUME_MAY_CHANGE)]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k) and k not in may_change]


def check_free_space(run_dir: Path, needed: int) -> None:
    """Refuse to start when the run folder's disk cannot hold the checkpoints the run will write."""
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise TinykdError(
            f"the disk of run folder {run_dir} has {free / 2**20:.1f} MiB free, but this run's checkpoints need "
            f"about {needed / 2**20:.1f} MiB; free space or choose another --out"
        )


def checkpoint_bytes(task: nn.Module, student: nn.Module, recipe: Recipe) -> int:
    """About what a run writes: `keep` resume states (weights + optimizer slots), best and last, and logs."""
    weights = sum(t.numel() * t.element_size() for t in task.state_dict().values())
    student_bytes = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    opt = recipe.train.optimizer
    slots = 2 if opt.name == "adamw" else int(opt.momentum > 0)
    return recipe.train.keep_checkpoints * weights * (1 + slots) + 2 * student_bytes + 4 * 2**20


def build_data(recipe: Recipe, augment: bool | None = None) -> DataBundle:
    """The recipe's datasets and its seeded validation split."""
    d = recipe.data
    augment = d.augment if augment is None else augment
    return build_datasets(d.name, d.root, d.download, augment, d.val_size, d.train_subset, recipe.seed, d.image_size)


def build_model(spec: ModelSpec, data: DataBundle, role: str) -> nn.Module:
    """Create a model for the data's classes and channels (kwargs may override them); load its checkpoint."""
    kwargs = {"num_classes": data.num_classes, "in_channels": data.in_channels, **spec.kwargs}
    model = create_model(spec.name, **kwargs)
    if spec.checkpoint:
        load_weights(model, spec.checkpoint, spec.name)
    return model


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
    start = time.perf_counter()
    engine = Engine(recipe.runtime)  # first: it knows the ranks, and only the main process touches the folder
    engine.seed(recipe.seed)

    data = build_data(recipe)
    student = build_model(recipe.trained, data, "student")
    teacher = build_model(recipe.teacher, data, "teacher") if recipe.teacher and recipe.needs_teacher() else None
    if teacher is not None and not (recipe.teacher.checkpoint or recipe.teacher.kwargs.get("pretrained")):  # type: ignore[union-attr]
        raise TinykdError("teacher.checkpoint is not set: a teacher needs trained weights (tinykd train makes them)")
    probe_inputs, _ = next(iter(make_loader(data.train, 4, train=False)))
    teacher_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.teacher.precision] \
        if recipe.teacher else None  # fmt: skip
    distiller = Distiller(teacher, student, recipe.build_loss_terms(), probe_inputs, teacher_dtype)
    needed = checkpoint_bytes(distiller, student, recipe)
    run_dir = engine.on_main(
        lambda: check_resume_dir(resume, recipe, out, overwrite, needed) if resume is not None
        else prepare_run_dir(out, recipe.name, overwrite, dry_run, needed)
    )  # fmt: skip
    if dry_run:
        if engine.is_main:
            print(f"tinykd: dry run of {recipe.name}: recipe, data ({len(data.train)} train images), models and "
                  f"loss terms are valid; loss = {distiller.formula()}; would write to {run_dir}")  # fmt: skip
        return RunResult(run_dir, {"dry_run": True, "loss": distiller.formula()}, student)
    if engine.is_main and resume is None:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))

    train_loader = engine.loader(data.train, recipe.data.batch_size, True, recipe.data.num_workers, recipe.seed)
    val_loader = engine.loader(data.val, recipe.data.eval_batch_size, False) if data.val is not None else None
    meta = {"model": recipe.trained.name, "kwargs": recipe.trained.kwargs, "num_classes": data.num_classes,
            "in_channels": data.in_channels, "image_size": data.image_size, "classes": data.classes,
            "recipe": recipe.model_dump(mode="json")}  # fmt: skip
    if engine.is_main:
        verb = "distilling" if teacher is not None else "training"
        procs = engine.accelerator.num_processes
        print(f"tinykd: {recipe.name}: {verb} {recipe.trained.name} on {recipe.data.name} ({len(data.train)} train "
              f"images) on {engine.describe()}; global batch {recipe.data.batch_size * procs} "
              f"({recipe.data.batch_size} per process x {procs}), lr {recipe.train.optimizer.lr:g} (as given, "
              f"not scaled); loss = {distiller.formula()}")
    try:
        fit = engine.fit(distiller, student, train_loader, val_loader, recipe.train, run_dir,
                         save=lambda model, path: save_model(model, path, meta), resume=resume is not None)  # fmt: skip
    except RunInterrupted as stop:
        command = "distill" if teacher is not None else "train"
        stop.args = (f"{stop}; resume with: tinykd {command} --resume {run_dir}",)
        raise

    # The report: test accuracy of the best student (and of the teacher), then the measurements.
    if teacher is not None and teacher_dtype is not None:
        teacher.float()  # report the teacher as it ships (fp32), whatever format it ran in during distillation
    if fit.best_checkpoint is not None:
        load_weights(engine.accelerator.unwrap_model(student), fit.best_checkpoint, recipe.trained.name)
    test_loader = engine.accelerator.prepare(engine.loader(data.test, recipe.data.eval_batch_size, False))
    models = {"model": student} if teacher is None else {"teacher": teacher, "student": student}
    rows: list[dict[str, Any]] = []
    for role, model in models.items():
        spec = recipe.teacher if role == "teacher" else recipe.trained
        row: dict[str, Any] = {"role": role, "model": spec.name}  # type: ignore[union-attr]
        row["test_accuracy"] = engine.evaluate(model, test_loader)["accuracy"]
        if recipe.measure.enabled and engine.is_main:
            stats = measure_model(engine.accelerator.unwrap_model(model), probe_inputs[:1],
                                  recipe.measure.latency_repeats, recipe.measure.throughput_batch,
                                  recipe.measure.threads)  # fmt: skip
            row.update(stats.as_dict())
        rows.append(row)
    metrics = {
        "name": recipe.name, "dataset": recipe.data.name, "loss": distiller.formula(), "epochs": recipe.train.epochs,
        "best_val_accuracy": fit.best_accuracy, "best_epoch": fit.best_epoch,
        "train_seconds": round(fit.seconds, 2), "train_img_per_s": round(fit.images_per_second, 1),
        "total_seconds": round(time.perf_counter() - start, 2), "device": str(engine.device),
        "checkpoint": str(fit.best_checkpoint) if fit.best_checkpoint else None, "models": rows,
    }  # fmt: skip
    if recipe.train.nonfinite == "skip":
        metrics["skipped_steps"] = fit.skipped_steps
    if fit.xla is not None:
        metrics["xla"] = fit.xla
    if engine.is_main:
        (run_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (run_dir / "report.md").write_text(_report_markdown(metrics))
        print(format_table(rows, title=f"{recipe.name}: test set"))
        print(f"run folder: {run_dir}")
    return RunResult(run_dir, metrics, engine.accelerator.unwrap_model(student))


def _check_mode(recipe: Recipe, mode: str) -> None:
    if mode == "distill" and recipe.teacher is None:
        raise TinykdError("tinykd distill needs a 'teacher' section in the recipe (name and checkpoint)")
    if mode == "distill" and not recipe.needs_teacher():
        raise TinykdError("tinykd distill: no loss term uses the teacher; add e.g. kd: {weight: 0.9, temperature: 4}")
    if mode == "train" and recipe.needs_teacher():
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
        "",
        rows_markdown(metrics["models"]),
        "",
    ]
    return "\n".join(lines)
