"""`hf:` models through transformers' Auto classes, and students started from their teacher's layers.

Every model is tiny (4 layers, 32 wide, 100 tokens) and saved with `save_pretrained` into tmp_path, so the real
loading code runs; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from tinykd.errors import TinykdError
from tinykd.models import create_model
from tinykd.models.hf import (
    create_hf_model,
    hf_checkpoint_spec,
    is_hf_model,
    save_hf_directory,
    student_from_teacher,
)

BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)  # fmt: skip
BERT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 64}  # fmt: skip

# kind -> (builder, the teacher's layer list as it appears in state-dict keys); the paths are written out here,
# not read from tinykd, so that a wrong table in hf.py fails these tests
TEACHERS = {
    "bert": (lambda: BertForSequenceClassification(BertConfig(**BERT, num_labels=3)), "bert.encoder.layer"),
    "bert-mlm": (lambda: BertForMaskedLM(BertConfig(**BERT)), "bert.encoder.layer"),
    "roberta": (lambda: RobertaForSequenceClassification(RobertaConfig(**{**BERT, "max_position_embeddings": 66},
                                                                       pad_token_id=1, num_labels=3)),
                "roberta.encoder.layer"),
    "distilbert": (lambda: DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=100, dim=32, n_layers=4, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=3)),
        "distilbert.transformer.layer"),
    "gpt2": (lambda: GPT2ForSequenceClassification(GPT2Config(
        vocab_size=100, n_embd=32, n_layer=4, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, num_labels=3)), "transformer.h"),
    "gpt2-lm": (lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=100, n_embd=32, n_layer=4, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)),
        "transformer.h"),
}  # fmt: skip


def _teacher(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return TEACHERS[kind][0]().eval()


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 100, (2, 8), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**_inputs()).logits


def _one_line(exc: pytest.ExceptionInfo[TinykdError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def _saved_bert(tmp_path: Path, num_labels: int = 3, mlm: bool = False) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**BERT)) if mlm else BertForSequenceClassification(
        BertConfig(**BERT, num_labels=num_labels))  # fmt: skip
    return model.eval(), save_hf_directory(model, tmp_path / "saved")


# --- student_from_teacher ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [None, [1, 3], [0, 1, 2, 3], [3]])
@pytest.mark.parametrize("kind", list(TEACHERS))
def test_student_copies_the_kept_layers_and_everything_else(kind: str, layers: list[int] | None) -> None:
    teacher = _teacher(kind)
    prefix = TEACHERS[kind][1]
    student = student_from_teacher(teacher, layers)
    kept = layers or [0, 2]
    assert type(student) is type(teacher)
    assert len(student.get_submodule(prefix)) == len(kept)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    expected_keys = set()
    for key in t_state:
        if not key.startswith(prefix + "."):
            expected_keys.add(key)
        elif (old := int(key[len(prefix) + 1 :].split(".")[0])) in kept:
            expected_keys.add(f"{prefix}.{kept.index(old)}." + key[len(prefix) + 1 :].split(".", 1)[1])
    assert set(s_state) == expected_keys
    for key, tensor in s_state.items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1 :].split(".", 1)
            source = f"{prefix}.{kept[int(index)]}.{rest}"
        else:
            source = key  # embeddings, final norm, pooler, head
        assert torch.equal(tensor, t_state[source]), key
    in_layers = [sum(k.startswith(prefix + ".") for k in state) for state in (s_state, t_state)]
    assert in_layers[0] * 4 == in_layers[1] * len(kept)
    # the teacher is left whole
    assert len(teacher.get_submodule(prefix)) == 4


def test_the_student_ties_what_the_teacher_ties() -> None:
    student = student_from_teacher(_teacher("bert-mlm"))
    assert student.cls.predictions.decoder.weight is student.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("kind", ["bert", "bert-mlm", "roberta", "distilbert", "gpt2", "gpt2-lm"])
def test_a_saved_student_reads_back_with_equal_outputs(kind: str, tmp_path: Path) -> None:
    student = student_from_teacher(_teacher(kind))
    folder = save_hf_directory(student, tmp_path / "student")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    reloaded = type(student).from_pretrained(folder)
    expected = _logits(student)
    assert not torch.equal(expected, _logits(_teacher(kind)))  # two layers fewer: a different function
    torch.testing.assert_close(_logits(reloaded), expected, rtol=0, atol=0)


def test_save_hf_directory_writes_the_tokenizer_too(tmp_path: Path) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(95))]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    folder = save_hf_directory(student_from_teacher(_teacher("bert")), tmp_path / "out", tokenizer)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder)("w1 w7")["input_ids"] == [2, 6, 12, 3]
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2


def test_save_hf_directory_refuses_a_file_and_a_plain_module(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(TinykdError) as exc:
        save_hf_directory(_teacher("bert"), tmp_path / "f")
    assert "is a file" in _one_line(exc)
    with pytest.raises(TinykdError):
        save_hf_directory(torch.nn.Linear(2, 2), tmp_path / "g")


def test_the_student_keeps_the_attention_implementation_and_dtype() -> None:
    teacher = create_hf_model("bert", num_classes=3, config=BERT_CONFIG, vocab_size=100,
                              attn_implementation="eager").to(torch.bfloat16)  # fmt: skip
    assert teacher.config._attn_implementation == "eager"
    student = student_from_teacher(teacher)
    assert student.config._attn_implementation == "eager" and student.dtype == torch.bfloat16
    with torch.no_grad():
        out = student.eval()(**_inputs(), output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 8, 8)


@pytest.mark.parametrize(
    ("layers", "words"),
    [([], "at least one"), ([0, 0], "distinct"), ([2, 1], "increasing"), ([4], "0..3"), ([-1, 2], "0..3"),
     ("first-half", "every-other"), ([0.5], "indices"), ([True], "indices")],
)  # fmt: skip
def test_bad_layers_are_one_line(layers: object, words: str) -> None:
    with pytest.raises(TinykdError) as exc:
        student_from_teacher(_teacher("bert"), layers)  # type: ignore[arg-type]
    assert words in _one_line(exc)


def test_an_unknown_architecture_names_itself_and_the_known_ones() -> None:
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2))
    with pytest.raises(TinykdError) as exc:
        student_from_teacher(t5)
    message = _one_line(exc)
    assert "'t5'" in message and "bert" in message and "gpt2" in message
    with pytest.raises(TinykdError):
        student_from_teacher(torch.nn.Linear(2, 2))


# --- create_hf_model / create_model("hf:...") -------------------------------------------------------------------


def test_a_model_type_builds_from_its_config_alone() -> None:
    model = create_model("hf:bert", num_classes=5, config=BERT_CONFIG, vocab_size=77, pad_token_id=3)
    assert isinstance(model, BertForSequenceClassification) and is_hf_model(model)
    assert model.config.num_labels == 5 and model.classifier.out_features == 5
    assert model.config.vocab_size == 77 and model.config.pad_token_id == 3
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 32
    # the config wins over the tokenizer's numbers
    model = create_model("hf:bert", num_classes=2, config={**BERT_CONFIG, "vocab_size": 50}, vocab_size=77)
    assert model.bert.embeddings.word_embeddings.num_embeddings == 50


def test_masked_lm_task() -> None:
    model = create_hf_model("bert", task="masked-lm", config=BERT_CONFIG, vocab_size=100)
    assert isinstance(model, BertForMaskedLM)
    assert _logits(model).shape == (2, 8, 100)


def test_a_directory_loads_its_weights(tmp_path: Path) -> None:
    saved, folder = _saved_bert(tmp_path)
    model = create_model(f"hf:{folder}", num_classes=3, in_channels=1)
    assert isinstance(model, BertForSequenceClassification)
    torch.testing.assert_close(_logits(model), _logits(saved), rtol=0, atol=0)


def test_a_directory_with_config_overrides_builds_without_weights(tmp_path: Path) -> None:
    saved, folder = _saved_bert(tmp_path)
    model = create_hf_model(str(folder), num_classes=3, config={"num_hidden_layers": 2})
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32  # the rest is the directory's
    emb = model.bert.embeddings.word_embeddings.weight
    assert emb.shape == saved.bert.embeddings.word_embeddings.weight.shape
    assert not torch.equal(emb, saved.bert.embeddings.word_embeddings.weight)


def test_a_masked_lm_encoder_fine_tunes_as_a_classifier(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    saved, folder = _saved_bert(tmp_path, mlm=True)
    capfd.readouterr()
    model = create_hf_model(str(folder), num_classes=4)
    assert model.classifier.out_features == 4
    assert torch.equal(model.bert.encoder.layer[3].output.dense.weight, saved.bert.encoder.layer[3].output.dense.weight)
    out, err = capfd.readouterr()  # one line of tinykd's own, not transformers' table and progress bars
    assert "LOAD REPORT" not in out + err and "%|" not in out + err
    line = [x for x in out.splitlines() if x.startswith("tinykd:")]
    assert len(line) == 1 and "new tensors (bert.pooler" in line[0] and "unused (cls.predictions" in line[0], out


def test_another_number_of_labels_gets_a_new_head_and_says_so(tmp_path: Path) -> None:
    saved, folder = _saved_bert(tmp_path, num_labels=3)
    with pytest.warns(UserWarning, match="3 labels"):
        model = create_hf_model(str(folder), num_classes=7)
    assert model.classifier.out_features == 7
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved.bert.embeddings.word_embeddings.weight)


def test_a_directory_reads_back_as_masked_lm(tmp_path: Path) -> None:
    saved, folder = _saved_bert(tmp_path, mlm=True)
    model = create_model(f"hf:{folder}", task="masked-lm")
    assert isinstance(model, BertForMaskedLM)
    torch.testing.assert_close(_logits(model), _logits(saved), rtol=0, atol=0)


def test_a_hub_name_not_in_the_cache_is_one_line_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYKD_OFFLINE", "1")
    with pytest.raises(TinykdError) as exc:
        create_model("hf:tinykd-test/no-such-model", num_classes=2)
    message = _one_line(exc)
    assert "tinykd-test/no-such-model" in message and "cache" in message and "local directory" in message


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("bert", {"task": "summarize"}, "tasks: classification, masked-lm"),
        ("bert", {"num_classes": None}, "num_classes"),
        ("bert", {"num_classes": 0}, "num_classes"),
        ("bertt", {"config": {"hidden_size": 32}}, "did you mean: bert"),
        ("./no/such/dir", {}, "does not exist"),
        ("~/no-such-tinykd-dir/x", {}, "does not exist"),
        ("a/b/c", {}, "does not exist"),
        ("gpt2", {"task": "masked-lm", "config": {"n_layer": 1}}, "no 'masked-lm' model"),
        ("bert", {"config": {"num_labels": 5}}, "num_labels"),
        ("bert", {"attn_implementation": "no-such-attention"}, "could not be built"),
    ],
)
def test_bad_names_and_arguments_are_one_line(name: str, kwargs: dict, words: str) -> None:
    kwargs = {"num_classes": 2, **kwargs}
    with pytest.raises(TinykdError) as exc:
        create_hf_model(name, **kwargs)
    assert words in _one_line(exc)


def test_a_file_or_a_directory_without_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(TinykdError) as exc:
        create_hf_model(str(tmp_path / "weights.safetensors"), num_classes=2)
    assert "is a file" in _one_line(exc)
    with pytest.raises(TinykdError) as exc:
        create_hf_model(str(tmp_path), num_classes=2)
    assert "config.json" in _one_line(exc)
    with pytest.raises(TinykdError) as exc:
        create_model("hf:bert", num_classes=2, pretrained=True)
    assert "pretrained" in _one_line(exc)


# --- hf_checkpoint_spec: a trained model rebuilds from its config alone ------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_the_checkpoint_spec_rebuilds_the_architecture(kind: str, tmp_path: Path) -> None:
    folder = save_hf_directory(student_from_teacher(_teacher(kind)), tmp_path / "student")
    model = create_model(f"hf:{folder}", num_classes=3)
    name, kwargs = hf_checkpoint_spec(model, "classification")
    assert name == f"hf:{kind}" and kwargs["task"] == "classification"
    kwargs = json.loads(json.dumps(kwargs))  # it travels as JSON in the safetensors metadata
    shutil.rmtree(folder)  # the directory may be gone by the time the checkpoint is read
    rebuilt = create_model(name, num_classes=3, **kwargs)
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(_logits(rebuilt), _logits(model), rtol=0, atol=0)


def test_the_checkpoint_spec_of_a_masked_lm() -> None:
    model = create_hf_model("bert", task="masked-lm", config=BERT_CONFIG, vocab_size=100)
    name, kwargs = hf_checkpoint_spec(model, "masked-lm")
    rebuilt = create_model(name, **json.loads(json.dumps(kwargs)))
    assert isinstance(rebuilt, BertForMaskedLM)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(_logits(rebuilt), _logits(model), rtol=0, atol=0)
    assert not is_hf_model(torch.nn.Linear(2, 2))
    with pytest.raises(TinykdError):
        hf_checkpoint_spec(torch.nn.Linear(2, 2), "classification")
