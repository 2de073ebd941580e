"""Vocabulary pruning (TextPruner's): the model and its tokenizer cut to the tokens a corpus uses compute, on that
corpus, what they computed before, and save as a normal Hugging Face directory."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import run_here
from tinykd.errors import TinykdError

transformers = pytest.importorskip("transformers")

CORPUS = ["a great fun film", "the dull awful plot", "a film, the plot!", "great great fun"]
OTHER = ["an unusual documentary about penguins", "zebras queue quietly", "the film was great"]


@pytest.fixture(scope="module")
def tokenizer() -> object:
    from tinykd.data.tokenizers import train_wordpiece

    return train_wordpiece(CORPUS * 5 + OTHER * 5, vocab_size=150)


def _bert(kind: str, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)  # fmt: skip
    return getattr(transformers, kind)(config).eval()


@pytest.mark.parametrize("kind", ["BertForSequenceClassification", "BertForMaskedLM"])
def test_a_pruned_model_and_tokenizer_compute_the_same_on_the_corpus(tokenizer: object, kind: str) -> None:
    from tinykd.models.vocab import prune_vocabulary, used_tokens

    model = _bert(kind, len(tokenizer))
    keep = used_tokens(tokenizer, CORPUS)
    assert set(tokenizer.all_special_ids) <= set(keep) and len(keep) < len(tokenizer)
    small, small_tokenizer = prune_vocabulary(model, tokenizer, keep)
    assert len(small_tokenizer) == len(keep) == small.config.vocab_size
    assert small.get_input_embeddings().weight.shape == (len(keep), 16)
    for text in CORPUS:  # the same tokens, renumbered; the same outputs
        before, after = tokenizer(text, return_tensors="pt"), small_tokenizer(text, return_tensors="pt")
        assert tokenizer.convert_ids_to_tokens(before["input_ids"][0]) == \
            small_tokenizer.convert_ids_to_tokens(after["input_ids"][0])  # fmt: skip
        assert after["input_ids"].max() < len(keep)
        with torch.no_grad():
            want, got = model(**before).logits, small(**after).logits
        if kind == "BertForMaskedLM":  # scores over the kept tokens, the same
            want = want[..., keep]
            assert small.get_output_embeddings().weight is small.get_input_embeddings().weight  # still tied
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert small_tokenizer.pad_token_id == keep.index(tokenizer.pad_token_id) == small.config.pad_token_id
    unseen = small_tokenizer("zebras queue")["input_ids"]  # words the corpus never used: shorter pieces or [UNK]
    assert all(0 <= i < len(keep) for i in unseen)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # the original is left as it was


def test_shrink_writes_a_pruned_directory_that_hugging_face_reads(tokenizer: object, tmp_path: Path) -> None:
    from tinykd.models.hf import save_hf_directory

    teacher = _bert("BertForSequenceClassification", len(tokenizer))
    save_hf_directory(teacher, tmp_path / "teacher", tokenizer)
    (tmp_path / "texts.csv").write_text("sentence,label\n" + "".join(f'"{t}",1\n' for t in CORPUS))
    done = run_here("shrink", "teacher", "--layers", "all", "--vocabulary", "texts.csv", "--out", "small",
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"vocabulary: {len(tokenizer)} -> " in done.stdout and "those 4 texts of texts.csv" in done.stdout
    small = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "small").eval()
    small_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "small")
    assert small.config.vocab_size == len(small_tokenizer) < len(tokenizer)
    batch = small_tokenizer(CORPUS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = teacher(**tokenizer(CORPUS, return_tensors="pt", padding=True)).logits
        torch.testing.assert_close(small(**batch).logits, want, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "small" / "config.json").read_text())["vocab_size"] == len(small_tokenizer)
    # half the depth and the corpus's tokens at once
    both = run_here("shrink", "teacher", "--vocabulary", "texts.csv", "--min-count", "2", "--out", "both",
                    cwd=tmp_path)  # fmt: skip
    assert both.returncode == 0 and "at least 2 times" in both.stdout, both.stderr
    for args, wanted in ((("--min-count", "0"), "--min-count must be 1 or more"),
                         (("--vocabulary", "missing.csv"), "missing.csv does not exist"),
                         (("--vocabulary", "texts.csv", "--text-column", "review"), "no column 'review'")):  # fmt: skip
        refused = run_here("shrink", "teacher", *args, "--out", "x", "--overwrite", cwd=tmp_path)
        assert refused.returncode == 2 and wanted in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_what_cannot_be_pruned_is_one_line(tokenizer: object) -> None:
    from tinykd.models.vocab import prune_vocabulary

    model = _bert("BertForSequenceClassification", len(tokenizer))
    with pytest.raises(TinykdError, match="must lie in 0"):
        prune_vocabulary(model, tokenizer, [0, len(tokenizer)])
    with pytest.raises(TinykdError, match=r"the unknown token \[UNK\] must be kept"):
        prune_vocabulary(model, tokenizer, [tokenizer.pad_token_id, tokenizer.cls_token_id])
    with pytest.raises(TinykdError, match="has no `tokenizers` backend"):
        prune_vocabulary(model, SimpleNamespace(), [0])


def test_a_narrower_student_is_a_selection_of_the_teachers_weights(tokenizer: object, tmp_path: Path) -> None:
    """Weight selection: every tensor the teacher's at evenly spaced indices (the same ones for the same width
    everywhere), position tables cut to their first rows; and `tinykd shrink --hidden-size` writes it with the
    vocabulary pruned in the same step."""
    from tinykd.models.hf import save_hf_directory
    from tinykd.models.narrow import evenly_spaced, narrower

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48, max_position_embeddings=32,
                                     num_labels=2)  # fmt: skip
    teacher = transformers.BertForSequenceClassification(config).eval()
    small = narrower(teacher, hidden_size=12, intermediate_size=16, positions=20)
    assert (small.config.hidden_size, small.config.num_attention_heads) == (12, 2)  # 6 per head, as the teacher
    h, f = evenly_spaced(24, 12), evenly_spaced(48, 16)
    assert h.tolist() == sorted(set(h.tolist())) and h[0] == 0 and h[-1] == 23
    state, wide = small.state_dict(), teacher.state_dict()
    torch.testing.assert_close(state["bert.embeddings.word_embeddings.weight"],
                               wide["bert.embeddings.word_embeddings.weight"][:, h])  # fmt: skip
    torch.testing.assert_close(state["bert.embeddings.position_embeddings.weight"],
                               wide["bert.embeddings.position_embeddings.weight"][:20][:, h])  # fmt: skip
    key = "bert.encoder.layer.1.intermediate.dense.weight"
    torch.testing.assert_close(state[key], wide[key][f][:, h])
    key = "bert.encoder.layer.0.output.dense.weight"
    torch.testing.assert_close(state[key], wide[key][h][:, f])
    torch.testing.assert_close(state["classifier.weight"], wide["classifier.weight"][:, h])
    batch = tokenizer(CORPUS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert small(**batch).logits.shape == (len(CORPUS), 2)
    for widths, wanted in (({"hidden_size": 48}, "wider than the teacher's 24"),
                           ({"hidden_size": 12, "heads": 5}, "not a multiple of --heads 5"),
                           ({"positions": 64}, "the teacher has 32 positions")):  # fmt: skip
        with pytest.raises(TinykdError, match=wanted):
            narrower(teacher, **widths)
    save_hf_directory(teacher, tmp_path / "teacher", tokenizer)
    (tmp_path / "texts.csv").write_text("sentence,label\n" + "".join(f'"{t}",1\n' for t in CORPUS))
    done = run_here("shrink", "teacher", "--layers", "1", "--vocabulary", "texts.csv", "--hidden-size", "12",
                    "--intermediate-size", "16", "--out", "tiny", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "narrower, by weight selection: hidden_size 12, intermediate_size 16" in done.stdout
    tiny = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny")
    assert (tiny.config.hidden_size, tiny.config.num_hidden_layers) == (12, 1)
    assert tiny.config.vocab_size == len(transformers.AutoTokenizer.from_pretrained(tmp_path / "tiny")) < len(tokenizer)
    refused = run_here("shrink", "teacher", "--hidden-size", "0", "--out", "x", cwd=tmp_path)
    assert refused.returncode == 2 and "widths must be 1 or more" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
