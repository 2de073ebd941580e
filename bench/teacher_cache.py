"""What a teacher cache buys: epoch time and accuracy of the demo pair, online, from caches, and student alone.

On Fashion-MNIST with the demo's recipes (shipped resnet8x4 teacher -> cnn_compact, the same seed and budget):
  1. the student alone on the labels (`fmnist-student`): the floor for an epoch's time;
  2. online distillation (`fmnist-distill`): the teacher runs in every step;
  3. `tinykd cache-teacher` into an fp32, an fp16 and a top-k cache: the time to fill, the size on disk;
  4. distillation from each cache: the teacher never runs. The fp32 student must equal the online one bit for
     bit; the compressed ones are compared by test accuracy.

    python bench/teacher_cache.py                          # the recipes' 5 epochs
    python bench/teacher_cache.py --set train.epochs=2 --topk 3
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

    def add(label: str, result: Any, extra: dict[str, Any] | None = None) -> None:
        m = result.metrics
        epochs = m["epochs"]
        rows.append({"run": label, "test_accuracy": m["models"][-1]["test_accuracy"],
                     "epoch_seconds": m["train_seconds"] / epochs, "img_per_s": m["train_img_per_s"],
                     "folder": str(result.run_dir), **(extra or {})})  # fmt: skip
        print(f"{label}: {rows[-1]['test_accuracy']:.2%}, {rows[-1]['epoch_seconds']:.1f} s per epoch", file=sys.stderr)

    add("student alone", run(load_recipe(SCRATCH_RECIPE, common), out / "student", mode="train"))
    online = run(load_recipe(DISTILL_RECIPE, distill), out / "online", mode="distill")
    add("distilled, online teacher", online)
    fills: dict[str, dict[str, Any]] = {}
    for fmt in ("fp32", "fp16", "topk"):
        cache = [f"teacher.cache={out / f'cache-{fmt}'}", f"teacher.cache_format={fmt}",
                 f"teacher.cache_topk={args.topk}"]  # fmt: skip
        fills[fmt] = fill_teacher_cache(load_recipe(DISTILL_RECIPE, [*distill, *cache]))
        result = run(load_recipe(DISTILL_RECIPE, [*distill, *cache]), out / f"cached-{fmt}", mode="distill")
        assert result.metrics["teacher_cache"]["batches_computed"] == 0, "the cache did not hold every batch"
        label = f"distilled, {fmt} cache" + (f" (k={args.topk})" if fmt == "topk" else "")
        add(label, result, {"cache_mib_per_epoch": fills[fmt]["bytes"] / 2**20 / online.metrics["epochs"],
                            "fill_seconds": fills[fmt]["seconds"]})  # fmt: skip

    online_weights = load_file(str(out / "online" / "checkpoints" / "last.safetensors"))
    cached_weights = load_file(str(out / "cached-fp32" / "checkpoints" / "last.safetensors"))
    same = all(torch.equal(online_weights[k], cached_weights[k]) for k in online_weights)
    floor = rows[0]["epoch_seconds"]
    lines = [f"Fashion-MNIST, resnet8x4 -> cnn_compact, seed {args.seed}, {online.metrics['epochs']} epochs", "",
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


if __name__ == "__main__":
    main()
