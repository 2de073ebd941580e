"""Does distillation pay? Teacher, student from scratch and distilled student on Fashion-MNIST, over seeds.

Runs the demo's two student recipes (same budget) once per seed and prints the mean and standard deviation
of test accuracy, the gain of distillation, and the student's accuracy as a fraction of the teacher's.

    python bench/kd_gain.py                     # seeds 0 1 2, the demo's budget
    python bench/kd_gain.py --seeds 0 1 2 3 4 --set train.epochs=8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from tinykd.demo import DISTILL_RECIPE, SCRATCH_RECIPE, shipped_teacher
from tinykd.recipes import load_recipe
from tinykd.run import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, both runs")
    parser.add_argument("--teacher", default=str(shipped_teacher()), help="teacher checkpoint")
    parser.add_argument("--out", default=f"runs/kd-gain-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()

    out = Path(args.out)
    results: dict[str, list[float]] = {"teacher": [], "scratch": [], "distilled": []}
    start = time.perf_counter()
    for seed in args.seeds:
        common = [f"seed={seed}", "measure.enabled=false", *args.overrides]
        scratch = run(load_recipe(SCRATCH_RECIPE, common), out / f"scratch-{seed}", mode="train")
        distilled = run(load_recipe(DISTILL_RECIPE, [*common, f"teacher.checkpoint={args.teacher}"]),
                        out / f"distill-{seed}", mode="distill")  # fmt: skip
        teacher_row, student_row = distilled.metrics["models"]
        results["teacher"].append(teacher_row["test_accuracy"])
        results["scratch"].append(scratch.metrics["models"][0]["test_accuracy"])
        results["distilled"].append(student_row["test_accuracy"])
        print(f"seed {seed}: scratch {results['scratch'][-1]:.2%}  distilled {results['distilled'][-1]:.2%}",
              file=sys.stderr)  # fmt: skip

    def stats(values: list[float]) -> tuple[float, float]:
        return 100 * statistics.mean(values), 100 * (statistics.stdev(values) if len(values) > 1 else 0.0)

    gains = [d - s for d, s in zip(results["distilled"], results["scratch"], strict=True)]
    lines = [f"Fashion-MNIST test accuracy over seeds {args.seeds} ({time.perf_counter() - start:.0f} s)", "",
             "| model | mean | std |", "|---|---|---|"]  # fmt: skip
    for name, values in results.items():
        mean, std = stats(values)
        lines.append(f"| {name} | {mean:.2f}% | {std:.2f} |")
    gain_mean, gain_std = stats(gains)
    ratio = statistics.mean(results["distilled"]) / statistics.mean(results["teacher"])
    lines += ["", f"distillation gain: {gain_mean:+.2f} points (std {gain_std:.2f}; per seed: "
              + ", ".join(f"{100 * g:+.2f}" for g in gains) + ")",
              f"distilled student / teacher: {ratio:.2%}"]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    (out / "kd_gain.md").write_text(text + "\n")
    (out / "kd_gain.json").write_text(json.dumps({**results, "gains": gains, "seeds": args.seeds}, indent=2))


if __name__ == "__main__":
    main()
