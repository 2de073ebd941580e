"""`tinykd demo`: the whole story on Fashion-MNIST in a few minutes of CPU.

A resnet8x4 teacher (1.23M parameters; shipped, trained by `tinykd train
fmnist-teacher`), a much smaller student trained from scratch, and the same
student distilled from the teacher with the same budget, and that student
quantized to int8 ONNX (static QDQ, ONNX Runtime); then one table of accuracy,
size, MACs, latency and throughput, teacher beside students.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from tinykd.compress.quantize import quantize_for_demo
from tinykd.recipes import load_recipe
from tinykd.report import format_table, rows_markdown
from tinykd.run import prepare_run_dir, run

TEACHER_RECIPE = "fmnist-teacher"
SCRATCH_RECIPE = "fmnist-student"
DISTILL_RECIPE = "fmnist-distill"


def shipped_teacher() -> Path:
    """The teacher checkpoint that ships inside the package (see README: how to rebuild it)."""
    return Path(str(resources.files("tinykd.recipes") / "builtin" / "weights" / "fmnist-teacher.safetensors"))


def run_demo(
    out: str | Path | None = None,
    overwrite: bool = False,
    epochs: int | None = None,
    retrain_teacher: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run teacher (reused or trained), scratch student, distilled student; print and save the comparison.

    `overrides` (`--set`) apply to both student runs, e.g. `runtime.device=cuda`.
    """
    start = time.perf_counter()
    run_dir = prepare_run_dir(out, "demo", overwrite)
    budget = [*(overrides or []), *([f"train.epochs={epochs}"] if epochs else [])]
    teacher = shipped_teacher()
    if retrain_teacher or not teacher.is_file():
        print(f"tinykd demo: training the teacher ({TEACHER_RECIPE}); this takes about 30 min on 2 CPU cores")
        teacher = run(load_recipe(TEACHER_RECIPE, overrides), run_dir / "teacher", mode="train").student_checkpoint
    scratch = run(load_recipe(SCRATCH_RECIPE, budget), run_dir / "scratch", mode="train")
    distilled = run(load_recipe(DISTILL_RECIPE, [*budget, f"teacher.checkpoint={teacher.resolve()}"]),
                    run_dir / "distill", mode="distill")  # fmt: skip

    teacher_row, distilled_row = distilled.metrics["models"]
    int8_row = quantize_for_demo(distilled.student_checkpoint, run_dir / "student.int8.onnx")
    rows = [
        {**teacher_row, "role": "teacher", "format": "pytorch fp32"},
        {**scratch.metrics["models"][0], "role": "student (scratch)", "format": "pytorch fp32"},
        {**distilled_row, "role": "student (distilled)", "format": "pytorch fp32"},
        {**int8_row, "role": "student (int8 onnx)"},
    ]
    for row in rows:
        measured = "params" in row and "params" in teacher_row  # the int8 row is measured even with measure off
        row["compression"] = teacher_row["params"] / row["params"] if measured else None
        row["speedup"] = teacher_row["latency_ms_p50"] / row["latency_ms_p50"] if measured else None
    gain = distilled_row["test_accuracy"] - scratch.metrics["models"][0]["test_accuracy"]
    seconds = time.perf_counter() - start
    summary = {
        "rows": rows,
        "distillation_gain_points": round(100 * gain, 2),
        "student_vs_teacher": distilled_row["test_accuracy"] / teacher_row["test_accuracy"],
        "seconds": round(seconds, 1),
        "teacher_checkpoint": str(teacher),
        "runs": {"scratch": str(scratch.run_dir), "distill": str(distilled.run_dir), "int8": int8_row["path"]},
    }
    text = (
        f"Distillation gain: {100 * gain:+.2f} points of test accuracy (same student, same budget); "
        f"the distilled student keeps {summary['student_vs_teacher']:.1%} of the teacher's accuracy with "
        f"{rows[2]['compression']:.0f}x fewer parameters. Wall time {seconds:.0f} s."
    )
    if "latency_ms_p50" in teacher_row and "size_bytes" in int8_row:
        summary["int8_vs_teacher"] = {"faster_b1": teacher_row["latency_ms_p50"] / int8_row["latency_ms_p50"],
                                      "smaller": teacher_row["size_bytes"] / int8_row["size_bytes"]}  # fmt: skip
        text += (f" The int8 student is {summary['int8_vs_teacher']['faster_b1']:.1f}x faster at batch 1 and "
                 f"{summary['int8_vs_teacher']['smaller']:.0f}x smaller on disk than the teacher.")  # fmt: skip
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "report.md").write_text(f"# tinykd demo: Fashion-MNIST\n\n{rows_markdown(rows)}\n\n{text}\n")
    print(format_table(rows, title="tinykd demo: Fashion-MNIST test set (CPU, fp32, eager)"))
    print(text)
    print(f"demo folder: {run_dir}")
    return summary
