"""Text distillation on SST-2 (GLUE): teacher, students from scratch and distilled, over seeds, then the edge.

1. The teacher: masked-LM self-pre-training on the training sentences (`sst2-pretrain`), then fine-tuning
   (`sst2-teacher`); or an existing teacher run (`--teacher RUN`).
2. Per seed, two student shapes, each trained from scratch on the labels and distilled with the same budget:
   - `distilbert`: half the teacher's layers, started from them (`sst2-distill`; scratch: `sst2-student`);
   - `small`: at most a tenth of the teacher's parameters (`sst2-tinybert`'s narrow student; scratch: the same
     architecture on the labels alone).
3. The edge: the teacher and the best distilled DistilBERT-shaped student as fp32 ONNX, and that student as int8
   (ONNX Runtime dynamic), in the same runtime and threads: accuracy, size on disk, latency at batch 1 and
   sequence length 64.

    python bench/text_kd.py --data ../shared/data                      # everything (hours on 2 CPU cores)
    python bench/text_kd.py --data ../shared/data --teacher runs/sst2-teacher --seeds 0 1 2
    python bench/text_kd.py --data ../shared/data --teacher runs/sst2-teacher --augment runs/sst2-pretrain \
        --set-distilled loss_terms.ce.weight=0                          # TinyBERT's augmentation, teacher terms only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tinykd.compress.quantize import export_for_demo, quantize_model
from tinykd.recipes import load_recipe
from tinykd.run import run

STUDENTS = {  # name: (scratch recipe, distill recipe, overrides that make the scratch run the same architecture)
    "distilbert": ("sst2-student", "sst2-distill", []),
    "small": ("sst2-student", "sst2-tinybert", ["model.kwargs.config.hidden_size=48",
                                                 "model.kwargs.config.intermediate_size=192"]),
}


def accuracy(metrics: dict[str, Any], role: str = "model") -> float:
    return next(r["test_accuracy"] for r in metrics["models"] if r["role"] == role)


def run_once(recipe: Any, folder: Path, mode: str) -> dict[str, Any]:
    """A run's report; a folder that already holds a finished run is read, not trained again (reruns add seeds)."""
    report = folder / "report.json"
    if report.is_file():
        print(f"reusing {folder}", file=sys.stderr)
        return json.loads(report.read_text())
    return run(recipe, folder, mode=mode).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder with sst2/train.tsv and sst2/dev.tsv ($TINYKD_DATA)")
    parser.add_argument("--teacher", help="an existing sst2-teacher run folder (else pre-train and fine-tune one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--scratch-only", action="store_true",
                        help="only the students from scratch (they need the teacher's tokenizer, not the teacher): "
                             "run them while the teacher trains; a later run with the same --out reuses them")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every student")
    parser.add_argument("--augment", metavar="MLM",
                        help="TinyBERT's augmentation for the distilled students: words swapped for this masked LM's "
                             "guesses (the teacher's sst2-pretrain run); their folders end in -aug")  # fmt: skip
    parser.add_argument("--set-distilled", dest="distilled_overrides", action="append", default=[],
                        help="override for the distilled students only (e.g. loss_terms.ce.weight=0)")
    parser.add_argument("--out", default=f"runs/text-kd-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()

    import os

    os.environ["TINYKD_DATA"] = str(Path(args.data).resolve())
    out = Path(args.out)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    teacher = Path(args.teacher) if args.teacher else None
    if teacher is None:
        t0 = time.perf_counter()
        run(load_recipe("sst2-pretrain"), out / "sst2-pretrain", mode="train")
        timings["pretrain_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        finetune = [f"model.name=hf:{(out / 'sst2-pretrain' / 'model').resolve()}"]
        run(load_recipe("sst2-teacher", finetune), out / "sst2-teacher", mode="train")
        timings["finetune_s"] = time.perf_counter() - t0
        teacher = out / "sst2-teacher"
    teacher = teacher.resolve()
    tokenizer = teacher / "tokenizer"
    results: dict[str, dict[str, list[float]]] = {s: {"scratch": [], "distilled": []} for s in args.students}
    teacher_accuracy = None
    best: tuple[float, Path] | None = None
    for seed in args.seeds:
        common = [f"seed={seed}", "measure.enabled=false", f"data.tokenizer={tokenizer}", *args.overrides]
        for name in args.students:
            scratch_recipe, distill_recipe, shape = STUDENTS[name]
            scratch = run_once(load_recipe(scratch_recipe, [*common, *shape]), out / f"{name}-scratch-{seed}", "train")
            if args.scratch_only:
                print(f"seed {seed} {name}: scratch {accuracy(scratch):.2%}", file=sys.stderr)
                continue
            distilled_dir = out / f"{name}-distill-{seed}{'-aug' if args.augment else ''}"
            extra = [f"teacher.checkpoint={teacher}", *args.distilled_overrides]
            if args.augment:
                extra.append(f"data.text_augment.model={Path(args.augment).resolve()}")
            distilled = run_once(load_recipe(distill_recipe, [*common, *extra]), distilled_dir, "distill")
            teacher_accuracy = accuracy(distilled, "teacher")
            results[name]["scratch"].append(accuracy(scratch))
            results[name]["distilled"].append(accuracy(distilled, "student"))
            if name == "distilbert" and (best is None or results[name]["distilled"][-1] > best[0]):
                best = (results[name]["distilled"][-1], distilled_dir)
            print(f"seed {seed} {name}: scratch {results[name]['scratch'][-1]:.2%}  distilled "
                  f"{results[name]['distilled'][-1]:.2%}  (teacher {teacher_accuracy:.2%})", file=sys.stderr)

    if args.scratch_only:
        return

    def stats(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.2f}% (std {100 * std:.2f})"

    lines = [f"SST-2 dev accuracy over seeds {args.seeds}; teacher {teacher} {100 * (teacher_accuracy or 0):.2f}%", "",
             "| student | from scratch | distilled | gain (points) | distilled / teacher |", "|---|---|---|---|---|"]
    summary: dict[str, Any] = {"teacher": str(teacher), "teacher_accuracy": teacher_accuracy, "seeds": args.seeds,
                               "results": results, "timings_s": timings}  # fmt: skip
    for name, r in results.items():
        gains = [d - s for d, s in zip(r["distilled"], r["scratch"], strict=True)]
        ratio = statistics.mean(r["distilled"]) / (teacher_accuracy or 1)
        lines.append(f"| {name} | {stats(r['scratch'])} | {stats(r['distilled'])} | "
                     f"{100 * statistics.mean(gains):+.2f} ({', '.join(f'{100 * g:+.2f}' for g in gains)}) | "
                     f"{ratio:.1%} |")  # fmt: skip
        summary[f"{name}_gain_points"] = 100 * statistics.mean(gains)

    if best is not None:  # the edge: same runtime, same threads, batch 1, sequence length 64
        recipe = load_recipe("sst2-distill", [f"data.tokenizer={tokenizer}", f"teacher.checkpoint={teacher}"])
        teacher_row = export_for_demo(teacher, out / "teacher.onnx", "teacher (onnx fp32)", recipe)
        _, report = quantize_model(best[1], "dynamic", out=out / "student.int8.onnx", overwrite=True)
        student_fp32, student_int8 = report["rows"]
        rows = [teacher_row, {**student_fp32, "role": "student (onnx fp32)"},
                {**student_int8, "role": "student (int8)"}]  # fmt: skip
        lines += ["", "| model | test acc | size | latency b1 seq64 p50 | vs teacher |", "|---|---|---|---|---|"]
        for row in rows:
            faster = teacher_row["latency_ms_p50"] / row["latency_ms_p50"]
            smaller = teacher_row["size_bytes"] / row["size_bytes"]
            lines.append(f"| {row['role']} | {100 * row['test_accuracy']:.2f}% | {row['size_bytes'] / 2**20:.2f} MiB | "
                         f"{row['latency_ms_p50']:.3f} ms | {faster:.1f}x faster, {smaller:.1f}x smaller |")
        summary["edge"] = rows
    lines.append(f"\nwall time {time.perf_counter() - start:.0f} s")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_kd.md").write_text(text + "\n")
    (out / "text_kd.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
