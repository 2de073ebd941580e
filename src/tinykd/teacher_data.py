"""`tinykd generate`: a generative teacher's outputs for every training text, the data of sequence-level KD
(Kim & Rush 2016) that a student recipe then reads as `data.train`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tinykd.engine import Engine
from tinykd.errors import TinykdError
from tinykd.pipeline import build_data, build_model
from tinykd.recipes import Recipe, load_recipe
from tinykd.tasks import get_task


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
    if not get_task(recipe.data.task).generative:
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
    columns = (d.source_column or "text", d.target_column) if data.task.text_to_text else (d.text_column or "text", "")

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
