"""What a teacher cache buys: epoch time and accuracy of the demo pair, online, from caches, and student alone.

On Fashion-MNIST with the demo's recipes (shipped resnet8x4 teacher -> cnn_compact, the same seed and budget):
  1. the student alone on the labels (`fmnist-student`): the floor for an epoch's time;
  2. online distillation (`fmnist-distill`): the teacher runs in every step;
  3. `tinykd cache-teacher` into an fp32, an fp16 and a top-k cache: the time to fill, the size on disk;
  4. distillation from each cache: the teacher never runs. The fp32 student must equal the online one bit for
     bit; the compressed ones are compared by test accuracy.

    python bench/teacher_cache.py                          # the recipes' 5 epochs
    python bench/teacher_cache.py --set train.epochs=2 --topk 3

Finished runs and fills are reused: run the same command (same --out) again to continue an interrupted bench.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tinykd.demo import DISTILL_RECIPE, SCRATCH_RECIPE, shipped_teacher
from tinykd.recipes import load_recipe
from tinykd.run import fill_teacher_cache, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, every run")
    parser.add_argument("--topk", type=int, default=3, help="k of the top-k cache (FKD)")
    parser.add_argument("--out", default=f"runs/teacher-cache-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()

    out = Path(args.out)
    common = [f"seed={args.seed}", "measure.enabled=false", *args.overrides]
    distill = [*common, f"teacher.checkpoint={shipped_teacher()}"]
    rows: list[dict[str, Any]] = []

    def add(label: str, folder: Path, m: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        rows.append({"run": label, "test_accuracy": m["models"][-1]["test_accuracy"],
                     "epoch_seconds": m["train_seconds"] / m["epochs"], "img_per_s": m["train_samples_per_s"],
                     "folder": str(folder), **(extra or {})})  # fmt: skip
        print(f"{label}: {rows[-1]['test_accuracy']:.2%}, {rows[-1]['epoch_seconds']:.1f} s per epoch", file=sys.stderr)

    add("student alone", out / "student", run_once(load_recipe(SCRATCH_RECIPE, common), out / "student", "train"))
    online = run_once(load_recipe(DISTILL_RECIPE, distill), out / "online", "distill")
    add("distilled, online teacher", out / "online", online)
    fills: dict[str, dict[str, Any]] = {}
    for fmt in ("fp32", "fp16", "topk"):
        cache = [f"teacher.cache={out / f'cache-{fmt}'}", f"teacher.cache_format={fmt}",
                 f"teacher.cache_topk={args.topk}"]  # fmt: skip
        fills[fmt] = fill_once(load_recipe(DISTILL_RECIPE, [*distill, *cache]), out / f"fill-{fmt}.json")
        folder = out / f"cached-{fmt}"
        metrics = run_once(load_recipe(DISTILL_RECIPE, [*distill, *cache]), folder, "distill")
        assert metrics["teacher_cache"]["batches_computed"] == 0, "the cache did not hold every batch"
        label = f"distilled, {fmt} cache" + (f" (k={args.topk})" if fmt == "topk" else "")
        add(label, folder, metrics, {"cache_mib_per_epoch": fills[fmt]["bytes"] / 2**20 / online["epochs"],
                                     "fill_seconds": fills[fmt]["seconds"]})  # fmt: skip

    online_weights = load_file(str(out / "online" / "checkpoints" / "last.safetensors"))
    cached_weights = load_file(str(out / "cached-fp32" / "checkpoints" / "last.safetensors"))
    same = all(torch.equal(online_weights[k], cached_weights[k]) for k in online_weights)
    floor = rows[0]["epoch_seconds"]
    lines = [f"Fashion-MNIST, resnet8x4 -> cnn_compact, seed {args.seed}, {online['epochs']} epochs", "",
             "| run | test acc | s per epoch | vs student alone | img/s | cache per epoch | time to fill |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cache = f"{r['cache_mib_per_epoch']:.2f} MiB" if "cache_mib_per_epoch" in r else "-"
        fill = f"{r['fill_seconds']:.0f} s" if "fill_seconds" in r else "-"
        lines.append(f"| {r['run']} | {r['test_accuracy']:.2%} | {r['epoch_seconds']:.1f} | "
                     f"{r['epoch_seconds'] / floor:.2f}x | {r['img_per_s']:.0f} | {cache} | {fill} |")  # fmt: skip
    lines += ["", f"fp32 cache student equals the online student bit for bit: {same}"]
    text = "\n".join(lines)
    print(text)
    (out / "teacher_cache.md").write_text(text + "\n")
    (out / "teacher_cache.json").write_text(json.dumps({"rows": rows, "fills": fills, "bit_for_bit": same}, indent=2))


def run_once(recipe: Any, folder: Path, mode: str) -> dict[str, Any]:
    """A run's report; a folder that already holds a finished run is read, not trained again."""
    if (folder / "report.json").is_file():
        print(f"reusing {folder}", file=sys.stderr)
        return json.loads((folder / "report.json").read_text())
    return run(recipe, folder, mode=mode).metrics


def fill_once(recipe: Any, record: Path) -> dict[str, Any]:
    """Fill a cache and record how long it took; a recorded fill is read back (refilling a full cache would
    time nothing). An interrupted fill is continued: the batches already in the cache are not computed again,
    so its recorded time is that of the last part only, and says so."""
    if record.is_file():
        return json.loads(record.read_text())
    partial = Path(recipe.teacher.cache).is_dir() and any(Path(recipe.teacher.cache).glob("shard-*"))
    stats = fill_teacher_cache(recipe)
    stats["continued"] = partial
    record.write_text(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
