"""Generative distillation on real text: a GPT-2-style and a BART-style teacher, students from scratch and distilled.

Corpus: SST-2's 67,349 training sentences (dev's 872 held out as the test set). Teachers are trained from scratch
here (no pretrained weights can be downloaded); a WordPiece vocabulary is trained on the training sentences.

- causal-lm: GPT-2-style teacher; students with half its layers, (a) from scratch on the text, (b) started from
  every other teacher layer and distilled (CE + token_kd), the same budget. Dev perplexity and token accuracy.
- seq2seq: BART's own denoising objective on the same sentences: the source is the sentence with spans replaced
  by [MASK] (span lengths Poisson(3), 30% of the words) and 10% of the other words dropped; the target is the
  sentence. BART-style teacher; students with half its encoder and decoder layers, scratch and distilled.
  Dev token accuracy, exact match and ROUGE-L of greedy decoding.
- Speed: new tokens per second at batch 1 with the KV cache and first-token latency, teacher and best student,
  in PyTorch (transformers' generate) and in ONNX Runtime (tinykd's KV-cache export), the same threads.

- `--seqkd`: a third student per seed, sequence-level KD (Kim & Rush 2016): the teacher's greedy outputs for the
  training sources (`tinykd generate`, once) replace the targets, and the student is distilled on them with the
  same terms and budget as the distilled row ("Seq-KD + Word-KD", their best). The test set stays the real one.

Finished runs are reused: run the same command again to add seeds or continue.

    python bench/generative_kd.py --data ../shared/data                          # both tasks, seeds 0 1 2
    python bench/generative_kd.py --data ../shared/data --tasks causal-lm --seeds 0
    python bench/generative_kd.py --data ../shared/data --tasks seq2seq --seqkd          # adds the seq-level KD row
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tinykd.recipes import load_recipe
from tinykd.run import run
from tinykd.teacher_data import generate_teacher_data

# Sized for 2 CPU cores: a teacher epoch over the 65k sentences in minutes, not hours.
GPT2 = {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 64}
BART = {"encoder_layers": 4, "decoder_layers": 4, "d_model": 128, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512,
        "max_position_embeddings": 64}  # fmt: skip
TEACHERS = {"causal-lm": ("hf:gpt2", GPT2), "seq2seq": ("hf:bart", BART)}
HALF = {"causal-lm": {"n_layer": 3}, "seq2seq": {"encoder_layers": 2, "decoder_layers": 2}}


def read_sentences(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def noised(sentence: str, rng: random.Random, mask_ratio: float = 0.3, drop: float = 0.1) -> str:
    """BART's text infilling and token deletion on words: spans (Poisson(3) long, at least 1) become one [MASK]
    until `mask_ratio` of the words are covered; `drop` of the other words are deleted."""
    words = sentence.split()
    budget = math.ceil(mask_ratio * len(words))
    masked = [False] * len(words)
    while budget > 0 and not all(masked):
        length = min(budget, max(1, _poisson(rng, 3.0)))
        start = rng.randrange(len(words))
        for i in range(start, min(start + length, len(words))):
            if not masked[i]:
                masked[i] = True
                budget -= 1
    out: list[str] = []
    for word, is_masked in zip(words, masked, strict=True):
        if is_masked:
            if not out or out[-1] != "[MASK]":
                out.append("[MASK]")
        elif rng.random() >= drop:
            out.append(word)
    return " ".join(out)


def _poisson(rng: random.Random, lam: float) -> int:
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p < threshold:
            return k
        k += 1


def write_corpus(data: Path, out: Path) -> dict[str, Path]:
    """The causal-lm and seq2seq tables (csv) from SST-2's sentences; the noise is seeded (0)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    rng = random.Random(0)
    for split, source in (("train", "train.tsv"), ("test", "dev.tsv")):
        sentences = read_sentences(data / "sst2" / source)
        lm, s2s = out / f"lm-{split}.csv", out / f"denoise-{split}.csv"
        if not lm.is_file():
            with lm.open("w", newline="") as f:
                csv.writer(f).writerows([("text",), *((s,) for s in sentences)])
        if not s2s.is_file():
            with s2s.open("w", newline="") as f:
                csv.writer(f).writerows([("text", "target"), *((noised(s, rng), s) for s in sentences)])
        files[f"causal-lm-{split}"], files[f"seq2seq-{split}"] = lm, s2s
    return files


def recipe(task: str, files: dict[str, Path], name: str, seed: int, epochs: int, tokenizer: Path | None = None,
           **sections: Any) -> dict[str, Any]:  # fmt: skip
    """A run on the task's tables; `tokenizer` (the teacher's) makes every perplexity one of the same tokens."""
    return {"name": name, "seed": seed,
            "data": {"name": "text", "train": str(files[f"{task}-train"]), "test": str(files[f"{task}-test"]),
                     "task": task, "max_length": 64, "vocab_size": 4000, "batch_size": 64, "eval_batch_size": 128,
                     "val_size": 2000, "tokenizer": str(tokenizer) if tokenizer else None},
            "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                      "schedule": {"name": "cosine", "warmup_epochs": 0.1}, "grad_clip": 1.0},
            "measure": {"enabled": False, "generate_samples": 872}, **sections}  # fmt: skip


def run_once(spec: dict[str, Any], folder: Path, mode: str, overrides: list[str]) -> dict[str, Any]:
    """A finished run's report is read; an interrupted one is resumed (`--resume`); else the run is made."""
    if (folder / "report.json").is_file():
        print(f"reusing {folder}", file=sys.stderr)
        return json.loads((folder / "report.json").read_text())
    if (folder / "checkpoints" / "resume").is_dir():
        print(f"resuming {folder}", file=sys.stderr)
        return run(None, resume=folder, mode=mode).metrics
    return run(load_recipe(spec, overrides), folder, mode=mode).metrics


def row_of(metrics: dict[str, Any], role: str) -> dict[str, Any]:
    return next(r for r in metrics["models"] if r["role"] == role)


def speed(model_dir: Path, task: str, prompts: list[list[int]], new_tokens: int, threads: int) -> dict[str, float]:
    """Generation speed of a saved Hugging Face model in PyTorch and, exported with its KV cache, in ONNX Runtime
    (verified token for token against PyTorch on the prompts first): means over the prompts of the medians."""
    from tinykd.compress.generative import export_generative, load_generative, verify_greedy
    from tinykd.compress.generative_ort import greedy_fn
    from tinykd.measure import generation_speed

    model, _ = load_generative(model_dir, task)
    onnx = export_generative(model_dir, model_dir.parent / "onnx", task=task)
    check = verify_greedy(model, onnx, prompts, new_tokens)
    result: dict[str, float] = {"ort_tokens_matching": check["matching_tokens"],
                                  "ort_tokens_compared": check["compared_tokens"]}
    for runtime, source in (("torch", model), ("ort", onnx)):
        stats = [generation_speed(greedy_fn(source, threads=threads), p, new_tokens) for p in prompts]
        result[f"{runtime}_tokens_per_s"] = statistics.mean(s["tokens_per_s"] for s in stats)
        result[f"{runtime}_first_token_ms"] = statistics.mean(s["first_token_ms"] for s in stats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder with sst2/train.tsv and sst2/dev.tsv")
    parser.add_argument("--tasks", nargs="+", default=["causal-lm", "seq2seq"], choices=["causal-lm", "seq2seq"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    parser.add_argument("--threads", type=int, default=2, help="threads for the speed measurement")
    parser.add_argument("--out", default="runs/generative-kd")
    parser.add_argument("--seqkd", action="store_true", help="add sequence-level KD students (the teacher's outputs "
                        "as targets)")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    files = write_corpus(Path(args.data), out / "data")
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for task in args.tasks:
        name, config = TEACHERS[task]
        teacher_dir = out / task / "teacher"
        spec = recipe(task, files, f"{task}-teacher", 0, args.teacher_epochs,
                      model={"name": name, "kwargs": {"config": config}}, loss_terms={"ce": {"weight": 1.0}})
        teacher = run_once(spec, teacher_dir, "train", args.overrides)
        rows: dict[str, list[dict[str, Any]]] = {"scratch": [], "distilled": [], "seqkd": []}
        outputs = _teacher_outputs(task, files, teacher_dir, args.overrides) if args.seqkd else None
        for seed in args.seeds:
            scratch = run_once(recipe(task, files, f"{task}-scratch", seed, args.student_epochs,
                                      teacher_dir / "tokenizer",
                                      model={"name": name, "kwargs": {"config": {**config, **HALF[task]}}},
                                      loss_terms={"ce": {"weight": 1.0}}),
                               out / task / f"scratch-{seed}", "train", args.overrides)  # fmt: skip
            distilled = run_once(recipe(task, files, f"{task}-distill", seed, args.student_epochs,
                                        teacher={"name": name, "checkpoint": str(teacher_dir)},
                                        student={"name": name, "init_from_teacher": "every-other"},
                                        loss_terms={"ce": {"weight": 0.5},
                                                    "token_kd": {"weight": 0.5, "temperature": 1.0}}),
                                 out / task / f"distill-{seed}", "distill", args.overrides)  # fmt: skip
            rows["scratch"].append(row_of(scratch, "model"))
            rows["distilled"].append(row_of(distilled, "student"))
            if outputs is not None:
                seqkd = run_once(recipe(task, {**files, f"{task}-train": outputs}, f"{task}-seqkd", seed,
                                        args.student_epochs, teacher={"name": name, "checkpoint": str(teacher_dir)},
                                        student={"name": name, "init_from_teacher": "every-other"},
                                        loss_terms={"ce": {"weight": 0.5},
                                                    "token_kd": {"weight": 0.5, "temperature": 1.0}}),
                                 out / task / f"seqkd-{seed}", "distill", args.overrides)  # fmt: skip
                rows["seqkd"].append(row_of(seqkd, "student"))
            print(f"{task} seed {seed}: scratch ppl {rows['scratch'][-1]['test_perplexity']:.2f}, distilled "
                  f"{rows['distilled'][-1]['test_perplexity']:.2f}", file=sys.stderr)  # fmt: skip
        results[task] = {"teacher": row_of(teacher, "model"), **{k: v for k, v in rows.items() if v}}
        best = min(range(len(args.seeds)), key=lambda i: rows["distilled"][i]["test_perplexity"])
        prompts = _prompts(files[f"{task}-test"], teacher_dir / "tokenizer", task)
        results[task]["speed"] = {
            "teacher": speed(teacher_dir / "model", task, prompts, 32, args.threads),
            "student": speed(out / task / f"distill-{args.seeds[best]}" / "model", task, prompts, 32, args.threads),
        }
    text = report(results, args.seeds, time.perf_counter() - start)
    print(text)
    (out / "generative_kd.md").write_text(text + "\n")
    (out / "generative_kd.json").write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2))


def _teacher_outputs(task: str, files: dict[str, Path], teacher_dir: Path, overrides: list[str]) -> Path:
    """The teacher's greedy outputs for the training texts (the validation split left out), made once."""
    target = teacher_dir.parent / "teacher-outputs.csv"
    if not target.is_file():
        name = TEACHERS[task][0]
        spec = recipe(task, files, f"{task}-generate", 0, 1, teacher={"name": name, "checkpoint": str(teacher_dir)},
                      student={"name": name}, loss_terms={"ce": {"weight": 1.0}})  # fmt: skip
        generate_teacher_data(load_recipe(spec, overrides), target)
    return target


def _prompts(test_file: Path, tokenizer_dir: Path, task: str, count: int = 4) -> list[list[int]]:
    """Real prompts: the first test texts (causal-lm: their first 8 tokens, no end token; seq2seq: the sources)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    with test_file.open(newline="") as f:
        texts = [row["text"] for _, row in zip(range(count), csv.DictReader(f), strict=False)]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    return [i[:-1][:8] for i in ids] if task == "causal-lm" else ids


def _stat(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> str:
    values = [scale * r[key] for r in rows]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ({std:.2f})"


def report(results: dict[str, Any], seeds: list[int], seconds: float) -> str:
    lines = [f"SST-2 sentences, seeds {seeds} ({seconds:.0f} s); mean (std) over seeds", ""]
    for task, r in results.items():
        keys = [("test_perplexity", "dev ppl", 1.0), ("test_accuracy", "token acc %", 100.0)]
        if task == "seq2seq":
            keys += [("test_rouge_l", "ROUGE-L", 100.0), ("test_exact_match", "exact match %", 100.0)]
        lines += [f"### {task}", "", "| model | " + " | ".join(k[1] for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]  # fmt: skip
        lines.append("| teacher | " + " | ".join(_stat([r["teacher"]], k, s) for k, _, s in keys) + " |")
        students = [label for label in ("scratch", "distilled", "seqkd") if r.get(label)]
        for label in students:
            lines.append(f"| {label} | " + " | ".join(_stat(r[label], k, s) for k, _, s in keys) + " |")
        ppl = [statistics.mean(x["test_perplexity"] for x in r[label]) for label in ("scratch", "distilled")]
        lines += ["", f"distilled dev perplexity vs scratch: {100 * (1 - ppl[1] / ppl[0]):+.1f}% lower"]
        if task == "seq2seq":
            rouge = [statistics.mean(x["test_rouge_l"] for x in r[label]) for label in ("scratch", "distilled")]
            lines.append(f"distilled ROUGE-L vs scratch: {100 * (rouge[1] - rouge[0]):+.2f} points")
            if r.get("seqkd"):
                seq = statistics.mean(x["test_rouge_l"] for x in r["seqkd"])
                lines.append(f"seq-level KD ROUGE-L vs scratch: {100 * (seq - rouge[0]):+.2f} points")
        sp = r["speed"]
        for runtime in ("torch", "ort"):
            t, s = sp["teacher"][f"{runtime}_tokens_per_s"], sp["student"][f"{runtime}_tokens_per_s"]
            lines.append(f"{runtime}: {t:.0f} -> {s:.0f} new tokens/s at batch 1 ({s / t:.2f}x); first token "
                         f"{sp['teacher'][f'{runtime}_first_token_ms']:.2f} -> "
                         f"{sp['student'][f'{runtime}_first_token_ms']:.2f} ms")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
