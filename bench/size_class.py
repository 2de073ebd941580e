"""The Fashion-MNIST students that beat their size class: `fmnist-best-100k` and `fmnist-best-10k` over seeds.

Each seed is `tinykd distill RECIPE --set seed=S` with measurements off, exactly the shipped recipe otherwise. With
`--cache`, each seed's teacher outputs are cached first (`tinykd cache-teacher`), so that the student's own time is
shown apart from the teacher's: the student then trains at the speed of a student alone, and the fill is the
teacher's forward passes over the run's 30 augmented epochs. Finished runs and caches are reused: run the same
command to continue.

    python bench/size_class.py                                   # both recipes, seeds 0 1 2 (hours on 2 CPU cores)
    python bench/size_class.py --recipes fmnist-best-10k --seeds 0 --cache
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tinykd.models.registry import create_model
from tinykd.recipes import load_recipe
from tinykd.run import fill_teacher_cache, run

# Fashion-MNIST's own benchmark table: the best entry of each size class (zalandoresearch/fashion-mnist README)
CLASS_BEST = {"fmnist-best-100k": "92.5% (2 conv layers, < 100K params)", "fmnist-best-10k": "-"}
GOAL = {"fmnist-best-100k": 0.930, "fmnist-best-10k": 0.910}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(GOAL), choices=list(GOAL))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", action="store_true", help="fill a teacher cache per seed first, and time it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, every run")
    parser.add_argument("--out", default=f"runs/size-class-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()

    out = Path(args.out)
    lines = ["| recipe | student params | test acc, mean ± std | per seed | goal | class best, public table "
             "| student train s per seed | teacher share of it | cache fill s per seed |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.recipes:
        rows = [_run_seed(name, seed, args, out) for seed in args.seeds]
        acc = [r["accuracy"] for r in rows]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        recipe = load_recipe(name)
        student = create_model(recipe.student.name, 10, 1, **recipe.student.kwargs)  # type: ignore[union-attr]
        params = sum(p.numel() for p in student.parameters())
        fills = [r["fill_seconds"] for r in rows if r["fill_seconds"] is not None]
        lines.append(
            f"| {name} | {params:,} | {100 * statistics.mean(acc):.2f}% ± {100 * std:.2f} | "
            f"{' / '.join(f'{100 * a:.2f}' for a in acc)} | >= {100 * GOAL[name]:.1f}% | {CLASS_BEST[name]} | "
            f"{statistics.mean(r['train_seconds'] for r in rows):.0f} | "
            f"{statistics.mean(r['teacher_share'] for r in rows):.0%} | "
            f"{f'{statistics.mean(fills):.0f}' if fills else '-'} |"
        )
        print(f"{name}: {', '.join(f'{100 * a:.2f}%' for a in acc)}", file=sys.stderr)
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "size_class.md").write_text(text + "\n")


def _run_seed(name: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One recipe, one seed: test accuracy, training time and the teacher's share of it (reused when done)."""
    folder = out / f"{name}-{seed}"
    overrides = [f"seed={seed}", "measure.enabled=false", *args.overrides]
    if args.cache:
        overrides.append(f"teacher.cache={out / f'cache-{name}-{seed}'}")
    fill_seconds = None
    if not (folder / "report.json").is_file():
        recipe = load_recipe(name, overrides)
        if args.cache:
            start = time.perf_counter()
            fill_teacher_cache(recipe)  # a full cache is only checked
            fill_seconds = time.perf_counter() - start
            (out / f"cache-{name}-{seed}.seconds").write_text(f"{fill_seconds:.1f}\n")
        run(recipe, folder, mode="distill")
    elif (out / f"cache-{name}-{seed}.seconds").is_file():
        fill_seconds = float((out / f"cache-{name}-{seed}.seconds").read_text())
    report = json.loads((folder / "report.json").read_text())
    student = next(r for r in report["models"] if r["role"] == "student")
    parts = report.get("time_breakdown") or {}
    total = sum(v for v in parts.values() if isinstance(v, (int, float))) or 1.0
    teacher = sum(v for k, v in parts.items() if "teacher" in k and isinstance(v, (int, float)))
    return {"accuracy": student["test_accuracy"], "train_seconds": report["train_seconds"],
            "teacher_share": teacher / total, "fill_seconds": fill_seconds}  # fmt: skip


if __name__ == "__main__":
    main()
