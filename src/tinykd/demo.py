"""`tinykd demo`: the whole story in a few minutes of CPU, on images (Fashion-MNIST) or text (SST-2).

A teacher (shipped; made by the project's own recipes), a much smaller student trained from scratch, the
same student distilled from the teacher with the same budget, and that student quantized to int8 ONNX
(ONNX Runtime: static QDQ for images, dynamic for text); then one table of accuracy, size, MACs, latency and
throughput, teacher beside students. The teacher is also exported to fp32 ONNX, so that the int8 student's
speed-up is given in the same runtime as well as against the teacher in PyTorch eager.

On SST-2 with the pretrained MiniLM in the Hugging Face cache, the teacher is that model fine-tuned here (as users
start), and the student is made from it: SST-2's vocabulary, 4 of its layers, a third of its width, its weights
selected from the teacher's (`tinykd shrink`); "scratch" is then that same student trained on the labels alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tinykd.compress.quantize import export_for_demo, quantize_for_demo
from tinykd.errors import TinykdError
from tinykd.html_report import write_story_page
from tinykd.recipes import load_recipe
from tinykd.report import format_table, ratio, rows_markdown
from tinykd.run import run
from tinykd.rundir import prepare_run_dir, run_recipe_file


@dataclass(frozen=True)
class Demo:
    """One demo: its recipes (teacher ones in order: a pre-training may come first) and the shipped teacher."""

    title: str
    teacher_recipes: tuple[str, ...]
    scratch_recipe: str
    distill_recipe: str
    shipped: str  # under recipes/builtin/weights: a checkpoint file or a run folder
    teacher_minutes: int  # what training the teacher takes here, about, on 2 CPU cores
    edge_goal: float  # the int8 student's speed-up over the fp32 teacher at batch 1, both in ONNX Runtime
    text: bool = False
    pretrained: str | None = None  # a hub id the teacher is fine-tuned from: this demo runs when it is cached
    teacher_budget: tuple[str, ...] = ()  # the teacher's recipe settings here (a demo, not a benchmark)
    tiny: dict[str, Any] | None = None  # the student made from the teacher: `tinykd shrink` layers and widths


# The tiny SST-2 student (sst2-minilm-tiny's comment gives the same two tinykd shrink steps): SST-2's vocabulary,
# 4 of MiniLM's 6 layers, a third of its width; 2.17M parameters against the teacher's 22.7M.
MINILM_TINY = {"layers": "0,2,3,5", "widths": {"hidden_size": 128, "intermediate_size": 384, "heads": None,
                                               "positions": 64}}  # fmt: skip
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DEMOS = {
    "fmnist": Demo("Fashion-MNIST", ("fmnist-teacher",), "fmnist-student", "fmnist-distill",
                   "fmnist-teacher.safetensors", 30, 20.0),
    "sst2": Demo("SST-2", ("sst2-pretrain", "sst2-teacher"), "sst2-student", "sst2-distill", "sst2-teacher", 180,
                 3.0, text=True),
    "sst2-minilm": Demo("SST-2, pretrained MiniLM teacher", ("sst2-minilm-teacher",), "sst2-minilm-tiny-ce",
                        "sst2-minilm-tiny", "", 16, 10.0, text=True, pretrained=MINILM,
                        teacher_budget=("train.epochs=1",), tiny=MINILM_TINY),
}  # fmt: skip
# the demo's student epochs where they are not the recipe's: the tiny SST-2 students' 2 epochs (bench/) would take
# the pretrained demo past 45 minutes on 2 cores (teacher epoch about 22 min, a KD epoch about 10)
STUDENT_EPOCHS = {"sst2-minilm": 1}
TEACHER_RECIPE, SCRATCH_RECIPE, DISTILL_RECIPE = "fmnist-teacher", "fmnist-student", "fmnist-distill"  # bench/


def shipped_teacher(task: str = "fmnist") -> Path:
    """The teacher that ships inside the package (see README: how to rebuild it)."""
    return Path(str(resources.files("tinykd.recipes") / "builtin" / "weights" / DEMOS[task].shipped))


def run_demo(
    out: str | Path | None = None,
    overwrite: bool = False,
    epochs: int | None = None,
    retrain_teacher: bool = False,
    overrides: list[str] | None = None,
    task: str = "fmnist",
) -> dict[str, Any]:
    """Run teacher (reused or trained), scratch student, distilled student; print and save the comparison.

    `overrides` (`--set`) apply to both student runs, e.g. `runtime.device=cuda`.
    """
    if task not in DEMOS or task == "sst2-minilm":
        raise TinykdError(f"unknown demo task '{task}'; tasks: fmnist, sst2")
    if task == "sst2":  # the pretrained teacher where its weights are there (make pretrained), as users start
        pretrained = DEMOS["sst2-minilm"].pretrained
        task = "sst2-minilm" if pretrained and _cached(pretrained) else task
        if task == "sst2":
            print(f"tinykd demo: {pretrained} is not in the Hugging Face cache (make pretrained puts it there): the "
                  "teacher is trained from scratch instead")  # fmt: skip
    demo = DEMOS[task]
    start = time.perf_counter()
    run_dir = prepare_run_dir(out, f"demo-{task}" if task != "fmnist" else "demo", overwrite)
    epochs = epochs or STUDENT_EPOCHS.get(task)
    budget = [*(overrides or []), *([f"train.epochs={epochs}"] if epochs else [])]
    teacher = shipped_teacher(task) if demo.shipped else None
    teacher_run = None
    if retrain_teacher or teacher is None or not teacher.exists():
        print(f"tinykd demo: training the teacher ({' then '.join(demo.teacher_recipes)}); this takes about "
              f"{demo.teacher_minutes} min on 2 CPU cores")  # fmt: skip
        previous: Path | None = None
        for name in demo.teacher_recipes:  # a pre-training run hands its Hugging Face directory to the next
            extra = [f"model.name=hf:{previous / 'model'}"] if previous is not None else []
            teacher_run = run(load_recipe(name, [*(overrides or []), *demo.teacher_budget, *extra]), run_dir / name,
                              mode="train")  # fmt: skip
            previous = teacher_run.run_dir
        teacher = previous  # type: ignore[assignment]
    assert teacher is not None
    if demo.tiny is not None:
        scratch_settings, distill_settings = _tiny_student(teacher.resolve(), run_dir, demo.tiny)
    else:
        scratch_settings = [f"data.tokenizer={teacher.resolve() / 'tokenizer'}"] if demo.text else []
        distill_settings = [f"teacher.checkpoint={teacher.resolve()}"]
    scratch = run(load_recipe(demo.scratch_recipe, [*budget, *scratch_settings]), run_dir / "scratch", mode="train")
    distill_recipe = load_recipe(demo.distill_recipe, [*budget, *distill_settings])
    distilled = run(distill_recipe, run_dir / "distill", mode="distill")

    int8_row = quantize_for_demo(distilled.student_checkpoint, run_dir / "student.int8.onnx")
    # the same timing settings as the int8 row; the test set as the teacher's own recipe reads it (its tokenizer)
    own = demo.tiny is not None and teacher_run is not None
    teacher_recipe = load_recipe(run_recipe_file(teacher)) if own else distill_recipe
    teacher_onnx = export_for_demo(teacher, run_dir / "teacher.onnx", "teacher (onnx fp32)", teacher_recipe)
    distill_rows = distilled.metrics["models"]
    if own:  # the teacher as the user holds it (whole vocabulary), as its own run measured it
        distill_rows = [teacher_run.metrics["models"][0], distill_rows[1]]
    rows = _rows(distill_rows, teacher_onnx, scratch.metrics["models"][0], int8_row)
    rows += _phone_rows(teacher, distilled.student_checkpoint, run_dir, teacher_recipe, distill_recipe, rows[0])
    summary, story = _story(demo, rows, time.perf_counter() - start)
    summary.update(teacher_checkpoint=str(teacher), runs={"scratch": str(scratch.run_dir),
                   "distill": str(distilled.run_dir), "int8": int8_row["path"], "teacher_onnx": teacher_onnx["path"]})
    summary["int8_vs_teacher"] = summary.pop("int8_vs_teacher")  # last, as report.json always had it
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "report.md").write_text(f"# tinykd demo: {demo.title}\n\n{rows_markdown(rows)}\n\n{story}\n")
    page = write_story_page(run_dir / "report.html", f"tinykd demo: {demo.title}", story, rows,
                            [distilled.run_dir, scratch.run_dir])  # fmt: skip
    print(format_table(rows, title=f"tinykd demo: {demo.title} test set (CPU)"))
    print(story)
    print(f"demo folder: {run_dir}; the whole story on one page: {page}")
    return summary


def _cached(repo_id: str) -> bool:
    from tinykd.hub import is_cached

    return is_cached(repo_id)


def _tiny_student(teacher: Path, run_dir: Path, shape: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The student made from the trained teacher as the tiny recipes' comment says (the teacher with the training
    texts' vocabulary, then the narrow student selected from it): the settings that point both student runs at
    them."""
    from tinykd.compress.shrink import shrink_command
    from tinykd.data.datasets import sst2_train_file

    vocab, init = run_dir / "teacher-sst2vocab", run_dir / "student-init"
    report = shrink_command(teacher, "all", vocab, overwrite=True, vocabulary=sst2_train_file())
    shrink_command(vocab, shape["layers"], init, overwrite=True, widths=shape["widths"])
    v = report["vocabulary"]
    print(f"tinykd demo: the student: {v['tokens_before']:,} -> {v['tokens_after']:,} tokens (SST-2's training "
          f"texts), layers {shape['layers']} of the teacher at widths {shape['widths']}")  # fmt: skip
    scratch = [f"data.tokenizer={vocab}", f"model.name=hf:{init}"]
    distill = [f"data.tokenizer={vocab}", f"data.text_augment.model={vocab}", f"teacher.name=hf:{vocab}",
               f"student.name=hf:{init}"]  # fmt: skip
    return scratch, distill


def _rows(distill_rows: list[dict[str, Any]], teacher_onnx: dict[str, Any], scratch_row: dict[str, Any],
          int8_row: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """Teacher (PyTorch, ONNX Runtime), scratch student, distilled student and int8 student, with their ratios
    against the teacher in PyTorch eager and, for the speed-up, also in the row's own runtime."""
    teacher_row, distilled_row = distill_rows
    rows = [
        {**teacher_row, "role": "teacher", "format": "pytorch fp32"},
        teacher_onnx,
        {**scratch_row, "role": "student (scratch)", "format": "pytorch fp32"},
        {**distilled_row, "role": "student (distilled)", "format": "pytorch fp32"},
        {**int8_row, "role": "student (int8 onnx)"},
    ]
    for row in rows:
        row["compression"] = teacher_row["params"] / row["params"] if "params" in row else None
        row["speedup"] = ratio(teacher_row, row, "latency_ms_p50")  # against the teacher in PyTorch eager
        same = teacher_onnx if row["format"].startswith("onnx") else teacher_row
        row["speedup_same_runtime"] = ratio(same, row, "latency_ms_p50")
    return rows


def _phone_rows(teacher: Path, student: Path, run_dir: Path, teacher_recipe: Any, student_recipe: Any,
                eager: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """The teacher (fp32) and the distilled student (int8) in ExecuTorch on XNNPACK, the runtime phones run
    PyTorch models in, when it is installed; the speed-up in that runtime too."""
    from tinykd.compress.mobile import available, row_for_demo

    if not available("executorch"):
        print("tinykd demo: ExecuTorch is not installed (pip install 'tinykd[executorch]'): no phone-runtime rows")
        return []
    try:
        teacher_row = row_for_demo(teacher, run_dir / "teacher.pte", "teacher (executorch fp32)", teacher_recipe)
        student_row = row_for_demo(student, run_dir / "student.int8.pte", "student (int8 executorch)",
                                   student_recipe, precision="int8")  # fmt: skip
    except TinykdError as exc:  # a file that failed its check: said, and the trained runs are kept
        print(f"tinykd demo: no ExecuTorch rows: {exc}")
        return []
    for row in (teacher_row, student_row):
        row["compression"] = eager["params"] / row["params"] if row.get("params") else None
        row["speedup"] = ratio(eager, row, "latency_ms_p50")  # against the teacher in PyTorch eager
        row["speedup_same_runtime"] = ratio(teacher_row, row, "latency_ms_p50")
    return [teacher_row, student_row]


def _story(demo: Demo, rows: list[dict[str, Any]], seconds: float) -> tuple[dict[str, Any], str]:
    """The summary (report.json) and the story told under the table: what distillation gained, how the int8
    student compares with the teacher in the same runtime, and whether the edge goal was met."""
    teacher_row, teacher_onnx, scratch_row, distilled_row, int8 = rows[:5]
    gain = distilled_row["test_accuracy"] - scratch_row["test_accuracy"]
    summary: dict[str, Any] = {
        "rows": rows,
        "distillation_gain_points": round(100 * gain, 2),
        "student_vs_teacher": distilled_row["test_accuracy"] / teacher_row["test_accuracy"],
        "seconds": round(seconds, 1),
    }
    story = (
        f"Distillation gain: {100 * gain:+.2f} points of test accuracy (same student, same budget); "
        f"the distilled student keeps {summary['student_vs_teacher']:.1%} of the teacher's accuracy with "
        f"{distilled_row['compression']:.0f}x fewer parameters. Wall time {seconds:.0f} s."
    )
    same_runtime = int8["speedup_same_runtime"]
    summary["int8_vs_teacher"] = {
        "faster_b1_same_runtime": same_runtime, "faster_b1_vs_eager": int8["speedup"],
        "smaller": teacher_onnx["size_bytes"] / int8["size_bytes"],
        "edge_goal_same_runtime": demo.edge_goal, "edge_goal_met": same_runtime >= demo.edge_goal,
    }  # fmt: skip
    eager = f", {int8['speedup']:.1f}x against the teacher in PyTorch eager" if int8["speedup"] else ""
    verdict = "met" if summary["int8_vs_teacher"]["edge_goal_met"] else "not met yet"
    story += (f" The int8 student is {same_runtime:.1f}x faster at batch 1 than the teacher in the same runtime (ONNX "
              f"Runtime, fp32){eager}, and {summary['int8_vs_teacher']['smaller']:.0f}x smaller on disk. Edge goal: "
              f">= {demo.edge_goal:.0f}x in the same runtime: {verdict}.")
    if len(rows) == 7:  # ExecuTorch's rows
        phone_teacher, phone_student = rows[5:]
        faster = phone_student["speedup_same_runtime"]
        summary["executorch"] = {"faster_b1_same_runtime": faster,
                                 "smaller": phone_teacher["size_bytes"] / phone_student["size_bytes"]}  # fmt: skip
        story += (f" In ExecuTorch (XNNPACK, the phones' runtime) the int8 student is {faster:.1f}x faster at batch 1 "
                  f"than the fp32 teacher and {summary['executorch']['smaller']:.0f}x smaller.")  # fmt: skip
    return summary, story
