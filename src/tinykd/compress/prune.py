"""`tinykd prune`: structured channel pruning, then distillation from the teacher to win the accuracy back.

Pruning removes whole channels (torch-pruning follows the dependencies, residual additions included), so the
model really gets smaller and faster, unlike zeroed weights. Channels are ranked by the L2 norm of their
weights across the whole network (global pruning), and removed step by step until the target (a fraction of
the parameters or of the MACs) is reached; the classifier's outputs are never touched. One recipe stage then
trains the pruned student with the recipe's loss terms: with a teacher, that is distillation.

A pruned model no longer matches its constructor, so its checkpoint says `"pruned": true` and loading
rebuilds the original model and shrinks its layers to the saved shapes (`tinykd.models.checkpoint`).

The recipe section (`PruneSpec`, with the other sections in `tinykd.recipes.schema`):

    prune: {ratio: 0.5, target: params}
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError
from tinykd.recipes.schema import PruneSpec

MAX_LAYER_RATIO = 0.9  # no layer loses more than 90% of its channels (a layer with none left breaks the network)


def check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise TinykdError(f"the pruning ratio must be between 0 and 1 (exclusive), the fraction of the target to "
                          f"remove, e.g. 0.5; got {ratio:g}")  # fmt: skip


def make_spec(ratio: float | None = None, target: str | None = None, base: PruneSpec | None = None) -> PruneSpec:
    """A PruneSpec from command-line options over a recipe's section (options win)."""
    values = base.model_dump() if base is not None else {}
    if ratio is not None:
        check_ratio(ratio)
        values["ratio"] = ratio
    if target is not None:
        if target not in ("params", "macs"):
            raise TinykdError(f"--target must be params or macs, not '{target}'")
        values["target"] = target
    return PruneSpec(**values)


def classifier_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Linear (or 1x1 conv) layers that produce the logits: their outputs are the classes, never pruned."""
    with torch.no_grad():
        classes = model(example[:1]).shape[-1]
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    if not heads:
        heads = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == classes]
    return heads[-1:] if len(heads) > 1 else heads


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float = 0.5,
    target: str = "params",
    steps: int = 50,
    ignored_layers: list[nn.Module] | None = None,
) -> dict[str, Any]:
    """Remove channels of `model` in place until `ratio` of its params (or MACs) is gone; returns the figures."""
    import torch_pruning as tp

    from tinykd.measure import count_macs, count_params

    check_ratio(ratio)
    if target not in ("params", "macs"):
        raise TinykdError(f"the pruning target must be params or macs, not '{target}'")
    model.eval()  # tracing runs a forward pass: BatchNorm must not update its statistics
    example = example[:1]
    out_shape = tuple(model(example).shape)
    ignored = [*(ignored_layers or []), *classifier_layers(model, example)]

    def measure() -> dict[str, int]:
        return {"params": count_params(model), "macs": count_macs(model, example)}

    before = measure()
    goal = (1 - ratio) * before[target]
    pruner_cls = getattr(tp.pruner, "MetaPruner", None) or tp.pruner.BasePruner
    pruner = pruner_cls(model, example, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
                        pruning_ratio=MAX_LAYER_RATIO, max_pruning_ratio=MAX_LAYER_RATIO, iterative_steps=steps,
                        ignored_layers=ignored)  # fmt: skip
    done, now = 0, before
    start = time.perf_counter()
    while done < steps and now[target] > goal:
        pruner.step()
        done += 1
        now = measure()
    model.eval()
    with torch.no_grad():
        if tuple(model(example).shape) != out_shape:
            raise TinykdError(f"pruning changed the model's output shape from {out_shape}; it cannot be pruned")
    report = {"ratio": ratio, "target": target, "params_before": before["params"], "params_after": now["params"],
              "macs_before": before["macs"], "macs_after": now["macs"], "steps": done,
              "removed": 1 - now[target] / max(before[target], 1), "reached": now[target] <= goal,
              "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    if not report["reached"]:
        report["note"] = (f"removed {report['removed']:.1%} of the {target}, short of {ratio:.0%}: no layer may lose "
                          f"more than {MAX_LAYER_RATIO:.0%} of its channels")  # fmt: skip
    return report


def prune_recipe(
    source: str | Path,
    ratio: float | None = None,
    target: str | None = None,
    epochs: int | None = None,
    overrides: list[str] | None = None,
) -> tuple[Any, PruneSpec]:
    """The recipe of a prune run, and how much to prune.

    From a recipe (file or built-in name): as written; its `student.checkpoint` is the model to prune. From a
    checkpoint or run folder: the recipe that trained it, with that checkpoint as the student, a name ending
    in `-pruned`, and a short recovery (1 epoch, a tenth of the learning rate, cosine) unless overridden.
    """
    from tinykd.loading import is_checkpoint_source, recipe_from_checkpoint
    from tinykd.models.checkpoint import read_meta, resolve_checkpoint
    from tinykd.recipes import load_recipe

    if ratio is not None:
        check_ratio(ratio)
    if epochs is not None and epochs < 1:
        raise TinykdError(f"--epochs must be at least 1, not {epochs}")
    if is_checkpoint_source(source):
        path = resolve_checkpoint(source)
        meta = read_meta(path) if path.suffix == ".safetensors" else {}
        if "recipe" not in meta or "model" not in meta:
            raise TinykdError(f"{path} has no tinykd recipe in its metadata; give a recipe whose student.checkpoint "
                              "is this file")  # fmt: skip
        base = None

        def as_prune_run(data: dict[str, Any]) -> None:  # this checkpoint is the student, recovered briefly
            nonlocal base
            data.pop("model", None)
            data["student"] = {"name": meta["model"], "kwargs": meta.get("kwargs", {}),
                               "checkpoint": str(path.resolve())}  # fmt: skip
            data["name"] = f"{data.get('name', 'run')}-pruned"
            train = data.setdefault("train", {})
            optimizer = train.setdefault("optimizer", {})
            optimizer["lr"] = float(optimizer.get("lr", 0.1)) / 10
            train.update(epochs=1, schedule={"name": "cosine", "warmup_epochs": 0.0})
            section = data.pop("prune", None) or meta.get("prune")
            base = PruneSpec(**section) if section else None
            if base is not None:
                data["prune"] = base.model_dump()

        recipe = recipe_from_checkpoint(meta, path, overrides, edit=as_prune_run)
    else:
        recipe = load_recipe(str(source), overrides)
        base = recipe.prune
    spec = make_spec(ratio, target, base)
    if epochs is not None:
        recipe.train.epochs = epochs
    recipe.prune = spec
    if not recipe.trained.checkpoint:
        raise TinykdError("student.checkpoint is not set: tinykd prune prunes a trained model; set it to a run "
                          "folder or a .safetensors file")  # fmt: skip
    return recipe, spec


def prune_run(recipe: Any, spec: PruneSpec, out: str | Path | None = None, overwrite: bool = False) -> Any:
    """Prune the recipe's trained student, then train it with the recipe's loss terms; a run folder as `run`.

    The run's assembly with the trained checkpoint as its student, narrowed before the distiller joins it (the
    adapters of feature terms are sized on the pruned widths). Reports test accuracy, parameters and MACs before
    pruning, right after it, and after recovery.
    """
    from tinykd.assemble import assemble
    from tinykd.measure import measure_model
    from tinykd.models.checkpoint import load_weights, save_model
    from tinykd.pipeline import build_model
    from tinykd.recipes import dump_recipe
    from tinykd.rundir import RunResult, prepare_run_dir

    start = time.perf_counter()
    parts = assemble(recipe, join=False, student=lambda r, data, _: build_model(r.trained, data, "student"))
    engine, name, student = parts.engine, recipe.trained.name, parts.student
    run_dir = engine.on_main(lambda: prepare_run_dir(out, recipe.name, overwrite))
    if engine.is_main:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    example = parts.probe_inputs[:1]
    test_loader = parts.test_loader()

    def test_accuracy(model: nn.Module) -> float:
        accuracy = engine.evaluate(model.to(engine.device), test_loader, parts.task)["accuracy"]
        model.cpu()
        return accuracy

    def stats(model: nn.Module) -> dict[str, Any]:
        if not (recipe.measure.enabled and engine.is_main):
            return {}
        m = recipe.measure
        return measure_model(copy.deepcopy(model), example, m.latency_repeats, m.throughput_batch,
                             m.threads).as_dict()  # fmt: skip

    before = {"role": "before pruning", "model": name, "test_accuracy": test_accuracy(student), **stats(student)}
    if engine.is_main:
        print(f"tinykd: {recipe.name}: pruning {name} ({recipe.trained.checkpoint}) to remove {spec.ratio:.0%} of its "
              f"{spec.target}, test accuracy before {before['test_accuracy']:.2%}")  # fmt: skip
    pruning = prune_model(student.cpu(), example, spec.ratio, spec.target, spec.steps)
    pruned = {"role": "pruned", "model": name, "test_accuracy": test_accuracy(student)}
    distiller = parts.join()
    if engine.is_main:
        print(f"tinykd: pruned {pruning['params_before']:,} -> {pruning['params_after']:,} params, "
              f"{pruning['macs_before']:,} -> {pruning['macs_after']:,} MACs in {pruning['steps']} steps; test "
              f"accuracy {pruned['test_accuracy']:.2%}; recovering for {recipe.train.epochs} epoch(s), "
              f"loss = {distiller.formula()}")  # fmt: skip
        if pruning.get("note"):
            print(f"tinykd: note: {pruning['note']}")
    meta = parts.checkpoint_meta(pruned=True, prune=spec.model_dump(), pruned_from=recipe.trained.checkpoint)
    fit = engine.fit(distiller, student, parts.task, parts.train_loader(), parts.eval_loader("val"), recipe.train,
                     run_dir, save=lambda model, path: save_model(model, path, meta))  # fmt: skip
    student = engine.accelerator.unwrap_model(student)
    if fit.best_checkpoint is not None:
        load_weights(student, fit.best_checkpoint, name)
    recovered = {"role": "pruned + recovered", "model": name, "test_accuracy": test_accuracy(student)}
    after_stats = stats(student)
    pruned.update({**after_stats, "params": pruning["params_after"], "macs": pruning["macs_after"]})
    recovered.update(after_stats)
    rows = stage_rows([before, pruned, recovered])
    metrics = {
        "name": recipe.name, "dataset": recipe.data.name, "loss": distiller.formula(), "epochs": recipe.train.epochs,
        "prune": spec.model_dump(), "pruning": pruning, "pruned_from": recipe.trained.checkpoint,
        "best_val_accuracy": fit.best_accuracy, "best_epoch": fit.best_epoch,
        "train_seconds": round(fit.seconds, 2), "total_seconds": round(time.perf_counter() - start, 2),
        "device": str(engine.device), "checkpoint": str(fit.best_checkpoint) if fit.best_checkpoint else None,
        "models": rows,
    }  # fmt: skip
    if engine.is_main:
        write_prune_report(run_dir, metrics)
    return RunResult(run_dir, metrics, student)


def stage_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stages' rows with their compression and speed-up against the model before pruning."""
    before = rows[0]
    for row in rows:
        if "params" in row and "params" in before:
            row["compression"] = before["params"] / row["params"]
        if "latency_ms_p50" in row and "latency_ms_p50" in before:
            row["speedup"] = before["latency_ms_p50"] / row["latency_ms_p50"]
    return rows


def write_prune_report(run_dir: Path, metrics: dict[str, Any]) -> None:
    """report.json and report.md of a prune run, and its table on the terminal."""
    from tinykd.report import format_table, report_markdown

    rows = metrics["models"]
    (run_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "report.md").write_text(report_markdown(metrics["name"], prune_facts(metrics), rows))
    print(format_table(rows, title=f"{metrics['name']}: test set"))
    print(f"run folder: {run_dir}")


def prune_facts(metrics: dict[str, Any]) -> list[str]:
    """The lines of a prune run's report.md above its table."""
    p = metrics["pruning"]
    return [
        f"dataset: {metrics['dataset']}; pruned from: {metrics['pruned_from']}",
        f"pruning: remove {p['ratio']:.0%} of the {p['target']} (removed {p['removed']:.1%} in {p['steps']} "
        f"steps): {p['params_before']:,} -> {p['params_after']:,} params, {p['macs_before']:,} -> "
        f"{p['macs_after']:,} MACs",
        f"recovery: {metrics['epochs']} epoch(s), loss = {metrics['loss']}; {metrics['train_seconds']} s",
    ]


def prune_command(
    source: str | Path,
    ratio: float | None = None,
    target: str | None = None,
    epochs: int | None = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Any:
    """`tinykd prune`: a recipe, a checkpoint or a run folder in; a run folder with the pruned student out."""
    recipe, spec = prune_recipe(source, ratio, target, epochs, overrides)
    return prune_run(recipe, spec, out, overwrite)
