"""Quantization-aware distillation against post-training quantization, on the vision demo pair.

Fashion-MNIST, shipped resnet8x4 teacher -> cnn_compact student (the demo's `fmnist-distill` recipe):
  1. the fp32 distilled student (a finished `fmnist-distill` run, --distilled), in PyTorch and as fp32 ONNX;
  2. post-training quantization of that student: int8 (`tinykd quantize --mode static`, ONNX Runtime QDQ) and
     4-bit weights (`--mode int4`, torchao PT2E, ONNX QDQ with INT4 weights), calibrated on 500 training images;
  3. quantization-aware distillation (recipe section `quantize`), int8 and 4-bit weights: the fp32 student
     fine-tuned for --epochs with the teacher (the same ce + kd terms) and fake quantization, one run per seed,
     converted and written as ONNX QDQ; accuracy in ONNX Runtime.
Every quantized row is a file ONNX Runtime runs; accuracy on the 10,000 test images, latency at batch 1.

    python bench/qat_kd.py --distilled runs/fmnist-distill                      # seeds 0 1 2, 1 epoch each
    python bench/qat_kd.py --distilled RUN --teacher-cache CACHE --seeds 0      # seed 0 from a teacher cache

With --text DATA, the same rows for a text student on SST-2 (DATA holds sst2/train.tsv and dev.tsv): --distilled
is a finished sst2-tinybert run (its teacher is the recipe's), PTQ int8 is ONNX Runtime dynamic (MatMul/Gemm and
the embedding Gathers), 4-bit rows are weight-only: linear layers per group of --group-size as MatMulNBits, the
embedding tables as INT4 (one scale per row, --tables); QAT-KD fine-tunes the student for --steps steps (ce + kd)
with those fake-quantized:

    python bench/qat_kd.py --text /data --distilled runs/text-kd/small-distill-1 --steps 300

Finished runs are reused: run the same command (same --out) again to continue.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tinykd.compress.compare import compare_row
from tinykd.compress.quantize import quantize_model
from tinykd.demo import DISTILL_RECIPE, shipped_teacher
from tinykd.models.checkpoint import resolve_checkpoint
from tinykd.recipes import load_recipe
from tinykd.report import human_bytes
from tinykd.run import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distilled", required=True, help="a finished fmnist-distill run folder (the fp32 student)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights", nargs="+", default=["int8", "int4"], choices=["int8", "int4", "int8-7bit"],
                        help="QAT runs: int8-7bit is int8 with reduce_range (weights in [-63, 63])")
    parser.add_argument("--epochs", type=int, default=1, help="quantization-aware fine-tuning epochs per run")
    parser.add_argument("--lr", type=float, default=0.01, help="its peak learning rate (cosine to 0)")
    parser.add_argument("--teacher-cache", help="a teacher cache filled for the distill recipe (seed 0 runs)")
    parser.add_argument("--calibration", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, QAT runs")
    parser.add_argument("--text", metavar="DATA", help="a text student on SST-2: a folder with sst2/ (see above)")
    parser.add_argument("--steps", type=int, default=300, help="--text: QAT-KD steps per run")
    parser.add_argument("--group-size", type=int, default=16, help="--text: linear weights per int4 scale")
    parser.add_argument("--int8-seeds", type=int, nargs="+", help="--text: seeds of the int8 QAT runs (--seeds)")
    parser.add_argument("--tables", default="per-row", choices=["per-row", "per-group"],
                        help="--text: int4 embedding tables' scales, one per row or per group")
    parser.add_argument("--out", default=f"runs/qat-kd-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.text:
        return text_main(args, out)
    distilled = Path(args.distilled)
    rows: list[dict[str, Any]] = []

    def measured(label: str, row: dict[str, Any], **extra: Any) -> None:
        rows.append({"row": label, "test_accuracy": row["test_accuracy"], "size_bytes": row["size_bytes"],
                     "latency_ms_p50": row.get("latency_ms_p50"), **extra})  # fmt: skip
        print(f"{label}: {row['test_accuracy']:.2%}, {human_bytes(row['size_bytes'])}", file=sys.stderr)

    threads = args.threads
    measured("teacher (resnet8x4, PyTorch fp32)", compare_row(str(shipped_teacher()), threads or 2, 100, 64))
    student = compare_row(str(distilled), threads or 2, 100, 64)
    measured("distilled student (PyTorch fp32)", student)
    fp32_params = student["params"]
    for mode, label in (("static", "PTQ int8 (ORT static QDQ)"), ("int4", "PTQ int4 weights (torchao PT2E)")):
        path = out / f"student.{mode}.onnx"
        _, report = quantize_model(distilled, mode, args.calibration, path, threads=threads, repeats=100,
                                   overwrite=True)  # fmt: skip
        if mode == "static":
            measured("distilled student (ONNX fp32)", report["rows"][0])
        measured(label, report["rows"][1])

    checkpoint = resolve_checkpoint(distilled)
    for weights in args.weights:
        runs = []
        for seed in args.seeds:
            folder = out / f"qat-{weights}-seed{seed}"
            if (folder / "report.json").is_file():
                metrics = json.loads((folder / "report.json").read_text())
            else:
                overrides = [f"seed={seed}", f"name=qat-kd-{weights}", f"teacher.checkpoint={shipped_teacher()}",
                             f"student.checkpoint={checkpoint}", f"train.epochs={args.epochs}",
                             f"train.optimizer.lr={args.lr}", "train.schedule.name=cosine",
                             "measure.enabled=true", "measure.latency_repeats=100"]  # fmt: skip
                if args.teacher_cache and seed == 0:
                    overrides.append(f"teacher.cache={args.teacher_cache}")
                if threads:
                    overrides += [f"runtime.threads={threads}", f"measure.threads={threads}"]
                recipe = load_recipe(DISTILL_RECIPE, [*overrides, *args.overrides]).model_dump(mode="json")
                recipe["quantize"] = {"weights": weights.split("-")[0], "activations": "int8",
                                      "granularity": "per-channel", "reduce_range": weights == "int8-7bit"}
                metrics = run(recipe, folder, overwrite=True, mode="distill").metrics
            qat = next(r for r in metrics["models"] if "QAT" in r["role"])
            runs.append({**qat, "seed": seed, "train_seconds": metrics["train_seconds"]})
            print(f"QAT-KD {weights} seed {seed}: {qat['test_accuracy']:.2%} (PyTorch "
                  f"{qat['test_accuracy_pytorch']:.2%}), {human_bytes(qat['size_bytes'])}, "
                  f"{metrics['train_seconds']:.0f} s", file=sys.stderr)
        accs = [r["test_accuracy"] for r in runs]
        rows.append({"row": f"QAT-KD {weights} ({len(runs)} seeds)", "test_accuracy": statistics.mean(accs),
                     "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "per_seed": accs, "size_bytes": runs[0]["size_bytes"], "weight_bytes": runs[0]["weight_bytes"],
                     "latency_ms_p50": statistics.median(r["latency_ms_p50"] for r in runs),
                     "train_seconds": [r["train_seconds"] for r in runs]})  # fmt: skip

    summary = {"rows": rows, "fp32_params": fp32_params, "epochs": args.epochs, "lr": args.lr,
               "calibration": args.calibration, "distilled": str(distilled)}  # fmt: skip
    (out / "qat_kd.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "qat_kd.md").write_text(markdown(summary))
    print(markdown(summary))


def text_main(args: argparse.Namespace, out: Path) -> None:
    """The text student's rows: teacher, fp32 student, PTQ int8 and int4, QAT-KD int8 and int4 over seeds."""
    import os

    os.environ["TINYKD_DATA"] = str(Path(args.text).resolve())
    distilled = Path(args.distilled)
    threads = args.threads or 2
    rows: list[dict[str, Any]] = []

    def measured(label: str, row: dict[str, Any], **extra: Any) -> None:
        rows.append({"row": label, "test_accuracy": row["test_accuracy"], "size_bytes": row["size_bytes"],
                     "latency_ms_p50": row.get("latency_ms_p50"), **extra})  # fmt: skip
        print(f"{label}: {row['test_accuracy']:.2%}, {human_bytes(row['size_bytes'])}", file=sys.stderr)

    source = load_recipe(distilled / "recipe.yaml")
    measured("teacher (PyTorch fp32)", compare_row(str(source.teacher.checkpoint), threads, 100, 64))
    student = compare_row(str(distilled), threads, 100, 64)
    measured("distilled student (PyTorch fp32)", student)
    _, report = quantize_model(distilled, "dynamic", out=out / "student.int8.onnx", threads=threads, repeats=100,
                               overwrite=True)  # fmt: skip
    measured("distilled student (ONNX fp32)", report["rows"][0])
    measured("PTQ int8 (ORT dynamic)", report["rows"][1])
    _, report = quantize_model(distilled, "int4", out=out / "student.int4.onnx", threads=threads, repeats=100,
                               overwrite=True, group_size=args.group_size, tables=args.tables)  # fmt: skip
    measured("PTQ int4 weights (torchao, MatMulNBits)", report["rows"][1], weight_bytes=report["weight_bytes"])
    specs = {"int8": {"weights": "int8", "activations": "int8", "granularity": "per-channel", "embeddings": True},
             "int4": {"weights": "int4", "activations": "none", "granularity": "per-group",
                      "group_size": args.group_size, "embeddings": args.tables}}  # fmt: skip
    for weights in args.weights:
        runs = []
        for seed in (args.int8_seeds or args.seeds) if weights == "int8" else args.seeds:
            folder = out / f"qat-{weights}-seed{seed}"
            if (folder / "report.json").is_file():
                metrics = json.loads((folder / "report.json").read_text())
            else:
                overrides = [f"seed={seed}", f"name=qat-kd-text-{weights}", f"student.checkpoint={distilled}",
                             "train.epochs=1", f"train.max_steps_per_epoch={args.steps}",
                             f"train.optimizer.lr={args.lr}", "train.schedule.name=cosine",
                             "measure.enabled=true", "measure.latency_repeats=100", f"runtime.threads={threads}",
                             f"measure.threads={threads}"]  # fmt: skip
                recipe = load_recipe(distilled / "recipe.yaml", [*overrides, *args.overrides]).model_dump(mode="json")
                recipe["loss_terms"] = {"ce": {"weight": 0.2}, "kd": {"weight": 0.8, "temperature": 2.0}}
                recipe["quantize"] = specs[weights]
                metrics = run(recipe, folder, overwrite=True, mode="distill").metrics
            qat = next(r for r in metrics["models"] if "QAT" in r["role"])
            runs.append({**qat, "seed": seed, "train_seconds": metrics["train_seconds"]})
            pytorch = qat.get("test_accuracy_pytorch", qat["test_accuracy"])
            print(f"QAT-KD {weights} seed {seed}: {qat['test_accuracy']:.2%} (PyTorch {pytorch:.2%}), "
                  f"{human_bytes(qat['size_bytes'])}, {metrics['train_seconds']:.0f} s", file=sys.stderr)
        accs = [r["test_accuracy"] for r in runs]
        rows.append({"row": f"QAT-KD {weights} ({len(runs)} seeds, {runs[0]['format']})",
                     "test_accuracy": statistics.mean(accs),
                     "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "per_seed": accs, "size_bytes": runs[0]["size_bytes"], "weight_bytes": runs[0].get("weight_bytes"),
                     "latency_ms_p50": statistics.median(r["latency_ms_p50"] for r in runs),
                     "train_seconds": [r["train_seconds"] for r in runs]})  # fmt: skip
    summary = {"rows": rows, "fp32_params": student["params"], "steps": args.steps, "lr": args.lr,
               "group_size": args.group_size, "tables": args.tables, "distilled": str(distilled),
               "task": "SST-2 dev (872 sentences)"}  # fmt: skip
    (out / "qat_kd.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "qat_kd.md").write_text(markdown(summary))
    print(markdown(summary))


def markdown(summary: dict[str, Any]) -> str:
    by = {r["row"].split(" (")[0]: r for r in summary["rows"]}  # "distilled student": its ONNX fp32 row (last)
    title = summary.get("task", "Fashion-MNIST test set (10,000 images), resnet8x4 -> cnn_compact")
    lines = [f"{title}; ONNX Runtime rows: CPU, batch 1", "",
             "| model | test acc | size on disk | latency b1 p50 |", "|---|---|---|---|"]  # fmt: skip
    for r in summary["rows"]:
        acc = f"{r['test_accuracy']:.2%}" + (f" ± {r['test_accuracy_std']:.2%}" if "test_accuracy_std" in r else "")
        latency = f"{r['latency_ms_p50']:.3f} ms" if r.get("latency_ms_p50") else "-"
        lines.append(f"| {r['row']} | {acc} | {human_bytes(r['size_bytes'])} | {latency} |")
    fp32 = by.get("distilled student")
    goals = []
    for bits in ("int8", "int8-7bit", "int4"):
        qat, ptq = by.get(f"QAT-KD {bits}"), by.get("PTQ int4 weights" if bits == "int4" else "PTQ int8")
        if qat and ptq:
            goals.append(f"QAT-KD {bits} - PTQ {bits[:4]}: {100 * (qat['test_accuracy'] - ptq['test_accuracy']):+.2f}"
                         " points")  # fmt: skip
        if qat and fp32:
            gap = 100 * (qat["test_accuracy"] - fp32["test_accuracy"])
            goals.append(f"QAT-KD {bits} - fp32 distilled: {gap:+.2f} points")
    qat4 = by.get("QAT-KD int4")
    if qat4 and fp32:
        ratio, weights = fp32["size_bytes"] / qat4["size_bytes"], 4 * summary["fp32_params"]
        goals.append(f"4-bit file {human_bytes(qat4['size_bytes'])} vs fp32 ONNX file "
                     f"{human_bytes(fp32['size_bytes'])}: {ratio:.1f}x smaller; its tensors (codes, scales, zero "
                     "points, biases) "
                     f"{human_bytes(qat4['weight_bytes'])} vs fp32 weights {human_bytes(weights)}: "
                     f"{weights / qat4['weight_bytes']:.1f}x")  # fmt: skip
    return "\n".join([*lines, "", *[f"- {g}" for g in goals]]) + "\n"


if __name__ == "__main__":
    main()
