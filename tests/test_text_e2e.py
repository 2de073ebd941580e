"""Text, end to end through the CLI: a tiny BERT teacher trained from scratch with its own WordPiece, a
DistilBERT-style student started from its layers, TinyBERT and MiniLM terms, masked-LM pre-training then
fine-tuning, the Hugging Face directories a run writes, and the edge tools (eval, export, quantize, profile,
compare) on text. Small files and models made here; no hub, no network.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import THREADS
from tinykd.cli import main

os.environ["HF_HUB_OFFLINE"] = "1"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "weak"]
FILLER = ["the", "movie", "was", "a", "film", "plot", "very", "quite", "and", "story", "acting", "really", '"so"']
TINY = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}  # fmt: skip


def write_texts(folder: Path, seed: int = 0) -> Path:
    """Sentiment-like sentences (one telling word among fillers, quote characters included), csv and tsv."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(n: int) -> list[tuple[str, int]]:
        out = []
        for _ in range(n):
            label = rng.randint(0, 1)
            words = [*rng.choices(FILLER, k=rng.randint(3, 14)), rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            out.append((" ".join(words), label))
        return out

    for name, n in (("train", 320), ("test", 80)):
        with (folder / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows(n))
    return folder


def recipe(folder: Path, name: str, **sections: object) -> Path:
    base = {"name": name, "seed": 0,
            "data": {"name": "text", "train": "data/train.csv", "test": "data/test.csv", "max_length": 32,
                     "vocab_size": 120, "batch_size": 16, "eval_batch_size": 32, "val_size": 0.1},
            "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 3.0e-3}, "log_every": 5},
            "runtime": {"device": "cpu"}, "measure": {"latency_repeats": 3, "throughput_batch": 4,
                                                      "sequence_length": 16}}  # fmt: skip
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value  # type: ignore[dict-item]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    write_texts(folder / "data")
    return folder


@pytest.fixture(scope="module")
def teacher_run(workdir: Path) -> Path:
    """A tiny BERT classifier trained from scratch, with a WordPiece trained on the training texts."""
    path = recipe(workdir, "teacher", model={"name": "hf:bert", "kwargs": {"config": TINY}},
                  train={"epochs": 6})  # fmt: skip
    proc = run_cli(workdir, "train", str(path), "--out", "teacher")
    assert "on cpu, 1 process, fp32;" in proc.stdout and "train texts" in proc.stdout
    return workdir / "teacher"


def run_cli(cwd: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "TINYKD_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(THREADS)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "tinykd", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_a_teacher_from_scratch_writes_its_tokenizer_and_a_hugging_face_directory(teacher_run: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    metrics = report(teacher_run)
    assert metrics["models"][0]["test_accuracy"] > 0.9, metrics  # one telling word per sentence: easy
    assert metrics["models"][0]["model"] == "hf:bert" and metrics["sequence_length"] == 16
    tokenizer = AutoTokenizer.from_pretrained(str(teacher_run / "tokenizer"))
    assert tokenizer.cls_token == "[CLS]" and len(tokenizer) <= 120
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher_run / "model")).eval()
    again = AutoTokenizer.from_pretrained(str(teacher_run / "model"))
    batch = again(["a superb film", "the plot was dull"], return_tensors="pt", padding=True)
    assert model(**batch).logits.argmax(-1).tolist() == [1, 0]


def test_distilbert_style_student_from_every_other_layer(workdir: Path, teacher_run: Path) -> None:
    from safetensors.torch import load_file

    path = recipe(workdir, "student", teacher={"name": "hf:bert", "checkpoint": "teacher"},
                  student={"name": "hf:bert", "init_from_teacher": "every-other"},
                  loss_terms={"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 2.0},
                              "cosine": {"weight": 0.1}})  # fmt: skip
    dry = run_cli(workdir, "distill", str(path), "--dry-run")
    assert "0.5 * ce" in dry.stdout and "0.1 * cosine" in dry.stdout
    run_cli(workdir, "distill", str(path), "--out", "student")
    metrics = report(workdir / "student")
    teacher, student = metrics["models"]
    assert student["params"] < teacher["params"] and student["test_accuracy"] > 0.8, metrics
    saved = load_file(str(workdir / "student" / "checkpoints" / "best.safetensors"))
    assert "bert.encoder.layer.0.attention.self.query.weight" in saved
    assert not any(k.startswith("bert.encoder.layer.1.") for k in saved), "one of two layers is kept"
    meta = json.loads(Path(workdir / "student" / "model" / "config.json").read_text())
    assert meta["num_hidden_layers"] == 1
    losses = [r for r in map(json.loads, (workdir / "student" / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "train"]  # fmt: skip
    assert {"loss/ce", "loss/kd", "loss/cosine"} <= set(losses[0]) and np.isfinite(losses[-1]["loss"])


def test_the_edge_tools_on_a_text_student(workdir: Path, teacher_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval, export, quantize, profile and compare through the Python API the CLI calls (one process: no start-up
    per tool); the CLI's own wiring is tested on images in test_compress.py."""
    if not (workdir / "student").is_dir():
        pytest.skip("needs the student of the previous test")
    import onnx

    from tinykd.compress.compare import compare_models
    from tinykd.compress.export import export_checkpoint
    from tinykd.compress.profile import profile_model
    from tinykd.compress.quantize import quantize_model
    from tinykd.evaluate import evaluate_checkpoint

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TINYKD_OFFLINE", "1")
    assert evaluate_checkpoint("student", measure=False)["test_accuracy"] > 0.8
    path, exported = export_checkpoint("student")
    assert exported["verification"]["images"] == 80 and exported["verification"]["max_abs_diff"] < 1e-3
    proto = onnx.load(str(path))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    assert all(isinstance(d[0], str) and isinstance(d[1], str) for d in inputs.values()), inputs  # dynamic axes
    int8, quantized = quantize_model("student", repeats=3, batch=4)
    assert quantized["mode"] == "dynamic" and "Gather" in quantized["op_types"]  # the embeddings too
    assert quantized["size_after"] < quantized["size_before"] and quantized["accuracy_drop_points"] < 10
    assert sorted(p.name for p in workdir.iterdir() if p.suffix in (".onnx", ".data")) == [], "ORT's temporary files"
    rows, _ = profile_model("student", repeats=3, batch=4)
    assert [r["sequence_length"] for r in rows] == [16, 64, 16, 64]  # 128 is past the model's 64 positions
    assert rows[1]["macs"] > 3 * rows[0]["macs"] and rows[2]["format"] == "onnx fp32 (ort)"
    rows, _ = compare_models(["teacher", "student", str(int8)], repeats=3, batch=4)
    assert [r["format"] for r in rows] == ["pytorch fp32", "pytorch fp32", "onnx int8"]
    assert all(r["test_accuracy"] > 0.8 for r in rows) and rows[1]["compression"] > 1


def test_a_text_student_distilled_to_4_bit_weights_and_tables_ships_as_one_onnx_file(workdir: Path,
                                                                                     teacher_run: Path) -> None:
    """Quantization-aware distillation of a text student (recipe `quantize` with `embeddings: true`) against
    post-training int4 of the same student (`quantize --mode int4`): both are ONNX files with MatMulNBits and
    INT4 tables, and ONNX Runtime's accuracy is the converted PyTorch model's."""
    pytest.importorskip("torchao")
    from tinykd.compress.quantize import quantize_model

    if not (workdir / "student").is_dir():
        pytest.skip("needs the student of test_distilbert_style_student_from_every_other_layer")
    path, ptq = quantize_model(str(workdir / "student"), "int4", repeats=3, batch=4, group_size=16)
    assert path == workdir / "student" / "model.int4.onnx" and path.is_file()
    assert ptq["matmul_nbits"] == "8 of 8 linear layers" and ptq["int4_tables"] == "3 of 3 embedding tables"
    # the tensors: half a byte per weight and a scale per 16 (a file this tiny is mostly its graph)
    assert ptq["weight_bytes"] * 3 < 4 * ptq["params"] and ptq["size_after"] * 2 < ptq["size_before"], ptq
    assert ptq["accuracy_after"] > 0.7, ptq
    with pytest.raises(Exception, match="--group-size=64 does not divide the 32 inputs"):
        quantize_model(str(workdir / "student"), "int4", repeats=3, batch=4, group_size=64, overwrite=True)
    spec = {"weights": "int4", "activations": "none", "granularity": "per-group", "group_size": 16,
            "embeddings": True}  # fmt: skip
    qat = recipe(workdir, "qat", teacher={"name": "hf:bert", "checkpoint": "teacher"},
                 student={"name": "hf:bert", "checkpoint": "student"}, train={"epochs": 1}, quantize=spec,
                 loss_terms={"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 2.0}})  # fmt: skip
    run_cli(workdir, "distill", str(qat), "--out", "qat")
    rows = {r["role"]: r for r in report(workdir / "qat")["models"]}
    row = rows["student (int4 QAT)"]
    assert row["format"] == "onnx int4 QAT (MatMulNBits)" and row["int4_tables"] == "3 of 3 embedding tables"
    assert abs(row["test_accuracy"] - row["test_accuracy_pytorch"]) <= 1 / 80, row  # weight-only: the same sums
    assert row["test_accuracy"] > 0.7 and row["weight_bytes"] * 3 < 4 * rows["student"]["params"], row


def test_tinybert_and_minilm_terms_train_a_narrow_student(workdir: Path, teacher_run: Path) -> None:
    narrow = {**TINY, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "attention_probs_dropout_prob": 0.0}  # fmt: skip
    path = recipe(workdir, "tiny", teacher={"name": "hf:bert", "checkpoint": "teacher"},
                  student={"name": "hf:bert", "kwargs": {"config": narrow}}, train={"epochs": 1},
                  loss_terms={"ce": {"weight": 0.5}, "kd": {"weight": 0.5}, "hidden": {"type": "hidden_mse"},
                              "attention": {"type": "attention_mse"}, "minilm": {"weight": 0.5}})  # fmt: skip
    proc = run_cli(workdir, "distill", str(path), "--out", "tiny")
    assert "eager attention" in proc.stdout + proc.stderr  # BERT comes with sdpa, which returns no probabilities
    records = [r for r in map(json.loads, (workdir / "tiny" / "metrics.jsonl").read_text().splitlines())
               if r.get("event") == "train"]  # fmt: skip
    assert all(np.isfinite(r[f"loss/{k}"]) and r[f"loss/{k}"] >= 0 for r in records
               for k in ("hidden", "attention", "minilm"))  # fmt: skip


@pytest.fixture(scope="module")
def pretrain_run(workdir: Path) -> Path:
    """A tiny BERT masked LM pre-trained on the training texts (its WordPiece is the teacher's: same texts)."""
    path = recipe(workdir, "pretrain", data={"task": "masked-lm", "val_size": 32},
                  model={"name": "hf:bert", "kwargs": {"config": TINY}}, train={"epochs": 1})  # fmt: skip
    run_cli(workdir, "train", str(path), "--out", "pretrain")
    return workdir / "pretrain"


def test_masked_lm_pre_training_then_fine_tuning(workdir: Path, pretrain_run: Path) -> None:
    metrics = report(pretrain_run)
    assert 0 <= metrics["models"][0]["test_accuracy"] <= 1  # top-1 over the masked tokens
    config = json.loads((workdir / "pretrain" / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    finetune = recipe(workdir, "finetune", model={"name": "hf:pretrain/model"}, train={"epochs": 1})
    proc = run_cli(workdir, "train", str(finetune), "--out", "finetune")
    assert "train texts" in proc.stdout
    # the classifier started from the pre-trained encoder (a fresh one would not resemble it at all)
    from safetensors.torch import load_file

    before = load_file(str(workdir / "pretrain" / "model" / "model.safetensors"))
    after = load_file(str(workdir / "finetune" / "checkpoints" / "last.safetensors"))
    key = "bert.embeddings.word_embeddings.weight"
    similarity = torch.nn.functional.cosine_similarity(before[key].flatten(), after[key].flatten(), dim=0)
    assert similarity > 0.9, similarity
    assert "classifier.weight" in after and "cls.predictions.bias" not in after


def test_tinybert_augmentation_distils_on_swapped_words(workdir: Path, teacher_run: Path, pretrain_run: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """data.text_augment with a masked-LM run folder: the table is found once, then read from the cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    path = recipe(workdir, "augmented", teacher={"name": "hf:bert", "checkpoint": "teacher"},
                  student={"name": "hf:bert", "kwargs": {"config": {**TINY, "num_hidden_layers": 1}}},
                  data={"text_augment": {"model": "pretrain"}}, train={"epochs": 1},
                  loss_terms={"kd": {"weight": 1.0, "temperature": 1.0}})  # fmt: skip
    first = run_cli(workdir, "distill", str(path), "--out", "augmented")
    assert "data.text_augment: finding 15 swaps per word of 320 texts" in first.stdout, first.stdout
    assert (workdir / "augmented" / "recipe.yaml").read_text().count("word_prob: 0.4") == 1
    second = run_cli(workdir, "distill", str(path), "--out", "augmented-again")
    assert "finding" not in second.stdout and len(list((workdir / "cache").rglob("*.safetensors"))) == 1
    assert report(workdir / "augmented")["models"][1]["test_accuracy"] == \
        report(workdir / "augmented-again")["models"][1]["test_accuracy"]  # fmt: skip


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_cpu_ranks_distil_text(workdir: Path, teacher_run: Path) -> None:
    path = recipe(workdir, "ranks", teacher={"name": "hf:bert", "checkpoint": "teacher"},
                  student={"name": "hf:bert", "init_from_teacher": [1]}, train={"epochs": 1},
                  loss_terms={"ce": {"weight": 0.5}, "kd": {"weight": 0.5}})  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "TINYKD_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tinykd",
           "distill", str(path), "--out", "ranks"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cpu, 2 processes (GLOO), fp32;" in proc.stdout and "global batch 32 (16 per process x 2)" in proc.stdout
    assert [row["role"] for row in report(workdir / "ranks")["models"]] == ["teacher", "student"]


@pytest.mark.parametrize(
    ("data", "message"),
    [({"text_column": "review"}, "no column 'review'"),
     ({"label_column": "stars"}, "stars"),
     ({"train": "data/empty.csv"}, "empty"),
     ({"train": "data/words.csv"}, "class names in")],
)
def test_bad_text_data_is_one_line_before_training(workdir: Path, data: dict, message: str) -> None:
    (workdir / "data" / "empty.csv").write_text("")
    (workdir / "data" / "words.csv").write_text("text,label\ngood film,positive\nbad film,negative\n")
    path = recipe(workdir, "bad", data=data, model={"name": "hf:bert", "kwargs": {"config": TINY}})
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        main(["train", str(path), "--dry-run"])  # in-process: the CLI's one-line error path, without start-up
    lines = err.getvalue().strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("tinykd: error: ") and message in lines[0]
