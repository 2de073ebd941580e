"""DistilBERT's recipe on a real pretrained teacher: all-MiniLM-L6-v2 fine-tuned on SST-2, then its students.

Rows, each over the same seeds and the same budget (epochs, and `--max-steps` per epoch when given):
- `teacher`: the pretrained MiniLM-L6-H384 (22.7M parameters) fine-tuned on the labels (`sst2-minilm-teacher`);
- `shrink`: half its depth (3 of 6 layers, every other, started from the teacher of the same seed), fine-tuned
  on the labels alone (`sst2-minilm-shrink`): the honest baseline;
- `distil`: the same student distilled, CE + KD (T=2) + cosine on hidden states (`sst2-minilm-distil`);
- `tiny-ce`: a student under a tenth of the teacher's parameters (SST-2's vocabulary, 4 layers, 128 wide, its
  weights selected from the teacher of its seed), trained on the labels alone (`sst2-minilm-tiny-ce`);
- `tiny`: the same student distilled on augmented texts (`sst2-minilm-tiny`).

Then the edge, in one runtime: each model of the first seed exported to ONNX (fp32) and ONNX Runtime dynamic
int8, timed at batch 1 and sequence length 64 with `--threads` threads. The table (SST-2 dev accuracy mean and
std, parameters, size, latency, percentage of the teacher) is printed and written to OUT/pretrained_text.md and
.json; a finished run folder is read, not trained again (a rerun adds seeds).

    make pretrained                                                   # the MiniLM weights, offline, once
    python bench/pretrained_text.py --data ../shared/data --seeds 0 1 2
    python bench/pretrained_text.py --data ../shared/data --seeds 0 --epochs 1 --max-steps 600   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from text_kd import run_once  # bench/: a finished run folder is read, not trained again
from tinykd.compress.quantize import quantize_model
from tinykd.demo import MINILM_TINY
from tinykd.recipes import load_recipe

ROWS = {  # row: (recipe, mode, needs the teacher of its seed)
    "teacher": ("sst2-minilm-teacher", "train", False),
    "shrink": ("sst2-minilm-shrink", "train", True),
    "distil": ("sst2-minilm-distil", "distill", True),
    "tiny-ce": ("sst2-minilm-tiny-ce", "train", True),
    "tiny": ("sst2-minilm-tiny", "distill", True),
}


def tiny_settings(row: str, teacher_dir: Path, train_file: Path, out: Path) -> list[str]:
    """The tiny rows' start, made once per teacher as the recipe's comment says (the teacher with SST-2's
    vocabulary, and the narrow student selected from it), and the recipe's paths pointed at them."""
    from tinykd.compress.shrink import shrink_command

    vocab, init = out / f"{teacher_dir.name}-sst2vocab", out / f"{teacher_dir.name}-tiny-init"
    if not (vocab / "config.json").is_file():
        shrink_command(teacher_dir, "all", vocab, overwrite=True, vocabulary=train_file)
    if not (init / "config.json").is_file():  # the demo's tiny student: one shape for both
        shrink_command(vocab, MINILM_TINY["layers"], init, overwrite=True, widths=MINILM_TINY["widths"])
    if row == "tiny-ce":
        return [f"data.tokenizer={vocab}", f"model.name=hf:{init}"]
    return [f"data.tokenizer={vocab}", f"data.text_augment.model={vocab}", f"teacher.name=hf:{vocab}",
            f"student.name=hf:{init}"]  # fmt: skip


def trained_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The report's row of the model the run trained (the student of a distillation)."""
    return next(r for r in metrics["models"] if r["role"] in ("model", "student"))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder that holds sst2/train.tsv and sst2/dev.tsv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=None, help="every row's epochs (default: the recipes' own)")
    parser.add_argument("--max-steps", type=int, default=None, help="every row's steps per epoch, at most")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and for the timings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every row")
    parser.add_argument("--teacher-seed", type=int, default=None,
                        help="every seed's students learn from the teacher of this seed (DistilBERT had one "
                             "teacher), and the teacher row is that one run; default: each seed its own teacher")
    parser.add_argument("--no-edge", action="store_true", help="train and tabulate only (runs of some seeds in "
                        "parallel; a last run without it reads them all and times the models on a quiet machine)")
    parser.add_argument("--out", default="runs/pretrained-text")
    args = parser.parse_args()

    os.environ["TINYKD_DATA"] = str(Path(args.data).resolve())
    out = Path(args.out)
    start = time.perf_counter()
    budget = [f"runtime.threads={args.threads}", "measure.enabled=false", *args.overrides]
    if args.epochs:
        budget.append(f"train.epochs={args.epochs}")
    if args.max_steps:
        budget.append(f"train.max_steps_per_epoch={args.max_steps}")
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in args.rows}
    folders: dict[str, Path] = {}
    for seed in args.seeds:
        teacher_seed = seed if args.teacher_seed is None else args.teacher_seed
        teacher_dir = (out / f"teacher-{teacher_seed}").resolve()
        for row in args.rows:
            recipe_name, mode, needs_teacher = ROWS[row]
            run_seed = teacher_seed if row == "teacher" else seed
            if row == "teacher" and seed != teacher_seed and seed != args.seeds[0]:
                continue  # the one teacher, once
            if needs_teacher and not (teacher_dir / "report.json").is_file():
                sys.exit(f"row {row} needs the teacher of seed {teacher_seed} ({teacher_dir}); add the row 'teacher'")
            extra = [f"teacher.checkpoint={teacher_dir}", f"data.tokenizer={teacher_dir / 'tokenizer'}"] \
                if needs_teacher else []  # fmt: skip
            if row.startswith("tiny"):
                extra = tiny_settings(row, teacher_dir, Path(args.data) / "sst2" / "train.tsv", out.resolve())
            folder = out / f"{row}-{run_seed}"
            t0 = time.perf_counter()
            metrics = run_once(load_recipe(recipe_name, [f"seed={run_seed}", *budget, *extra]), folder, mode)
            trained = trained_row(metrics)
            results[row].append({"seed": run_seed, "accuracy": trained["test_accuracy"],
                                 "params": trained.get("params"), "seconds": round(time.perf_counter() - t0, 1)})
            folders.setdefault(row, folder)
            print(f"seed {run_seed} {row}: SST-2 dev {trained['test_accuracy']:.2%}", file=sys.stderr)

    teacher_mean = mean_std([r["accuracy"] for r in results["teacher"]])[0] if results.get("teacher") else None
    edge: dict[str, list[dict[str, Any]]] = {}
    for row, folder in {} if args.no_edge else folders.items():  # the first seed's models, fp32 and dynamic int8
        _, report = quantize_model(folder, "dynamic", out=out / f"{row}.int8.onnx", threads=args.threads,
                                   overwrite=True)  # fmt: skip
        edge[row] = report["rows"]

    steps = f", {args.max_steps} steps each" if args.max_steps else ""
    lines = [f"SST-2 dev (872 sentences), seeds {args.seeds}; {args.threads} threads; "
             f"budget: {args.epochs or 'the recipes'} epochs{steps}", "",
             "| row | dev accuracy (mean, std) | of the teacher | parameters | fp32 ONNX | int8 ONNX | "
             "latency fp32 b1 s64 | latency int8 b1 s64 | int8 acc |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    teacher_fp32 = edge.get("teacher", [{}])[0].get("latency_ms_p50")
    for row, runs in results.items():
        mean, std = mean_std([r["accuracy"] for r in runs])
        share = f"{mean / teacher_mean:.1%}" if teacher_mean else "-"
        fp32, int8 = edge.get(row, ({}, {}))
        speed = f" ({teacher_fp32 / int8['latency_ms_p50']:.1f}x)" if teacher_fp32 and int8 else ""
        params = fp32.get("params") or runs[0]["params"] or 0  # the runs measure nothing (measure.enabled=false)
        lines.append(f"| {row} | {100 * mean:.2f}% ({100 * std:.2f}) | {share} | {params / 1e6:.2f}M | "
                     f"{fp32.get('size_bytes', 0) / 2**20:.1f} MiB | {int8.get('size_bytes', 0) / 2**20:.1f} MiB | "
                     f"{fp32.get('latency_ms_p50', 0):.2f} ms | {int8.get('latency_ms_p50', 0):.2f} ms{speed} | "
                     f"{100 * int8.get('test_accuracy', 0):.2f}% |")  # fmt: skip
    for student, baseline in (("distil", "shrink"), ("tiny", "tiny-ce")):
        if student in results and baseline in results:
            gains = [d["accuracy"] - s["accuracy"] for d, s in zip(results[student], results[baseline], strict=True)]
            lines.append(f"\n{student} - {baseline}: {100 * statistics.mean(gains):+.2f} points "
                         f"({', '.join(f'{100 * g:+.2f}' for g in gains)})")  # fmt: skip
    lines.append(f"wall time {time.perf_counter() - start:.0f} s")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrained_text.md").write_text(text + "\n")
    (out / "pretrained_text.json").write_text(json.dumps({"results": results, "edge": edge, "seeds": args.seeds,
                                                          "budget": budget}, indent=2, default=str) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
