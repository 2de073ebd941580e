"""The XLA path, for real, on the CPU (PJRT_DEVICE=CPU), in the torch_xla environment (.venv-xla).

`make test` runs this folder with .venv-xla/bin/pytest; the main suite ignores it (no torch_xla there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import tinykd
from tinykd import create_model
from tinykd.models.checkpoint import save_model

pytestmark = pytest.mark.skipif(os.environ.get("PJRT_DEVICE") != "CPU", reason="run with PJRT_DEVICE=CPU")
FITNET = {"type": "fitnet", "weight": 1.0, "student": "stage2", "teacher": "stage2"}


def recipe(tmp_path: Path, steps: int, hint: bool, device: str = "xla") -> dict:
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        save_model(create_model("cnn_small", num_classes=10, in_channels=1), teacher, {"model": "cnn_small"})
    terms = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}
    if hint:
        terms["hint"] = FITNET
    return {
        "name": "xla", "seed": 0,
        "data": {"name": "digits", "batch_size": 32, "eval_batch_size": 64, "val_size": 0.1, "augment": False},
        "teacher": {"name": "cnn_small", "checkpoint": str(teacher)},
        "student": {"name": "cnn_small"},
        "loss_terms": terms,
        # one epoch of `steps` steps, lr schedule changing every step (it must not recompile)
        "train": {"epochs": 1, "max_steps_per_epoch": steps, "log_every": 5,
                  "schedule": {"name": "cosine", "warmup_epochs": 0.2}},
        "runtime": {"device": device}, "measure": {"enabled": False},
    }  # fmt: skip


def train_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


def run_in_fresh_process(tmp_path: Path, data: dict, name: str) -> dict:
    """A new process per run: XLA caches compiled graphs in memory, which would hide the second run's."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "tinykd", "distill", str(path), "--out", str(tmp_path / name)],
                          env={**os.environ, "PJRT_DEVICE": "CPU"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / name / "report.json").read_text())


def test_compilations_do_not_grow_with_steps_and_one_execution_per_step(tmp_path: Path) -> None:
    """CE + KD + a FitNet hint read by forward hooks (the plain KD graph is the same without the hook's terms)."""
    reports = {n: run_in_fresh_process(tmp_path, recipe(tmp_path, n, hint=True), f"run{n}") for n in (10, 30)}
    for report in reports.values():
        assert report["device"].startswith("xla"), report["device"]
    short, long = reports[10]["xla"], reports[30]["xla"]
    # the step loop: the first step (the optimizer creates its state) and the steady step, whatever the length
    assert short["train_compilations"] == long["train_compilations"] <= 3, (short, long)
    # and everything in fit, validation included: still independent of the number of steps
    assert short["compilations"] == long["compilations"], (short, long)
    val_batches = -(-144 // 64)  # digits: 144 validation images, padded to whole batches of 64
    for steps, counts in ((10, short), (30, long)):
        assert counts["train_steps"] == steps
        assert counts["train_executions"] == steps, counts  # one graph per step: no hidden syncs
        assert counts["executions"] == steps + val_batches, counts


def test_losses_match_eager_cpu(tmp_path: Path) -> None:
    """Same seed, same data order: step 1 agrees to 1e-4 (relative); steps 2-10 to 1e-2, since float rounding
    differs between XLA's fused kernels and eager ones and compounds through SGD with momentum."""
    data = recipe(tmp_path, 10, hint=True)
    data["train"]["log_every"] = 1
    xla = tinykd.run(data, out=tmp_path / "xla")
    cpu_recipe = tmp_path / "cpu.yaml"
    cpu_recipe.write_text(yaml.safe_dump({**data, "runtime": {"device": "cpu"}}))
    env = {**os.environ, "PJRT_DEVICE": ""}
    proc = subprocess.run([sys.executable, "-m", "tinykd", "distill", str(cpu_recipe), "--out", str(tmp_path / "cpu")],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "cpu" / "report.json").read_text())["device"] == "cpu"
    xla_losses, cpu_losses = train_losses(xla.run_dir), train_losses(tmp_path / "cpu")
    assert len(xla_losses) == len(cpu_losses) == 10
    assert xla_losses[0] == pytest.approx(cpu_losses[0], rel=1e-4), (xla_losses, cpu_losses)
    for a, b in zip(xla_losses, cpu_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-2), (xla_losses, cpu_losses)


def test_a_run_stopped_on_xla_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """SIGTERM at step 5 of 16, resume: the student equals the uninterrupted run's, and the resumed process
    compiles no more step graphs than a fresh one (the restored statistics take the steady graph's shapes)."""
    from safetensors.torch import load_file

    data = recipe(tmp_path, 8, hint=True)
    data["train"].update(epochs=2, checkpoint_every=3)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    worker = Path(__file__).resolve().parents[1] / "kill_worker.py"

    def tinykd_cli(*args: str, kill: str | None = None) -> subprocess.CompletedProcess:
        prefix = [sys.executable, str(worker), kill, "--"] if kill else [sys.executable, "-m", "tinykd"]
        return subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=600)

    whole = tinykd_cli("distill", str(path), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = tinykd_cli("distill", str(path), "--out", str(tmp_path / "run"), kill="signal:5:SIGTERM")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped on SIGTERM at epoch 1, step 5" in stopped.stderr
    resumed = tinykd_cli("distill", "--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["device"].startswith("xla")
    assert report["xla"]["train_steps"] == 16 and report["xla"]["train_executions"] == 11, report["xla"]
    assert report["xla"]["train_compilations"] <= 2, report["xla"]
    want = load_file(str(tmp_path / "whole" / "checkpoints" / "last.safetensors"))
    got = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), {k: (want[k] - got[k]).abs().max() for k in want}


# --- text: a tiny BERT pair on XLA, every batch padded to data.max_length -----------------------------------------


def text_recipe(tmp_path: Path, steps: int) -> dict:
    """A 2-layer BERT teacher (a Hugging Face directory with its WordPiece) distilled into a 1-layer student."""
    import csv
    import random

    from transformers import BertConfig, BertForSequenceClassification

    from tinykd.data.text import train_wordpiece
    from tinykd.models.hf import save_hf_directory

    teacher_dir = tmp_path / "teacher"
    if not teacher_dir.exists():
        rng = random.Random(0)
        words = ["good", "bad", "film", "plot", "the", "was", "very", "dull", "fine", "story", "acting", "a"]
        rows = [(" ".join(rng.choices(words, k=rng.randint(2, 12))), rng.randint(0, 1)) for _ in range(400)]
        for name, part in (("train", rows[:320]), ("test", rows[320:])):
            with (tmp_path / f"{name}.csv").open("w", newline="") as f:
                csv.writer(f).writerows([("text", "label"), *part])
        tokenizer = train_wordpiece([r[0] for r in rows[:320]], vocab_size=100)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32, num_labels=2)  # fmt: skip
        save_hf_directory(BertForSequenceClassification(config), teacher_dir, tokenizer)
    student = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 32}  # fmt: skip
    return {
        "name": "xla-text", "seed": 0,
        "data": {"name": "text", "train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv"),
                 "max_length": 16, "batch_size": 8, "eval_batch_size": 16, "val_size": 16},
        "teacher": {"name": f"hf:{teacher_dir}"},
        "student": {"name": "hf:bert", "kwargs": {"config": student}},
        "loss_terms": {"ce": {"weight": 0.2}, "kd": {"weight": 0.8, "temperature": 2.0}, "cosine": {"weight": 0.1}},
        "train": {"epochs": 1, "max_steps_per_epoch": steps, "log_every": 5,
                  "optimizer": {"name": "adamw", "lr": 1.0e-3}},
        "runtime": {"device": "xla"}, "measure": {"enabled": False},
    }  # fmt: skip


def test_text_distillation_compiles_a_constant_number_of_graphs(tmp_path: Path) -> None:
    """Text batches vary in length; on XLA they are padded to data.max_length, so 10 or 30 steps compile the
    same graphs, and each step is one graph execution."""
    reports = {n: run_in_fresh_process(tmp_path, text_recipe(tmp_path, n), f"text{n}") for n in (10, 30)}
    short, long = reports[10]["xla"], reports[30]["xla"]
    assert reports[10]["device"].startswith("xla")
    assert short["train_compilations"] == long["train_compilations"] <= 3, (short, long)
    assert short["compilations"] == long["compilations"], (short, long)
    for steps, counts in ((10, short), (30, long)):
        assert counts["train_steps"] == steps
        assert counts["train_executions"] == steps, counts
        assert counts["executions"] == steps + 1, counts  # 16 validation texts: one padded batch of 16


def lm_recipe(tmp_path: Path, steps: int) -> dict:
    """A tiny GPT-2 teacher (saved with its tokenizer) and a 1-layer GPT-2 student, causal-lm on short texts."""
    import csv
    import random

    from transformers import GPT2Config, GPT2LMHeadModel

    from tinykd.data.text import train_wordpiece
    from tinykd.models.hf import save_hf_directory

    teacher_dir = tmp_path / "gpt2-teacher"
    if not teacher_dir.exists():
        rng = random.Random(0)
        words = ["good", "bad", "movie", "plot", "the", "a", "fun", "dull", "story", "actor"]
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(400)]
        for name, part in (("lm-train", texts[:320]), ("lm-test", texts[320:])):
            with (tmp_path / f"{name}.csv").open("w", newline="") as f:
                csv.writer(f).writerows([("text",), *((t,) for t in part)])
        tokenizer = train_wordpiece(texts[:320], vocab_size=100)
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=32,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        save_hf_directory(GPT2LMHeadModel(config), teacher_dir, tokenizer)
    return {
        "name": "xla-lm", "seed": 0,
        "data": {"name": "text", "train": str(tmp_path / "lm-train.csv"), "test": str(tmp_path / "lm-test.csv"),
                 "task": "causal-lm", "max_length": 16, "batch_size": 8, "eval_batch_size": 16, "val_size": 16},
        "teacher": {"name": f"hf:{teacher_dir}"},
        "student": {"name": "hf:gpt2", "kwargs": {"config": {"n_layer": 1, "n_embd": 32, "n_head": 2,
                                                             "n_positions": 32}}},
        "loss_terms": {"ce": {"weight": 0.5}, "token_kd": {"weight": 0.5, "temperature": 2.0}},
        "train": {"epochs": 1, "max_steps_per_epoch": steps, "log_every": 5,
                  "optimizer": {"name": "adamw", "lr": 1.0e-3}},
        "runtime": {"device": "xla"}, "measure": {"enabled": False},
    }  # fmt: skip


def test_causal_lm_distillation_compiles_a_constant_number_of_graphs(tmp_path: Path) -> None:
    """Texts padded to data.max_length (fixed blocks): 10 or 30 token_kd steps on a tiny GPT-2 compile the same
    graphs, one execution per step."""
    reports = {n: run_in_fresh_process(tmp_path, lm_recipe(tmp_path, n), f"lm{n}") for n in (10, 30)}
    short, long = reports[10]["xla"], reports[30]["xla"]
    assert reports[10]["device"].startswith("xla")
    assert short["train_compilations"] == long["train_compilations"] <= 3, (short, long)
    assert short["compilations"] == long["compilations"], (short, long)
    for steps, counts in ((10, short), (30, long)):
        assert counts["train_executions"] == steps, counts
    student = next(r for r in reports[30]["models"] if r["role"] == "student")
    assert 1.0 < student["test_perplexity"] < float("inf")
