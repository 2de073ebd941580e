"""Every distillation method on the demo pair, the same budget, over seeds: an mdistiller-style table.

Teacher: the shipped resnet8x4 (Fashion-MNIST); student: cnn_compact; the demo's optimizer, schedule and epochs
for every method (`fmnist-student`'s). Each method's loss weights are mdistiller's CIFAR-100 configuration
where it has one (KD: CE 0.1 + KD 0.9 at T 4; FitNet: CE 1 + hint 100; AT: CE 1 + 1000; DKD: CE 1, alpha 1,
beta 8, T 4; RKD: CE 1 + 1 (distance 25, angle 50); PKT: CE 1 + 30000; CRD: CE 1 + 0.8), with two changes the
budget forces, both printed in the table's notes: DKD's warm-up is scaled like the schedule (mdistiller warms up
over 20 of 240 epochs; over a few epochs that is less than one, so none), and CRD draws 4096 negatives, not 16384
(the memory read per step grows with them, and 2 CPU cores pay it). `multi-teacher` averages the shipped teacher
and a second one (`--second-teacher`, e.g. a resnet8x4 trained with another seed); `born-again` is generation 2
of `tinykd distill --generations 2` on the KD recipe.

The cached methods (kd, mse, dkd, rkd, pkt, crd, and born-again's first generation) read the teacher from one
fp32 teacher cache per seed: its logits and its penultimate features (1 KiB per image; the logit methods read
the same cache read-only, ignoring the features). An fp32 cache is exact, so their numbers are those of online
distillation, and it is filled by `fill_teacher_cache` before the first run that reads it, so every cached
run's img/s is that of reading the cache. FitNet and AT read whole feature maps (layer2 of the teacher alone is
about 27 GB for 5 epochs), so they run the teacher online and their img/s includes it; so does multi-teacher.
Finished runs and caches are reused: run the same command to continue.

    python bench/methods.py                                   # all methods, seeds 0 1 2
    python bench/methods.py --methods ce kd dkd --seeds 0 --set train.epochs=2
    python bench/methods.py --out runs/methods --finished      # the table of what has finished so far
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tinykd.born_again import run_born_again
from tinykd.demo import DISTILL_RECIPE, SCRATCH_RECIPE, shipped_teacher
from tinykd.recipes import load_recipe
from tinykd.run import fill_teacher_cache, run

CE = {"ce": {"weight": 1.0}}
CACHED = ("kd", "mse", "dkd", "rkd", "pkt", "crd", "born-again")
FILLER = "rkd"  # the cached method whose taps (the teacher's embedding) the cache is filled for
METHODS: dict[str, dict[str, Any]] = {
    "ce": {},
    "kd": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
    "mse": {"ce": {"weight": 0.1}, "mse": {"weight": 0.9}},
    "fitnet": {**CE, "fitnet": {"weight": 100.0, "student": "stage2", "teacher": "layer2"}},
    "at": {**CE, "at": {"weight": 1000.0, "student": ["stage1", "stage2", "stage3"],
                        "teacher": ["layer1", "layer2", "layer3"]}},
    "dkd": {**CE, "dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 0}},
    "rkd": {**CE, "rkd": {"weight": 1.0}},
    "pkt": {**CE, "pkt": {"weight": 30000.0}},
    "crd": {**CE, "crd": {"weight": 0.8, "negatives": 4096}},
    "multi-teacher": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
    "born-again": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, every run")
    parser.add_argument("--teacher", default=str(shipped_teacher()), help="teacher checkpoint or run folder")
    parser.add_argument("--second-teacher", help="multi-teacher: the other teacher (a resnet8x4 run or checkpoint)")
    parser.add_argument("--out", default=f"runs/methods-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--finished", action="store_true", help="only tabulate the runs already finished in --out")
    args = parser.parse_args()
    if "multi-teacher" in args.methods and not args.second_teacher and not args.finished:
        parser.error("multi-teacher needs --second-teacher (or leave it out of --methods)")

    out = Path(args.out)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in args.methods}
    start = time.perf_counter()
    for seed in args.seeds:
        for method in args.methods:
            folder = out / f"{method}-{seed}"
            metrics = _finished(folder)
            if metrics is None and args.finished:
                continue
            metrics = metrics or _run_method(method, seed, args, folder)
            student = next(r for r in metrics["models"] if r["role"] in ("student", "model"))
            results[method].append({"seed": seed, "accuracy": student["test_accuracy"],
                                    "img_per_s": metrics["train_samples_per_s"]})  # fmt: skip
            print(f"seed {seed} {method}: {student['test_accuracy']:.2%}, {metrics['train_samples_per_s']:.0f} img/s",
                  file=sys.stderr)  # fmt: skip

    results = {method: rows for method, rows in results.items() if rows}
    lines = [f"Fashion-MNIST test accuracy, resnet8x4 -> cnn_compact, seeds {args.seeds} "
             f"({time.perf_counter() - start:.0f} s)", "",
             "| method | mean | std | seed: test acc | train img/s |", "|---|---|---|---|---|"]  # fmt: skip
    for method, rows in results.items():
        acc = [r["accuracy"] for r in rows]
        std = f"{100 * statistics.stdev(acc):.2f}" if len(acc) > 1 else "-"
        per_seed = ", ".join(f"{r['seed']}: {100 * r['accuracy']:.2f}" for r in rows)
        lines.append(f"| {method} | {100 * statistics.mean(acc):.2f}% | {std} | {per_seed} | "
                     f"{statistics.mean(r['img_per_s'] for r in rows):.0f} |")  # fmt: skip
    lines += ["", "Notes: DKD warm-up 0 epochs (mdistiller: 20 of 240); CRD 4096 negatives (paper: 16384); "
              "img/s of kd, mse, dkd, rkd, pkt and crd is read from a teacher cache and excludes the time to fill it; "
              "fitnet, at and multi-teacher run their teachers online; born-again's is generation 2's, taught online "
              "by generation 1 (a cnn_compact distilled from the cache)."]
    text = "\n".join(lines)
    print(text)
    (out / "methods.md").write_text(text + "\n")
    (out / "methods.json").write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2))


def _finished(folder: Path) -> dict[str, Any] | None:
    """The report of a finished run of one method and seed (born-again: its second generation's), else None."""
    for report in (folder / "report.json", folder / "gen2" / "report.json"):
        if report.is_file() and (report.parent == folder or (folder / "generations.json").is_file()):
            return json.loads(report.read_text())
    return None


def _run_method(method: str, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One method, one seed: train it and return its run folder's report."""
    common = [f"seed={seed}", "measure.enabled=false", *args.overrides]
    if method == "ce":
        return run(load_recipe(SCRATCH_RECIPE, common), folder, mode="train").metrics
    recipe = load_recipe(DISTILL_RECIPE, [*common, f"teacher.checkpoint={args.teacher}"])
    update: dict[str, Any] = {"loss_terms": METHODS[method]}
    if method == "multi-teacher":
        spec = recipe.teacher.model_dump()  # type: ignore[union-attr]
        update["teachers"] = [{**spec, "checkpoint": args.teacher}, {**spec, "checkpoint": args.second_teacher}]
        update["teacher"] = None
    elif method in CACHED:  # one cache per seed, shared by the methods that read it
        cache = str(args.out) + f"/cache-embedding-{seed}"
        update["teacher"] = {**recipe.teacher.model_dump(), "cache": cache}  # type: ignore[union-attr]
        filler = {**recipe.model_dump(mode="json"), **update, "loss_terms": METHODS[FILLER]}
        fill_teacher_cache(load_recipe(filler))  # a full cache is only checked: the runs never run the teacher
    recipe = load_recipe({**recipe.model_dump(mode="json"), **update})
    if method == "born-again":
        return run_born_again(recipe, 2, folder)[-1].metrics
    return run(recipe, folder, mode="distill").metrics


if __name__ == "__main__":
    main()
