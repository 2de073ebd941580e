"""Generative students: causal-lm and seq2seq data, token_kd, layer-copied decoders, generation scores, runs.

Everything is tiny (32-wide models, a 100-token vocabulary, a few hundred short made-up texts written here);
nothing touches the network or the benchmark data folder.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from tinykd.data.text import Encoded, TextDataset, packed, train_wordpiece, with_eos
from tinykd.errors import TinykdError
from tinykd.generation import perplexity, seq2seq_scores
from tinykd.losses import Outputs, build_loss_term
from tinykd.losses.token_kd import token_kl
from tinykd.models.hf import save_hf_directory, student_from_teacher
from tinykd.recipes import load_recipe
from tinykd.run import run
from tinykd.tasks import get_task
from tinykd.teacher_data import generate_teacher_data

WORDS = ["the", "a", "good", "bad", "movie", "film", "plot", "actor", "great", "awful", "fun", "dull", "story",
         "music", "scene"]  # fmt: skip


def write_pairs(folder: Path, n_train: int = 240, n_test: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Sentences of the toy vocabulary, each with its words reversed as the seq2seq target."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train", n_train), ("test", n_test)):
        path = folder / f"{name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "target"])
            for _ in range(n):
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
                writer.writerow([" ".join(words), " ".join(reversed(words))])
        paths.append(path)
    return paths[0], paths[1]


def tokenizer() -> object:
    return train_wordpiece([" ".join(WORDS)] * 4, vocab_size=100)


def dataset(task: str, texts: list[str], targets: list[str] | None = None, static: bool = False) -> TextDataset:
    tok = tokenizer()
    enc = tok(texts)["input_ids"]
    encoded = Encoded(np.concatenate([np.array(e, np.int32) for e in enc]),
                      np.cumsum([0] + [len(e) for e in enc]).astype(np.int64))  # fmt: skip
    decoder = None
    if targets is not None:
        dec = tok(targets)["input_ids"]
        decoder = Encoded(np.concatenate([np.array(e, np.int32) for e in dec]),
                          np.cumsum([0] + [len(e) for e in dec]).astype(np.int64))  # fmt: skip
    return TextDataset(encoded, tok, task=get_task(task), max_length=16, static_shapes=static, decoder=decoder)


# --- data ---------------------------------------------------------------------------------------------------------


def test_causal_lm_targets_are_the_next_tokens_and_padding_predicts_nothing() -> None:
    data = dataset("causal-lm", ["good movie", "the bad film plot"])
    inputs, targets = data.get_batch([0, 1])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == targets.shape == (2, 6)  # [CLS] the bad film plot [SEP]
    for row in range(2):
        n = int(mask[row].sum())
        assert targets[row, : n - 1].tolist() == ids[row, 1:n].tolist()
        assert (targets[row, n - 1 :] == -100).all()  # the last real token and the padding predict nothing
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0]


def test_packing_cuts_the_joined_texts_into_blocks() -> None:
    encoded = Encoded(np.arange(10, dtype=np.int32), np.array([0, 3, 7, 10]))
    blocks = packed(encoded, 4)
    assert blocks.offsets.tolist() == [0, 4, 8, 10]
    assert blocks.ids.tolist() == list(range(10))


def test_every_text_ends_with_the_end_token_within_max_length() -> None:
    encoded = Encoded(np.array([5, 6, 7, 8, 9, 10, 9], np.int32), np.array([0, 3, 6, 7]))
    out = with_eos(encoded, 9, max_length=3)
    rows = [out.ids[a:b].tolist() for a, b in zip(out.offsets[:-1], out.offsets[1:], strict=True)]
    assert rows == [[5, 6, 9], [8, 9, 9], [9]]
    ending = Encoded(np.array([5, 9, 6, 9], np.int32), np.array([0, 2, 4]))
    assert with_eos(ending, 9, 8) is ending  # the tokenizer added it already: nothing copied


def test_seq2seq_decoder_reads_the_target_shifted_right() -> None:
    data = dataset("seq2seq", ["good movie", "bad film plot"], ["movie good", "plot film"], static=True)
    data.decoder_start_id = 7
    inputs, labels = data.get_batch([0, 1])
    assert labels.shape == inputs["decoder_input_ids"].shape == (2, 16)  # static shapes: max_length
    for row in range(2):
        n = int(inputs["decoder_attention_mask"][row].sum())
        real = labels[row, :n].tolist()
        assert -100 not in real and (labels[row, n:] == -100).all()
        assert inputs["decoder_input_ids"][row, :n].tolist() == [7, *real[:-1]]
        assert (inputs["decoder_input_ids"][row, n:] == data.pad_id).all()
    assert inputs["input_ids"].shape == (2, 16)


# --- token_kd -----------------------------------------------------------------------------------------------------


def _outputs(logits: torch.Tensor, mask: torch.Tensor | None = None) -> Outputs:
    return Outputs(logits, mask=mask)


def test_token_kd_is_zero_for_identical_logits_and_matches_a_hand_computed_case() -> None:
    logits = torch.randn(2, 3, 5)
    targets = torch.zeros(2, 3, dtype=torch.long)
    for direction in ("forward", "reverse"):
        term = build_loss_term("token_kd", {"direction": direction})
        assert term(_outputs(logits), _outputs(logits.clone()), targets).abs() < 1e-6
    s = torch.tensor([[[0.0, 0.0]]])
    t = torch.tensor([[[0.0, float(np.log(3.0))]]])  # teacher (1/4, 3/4), student (1/2, 1/2)
    forward = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    reverse = 0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0)
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert token_kl(s, t, valid).item() == pytest.approx(forward, rel=1e-5)
    assert token_kl(s, t, valid, reverse=True).item() == pytest.approx(reverse, rel=1e-5)
    assert token_kl(s, t, valid, temperature=2.0).item() == pytest.approx(
        4 * token_kl(s / 2, t / 2, valid).item(), rel=1e-5)  # fmt: skip


def test_token_kd_ignores_padding_and_positions_without_a_target() -> None:
    student, teacher = torch.randn(1, 4, 6, requires_grad=True), torch.randn(1, 4, 6)
    targets = torch.tensor([[1, 2, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 0]])
    term = build_loss_term("token_kd", {})
    loss = term(_outputs(student, mask), _outputs(teacher, mask), targets)
    changed = teacher.clone()
    changed[0, 2:] = torch.randn(2, 6) * 10  # only where nothing counts
    assert term(_outputs(student, mask), _outputs(changed, mask), targets).item() == pytest.approx(loss.item())
    loss.backward()
    assert student.grad[0, 2:].abs().sum() == 0 and student.grad[0, :2].abs().sum() > 0


def test_token_kd_refuses_one_prediction_per_sample() -> None:
    term = build_loss_term("token_kd", {})
    with pytest.raises(ValueError, match="for one prediction per sample use kd"):
        term.build(_outputs(torch.randn(2, 3)), _outputs(torch.randn(2, 3)))


# --- layer-copied decoders ----------------------------------------------------------------------------------------

GPT2 = dict(vocab_size=100, n_embd=32, n_layer=4, n_head=2, n_positions=64, bos_token_id=2, eos_token_id=3)
LLAMA = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3)  # fmt: skip
BART = dict(vocab_size=100, d_model=32, encoder_layers=4, decoder_layers=4, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            bos_token_id=2, eos_token_id=3, pad_token_id=0, decoder_start_token_id=2,
            forced_eos_token_id=3)  # fmt: skip


def _block_out(block: torch.nn.Module, hidden: torch.Tensor, **kwargs: object) -> torch.Tensor:
    out = block(hidden, attention_mask=None, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def test_layer_copied_decoders_reproduce_the_teachers_kept_blocks() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, 32)
    bart = BartForConditionalGeneration(BartConfig(**BART))
    for teacher, blocks in ((GPT2LMHeadModel(GPT2Config(**GPT2)), lambda m: m.transformer.h),
                            (bart, lambda m: m.model.decoder.layers), (bart, lambda m: m.model.encoder.layers)):
        teacher.eval()
        student = student_from_teacher(teacher, [1, 3]).eval()
        assert len(blocks(student)) == 2
        for new, old in enumerate([1, 3]):
            assert torch.equal(_block_out(blocks(student)[new], hidden), _block_out(blocks(teacher)[old], hidden))
    llama = LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()
    student = student_from_teacher(llama, [1, 3]).eval()
    assert student.config.num_hidden_layers == 2
    for new, old in enumerate([1, 3]):
        for (name, a), (_, b) in zip(student.model.layers[new].named_parameters(),
                                     llama.model.layers[old].named_parameters(), strict=True):  # fmt: skip
            assert torch.equal(a, b), name
    ids = torch.randint(4, 100, (1, 6))
    assert student.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 9)  # generate() works on it


# --- scores -------------------------------------------------------------------------------------------------------


class EchoTarget(torch.nn.Module):
    """A stand-in seq2seq model whose greedy output is the dataset's target (or its first word only)."""

    def __init__(self, data: TextDataset, first_word_only: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.data, self.first_word_only = data, first_word_only
        self.calls = 0

    def generate(self, input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        rows = []
        for row in range(len(input_ids)):
            index = self.calls + row
            start, end = self.data.decoder.offsets[index], self.data.decoder.offsets[index + 1]
            ids = self.data.decoder.ids[start:end].tolist()
            rows.append(ids[:2] if self.first_word_only else ids)
        self.calls += len(input_ids)
        width = max(map(len, rows))
        return torch.tensor([r + [self.data.pad_id] * (width - len(r)) for r in rows])


def test_exact_match_and_rouge_l_of_greedy_outputs() -> None:
    data = dataset("seq2seq", ["good movie", "bad film plot", "the story"], ["movie good", "plot film bad", "scene"])
    assert seq2seq_scores(EchoTarget(data), data, batch_size=2) == {"exact_match": 1.0, "rouge_l": 1.0,
                                                                    "generated": 3}  # fmt: skip
    partial = seq2seq_scores(EchoTarget(data, first_word_only=True), data, batch_size=2)
    assert partial["exact_match"] == pytest.approx(1 / 3)  # "scene" is one word: whole
    # [CLS] + first word: "movie" of "movie good" (P 1, R 1/2), "plot" of "plot film bad" (P 1, R 1/3)
    expected = (2 * 0.5 / 1.5 + 2 * (1 / 3) / (4 / 3) + 1.0) / 3
    assert partial["rouge_l"] == pytest.approx(expected)
    assert perplexity(0.0) == 1.0 and perplexity(1e6) == float("inf")


# --- whole runs -----------------------------------------------------------------------------------------------------

MODELS = {
    "causal-lm": {"name": "hf:gpt2", "kwargs": {"config": {"n_layer": 4, "n_embd": 32, "n_head": 2,
                                                            "n_positions": 64}}},
    "seq2seq": {"name": "hf:bart", "kwargs": {"config": {
        "encoder_layers": 2, "decoder_layers": 4, "d_model": 32, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64}}},
}  # fmt: skip


def _recipe(folder: Path, task: str, **sections: object) -> dict:
    train, test = write_pairs(folder / "data")
    return {"name": f"gen-{task}", "seed": 0,
            "data": {"name": "text", "train": str(train), "test": str(test), "task": task, "max_length": 24,
                     "vocab_size": 100, "batch_size": 16, "val_size": 0.1},
            "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}},
            "measure": {"enabled": False, "generate_samples": 8, "latency_repeats": 3, "throughput_batch": 2,
                        "new_tokens": 4}, **sections}  # fmt: skip


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained teacher run per task (3 epochs: enough to write non-empty text)."""
    folder = tmp_path_factory.mktemp("teachers")
    runs = {}
    for task in MODELS:
        recipe = _recipe(folder, task, model=MODELS[task], loss_terms={"ce": {"weight": 1.0}})
        recipe["train"]["epochs"] = 3
        runs[task] = run(load_recipe(recipe), folder / task, mode="train").run_dir
    return runs


@pytest.mark.parametrize("task", ["causal-lm", "seq2seq"])
def test_a_teacher_trains_and_a_half_depth_student_distils_and_generates(
    task: str, tmp_path: Path, teachers: dict[str, Path]
) -> None:
    row = json.loads((teachers[task] / "report.json").read_text())["models"][0]
    assert 1.0 < row["test_perplexity"] < 100.0  # 100 tokens: a model that learned nothing is near 100
    recipe = _recipe(tmp_path, task, teacher={**MODELS[task], "checkpoint": str(teachers[task])},
                     student={"name": MODELS[task]["name"], "init_from_teacher": "every-other"},
                     loss_terms={"ce": {"weight": 0.5}, "token_kd": {"weight": 0.5, "temperature": 2.0},
                                 "cosine": {"weight": 0.1}})  # fmt: skip
    recipe["measure"]["enabled"] = True  # generation speed beside the usual measurements
    distilled = run(load_recipe(recipe), tmp_path / "student", mode="distill")
    student = next(r for r in distilled.metrics["models"] if r["role"] == "student")
    assert np.isfinite(student["test_perplexity"])
    assert student["gen_tokens_per_s"] > 0 and student["first_token_ms"] > 0
    if task == "seq2seq":
        assert 0.0 <= student["test_rouge_l"] <= 1.0 and 0.0 <= student["test_exact_match"] <= 1.0
    assert "ppl" in (tmp_path / "student" / "report.md").read_text()
    lines = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("token_kd" in json.dumps(x) for x in lines)
    # the saved student is a normal Hugging Face directory that generates
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(tmp_path / "student" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "student" / "model")
    layers = model.config.n_layer if task == "causal-lm" else model.config.decoder_layers
    assert layers == 2
    enc = tok(["the good movie"], return_tensors="pt", return_token_type_ids=False)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] > (enc["input_ids"].shape[1] if task == "causal-lm" else 1)


@pytest.mark.parametrize("task", ["causal-lm", "seq2seq"])
def test_generate_writes_the_teachers_outputs_as_a_training_set(task: str, tmp_path: Path,
                                                                teachers: dict[str, Path]) -> None:  # fmt: skip
    recipe = load_recipe(_recipe(tmp_path, task, teacher={**MODELS[task], "checkpoint": str(teachers[task])},
                                 student=MODELS[task], loss_terms={"ce": {"weight": 1.0}}))  # fmt: skip
    stats = generate_teacher_data(recipe, tmp_path / "seqkd.jsonl", limit=12, prompt_tokens=3, max_new_tokens=10)
    rows = [json.loads(x) for x in (tmp_path / "seqkd.jsonl").read_text().splitlines()]
    assert stats["rows"] == len(rows) == 12
    train = list(csv.DictReader((tmp_path / "data" / "train.csv").open()))[:12]
    model = (AutoModelForSeq2SeqLM if task == "seq2seq" else AutoModelForCausalLM).from_pretrained(
        teachers[task] / "model").eval()  # fmt: skip
    tok = AutoTokenizer.from_pretrained(teachers[task] / "model")
    for source, row in zip(train[:3], rows[:3], strict=True):
        if task == "seq2seq":
            assert set(row) == {"text", "target"} and row["text"] == source["text"]
            enc = tok([source["text"]], return_tensors="pt", return_token_type_ids=False)
            expected = model.generate(**enc, max_new_tokens=10, do_sample=False)
        else:
            assert set(row) == {"text"}
            prompt = tok([source["text"]], return_token_type_ids=False)["input_ids"][0][:3]  # [CLS] + 2 words
            assert row["text"].startswith(tok.decode(prompt, skip_special_tokens=True))
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
        assert row["target" if task == "seq2seq" else "text"] == " ".join(
            tok.decode(expected[0], skip_special_tokens=True).split())  # fmt: skip
    # a student recipe trains on the file
    student = _recipe(tmp_path, task, model=MODELS[task], loss_terms={"ce": {"weight": 1.0}})
    student["data"]["train"] = str(tmp_path / "seqkd.jsonl")
    student["data"].update(val_size=2, batch_size=4)
    assert run(load_recipe(student), tmp_path / "on-teacher-outputs", mode="train").metrics["models"]
    with pytest.raises(TinykdError, match=r"\.jsonl or \.csv"):
        generate_teacher_data(recipe, tmp_path / "out.txt")
    with pytest.raises(TinykdError, match="must be >= 1"):
        generate_teacher_data(recipe, tmp_path / "out.jsonl", limit=0)


def test_a_student_with_another_tokenizer_is_one_line(tmp_path: Path, teachers: dict[str, Path]) -> None:
    other = train_wordpiece(["completely different words here", "zebra yak"] * 3, vocab_size=100)
    torch.manual_seed(0)
    student = GPT2LMHeadModel(GPT2Config(**{**GPT2, "vocab_size": len(other)}))
    save_hf_directory(student, tmp_path / "other", other)
    recipe = _recipe(tmp_path, "causal-lm", teacher={**MODELS["causal-lm"], "checkpoint": str(teachers["causal-lm"])},
                     student={"name": f"hf:{tmp_path / 'other'}"}, loss_terms={"token_kd": {"weight": 1.0}})
    with pytest.raises(TinykdError, match="must share") as exc:
        run(load_recipe(recipe), tmp_path / "bad", mode="distill")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("data", "message"), [
    ({"task": "seq2seq", "target_column": "summary"}, "no column 'summary'"),
    ({"task": "classification", "packing": True}, "data.packing joins texts"),
    ({"task": "seq2seq", "source_column": "body"}, "no column 'body' (data.source_column)"),
])  # fmt: skip
def test_bad_generative_data_is_one_line(tmp_path: Path, data: dict, message: str) -> None:
    recipe = _recipe(tmp_path, "causal-lm", model=MODELS["causal-lm"], loss_terms={"ce": {"weight": 1.0}})
    recipe["data"].update(data)
    with pytest.raises(TinykdError) as exc:
        run(load_recipe(recipe), tmp_path / "bad", mode="train")
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_cpu_ranks_distil_a_causal_lm(tmp_path: Path, teachers: dict[str, Path]) -> None:
    recipe = _recipe(tmp_path, "causal-lm", teacher={**MODELS["causal-lm"], "checkpoint": str(teachers["causal-lm"])},
                     student={"name": "hf:gpt2", "init_from_teacher": [1]},
                     loss_terms={"ce": {"weight": 0.5}, "token_kd": {"weight": 0.5}})  # fmt: skip
    recipe["data"]["batch_size"] = 8
    path = tmp_path / "ranks.yaml"
    path.write_text(json.dumps(recipe))  # YAML reads JSON
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "TINYKD_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tinykd",
           "distill", str(path), "--out", "ranks"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cpu, 2 processes (GLOO), fp32;" in proc.stdout and "global batch 16 (8 per process x 2)" in proc.stdout
    report = json.loads((tmp_path / "ranks" / "report.json").read_text())
    assert [row["role"] for row in report["models"]] == ["teacher", "student"]
    assert all(np.isfinite(row["test_perplexity"]) for row in report["models"])


def test_export_writes_a_kv_cache_model_that_decodes_like_pytorch(tmp_path: Path, teachers: dict[str, Path]) -> None:
    from tinykd.compress.export import describe_export, export_checkpoint

    folder, report = export_checkpoint(teachers["causal-lm"], out=tmp_path / "onnx", verify_images=4)
    assert (folder / "model.onnx").is_file() and report["size_bytes"] > 0
    check = report["verification"]
    assert check["prompts"] == 4 and check["matching_tokens"] == check["compared_tokens"] > 0
    assert "equals PyTorch's" in describe_export(folder, report)
    with pytest.raises(TinykdError, match="already exists"):
        export_checkpoint(teachers["causal-lm"], out=tmp_path / "onnx")
    with pytest.raises(TinykdError, match="exports to onnx"):
        export_checkpoint(teachers["causal-lm"], fmt="pt2", out=tmp_path / "x.pt2")


def test_quantize_writes_an_int8_kv_cache_model_and_measures_it(teachers: dict[str, Path]) -> None:
    from tinykd.compress.quantize import describe_quantization, quantize_model

    path, report = quantize_model(teachers["causal-lm"], overwrite=True)
    fp32, int8 = report["rows"][1], report["rows"][2]
    assert path.is_file() and int8["size_bytes"] < fp32["size_bytes"]
    assert fp32["greedy_agreement"] == 1.0 and 0.0 <= int8["greedy_agreement"] <= 1.0
    assert all(r["gen_tokens_per_s"] > 0 for r in report["rows"])
    assert "smaller" in describe_quantization(report)
    with pytest.raises(TinykdError, match="--mode dynamic"):
        quantize_model(teachers["causal-lm"], mode="static")


def test_a_teacher_cache_of_token_logits_is_exact_and_top_k_works(tmp_path: Path, teachers: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    def recipe(cache: str | None = None, fmt: str = "fp32") -> object:
        spec = _recipe(tmp_path, "causal-lm", teacher={**MODELS["causal-lm"], "checkpoint": str(teachers["causal-lm"])},
                       student={"name": "hf:gpt2", "init_from_teacher": [1]}, loss_terms={"token_kd": {"weight": 1.0}})
        if cache:
            spec["teacher"].update(cache=str(tmp_path / cache), cache_format=fmt, cache_topk=5)
        return load_recipe(spec)

    filled = run(recipe("cache"), tmp_path / "fill", mode="distill")
    read = run(recipe("cache"), tmp_path / "read", mode="distill")
    run(recipe(), tmp_path / "online", mode="distill")
    assert filled.metrics["teacher_cache"]["batches_computed"] > 0
    assert read.metrics["teacher_cache"]["batches_computed"] == 0
    weights = [load_file(str(tmp_path / name / "checkpoints" / "last.safetensors")) for name in ("read", "online")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    topk = run(recipe("cache-topk", "topk"), tmp_path / "topk", mode="distill")
    assert np.isfinite(next(r for r in topk.metrics["models"] if r["role"] == "student")["test_perplexity"])
