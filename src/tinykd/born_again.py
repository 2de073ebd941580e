"""Born-again distillation (Furlanello et al. 2018), `tinykd distill --generations N`: the same student
retrained from scratch, each generation taught by the one before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinykd.errors import TinykdError
from tinykd.recipes import Recipe, load_recipe
from tinykd.recipes.schema import ModelSpec
from tinykd.run import RunResult, check_mode, run


def run_born_again(recipe: Recipe | str | Path | dict[str, Any], generations: int, out: str | Path | None = None,
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
    check_mode(recipe, "distill")
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
