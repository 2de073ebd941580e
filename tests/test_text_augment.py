"""TinyBERT's augmentation (`data.text_augment`): which tokens are swapped, for what, and when.

A tiny BERT masked LM and a WordPiece are made here and saved with `save_pretrained`: no network, no shared data.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TINYKD_OFFLINE"] = "1"

from test_text_data import make_rows, one_line_error, text_options, write
from tinykd.data import build_datasets, train_wordpiece
from tinykd.data import text_augment as augment_module
from tinykd.data.text_augment import TextAugmentOptions, WordSwaps, find_candidates, swappable, token_kinds
from tinykd.errors import TinykdError
from tinykd.pipeline import masked_lm


def augment(model: str, **options) -> TextAugmentOptions:
    """`data.text_augment` as the pipeline makes it: with the loader of the masked LM."""
    return TextAugmentOptions(model=model, masked_lm=partial(masked_lm, model), **options)

TEXTS = [s for s, _ in make_rows(120)] + ["superb, the film", "123 movie !"]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT masked LM (random weights) saved with the WordPiece that the data will also train."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("mlm")
    tokenizer = train_wordpiece(TEXTS, vocab_size=200)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bundle(tmp_path: Path, mlm_dir: Path, val_size: float = 10, **options):
    train = write(tmp_path / "train.tsv", [(t, i % 2) for i, t in enumerate(TEXTS)])
    test = write(tmp_path / "test.tsv", make_rows(20, seed=1))
    options = text_options(train=str(train), test=str(test), vocab_size=200, tokenizer=str(mlm_dir),
                          augment=augment(str(mlm_dir), **options))  # fmt: skip
    return build_datasets("text", val_size=val_size, seed=3, text=options)


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_only_whole_single_piece_alphabetic_words_are_swappable(mlm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(mlm_dir)
    word, continues = token_kinds(tokenizer)
    ids = tokenizer(["greatmoviefilm superb, the film", "123 movie !"])["input_ids"]
    flat = np.array([i for row in ids for i in row], dtype=np.int32)
    offsets = np.cumsum([0, *map(len, ids)])
    tokens = tokenizer.convert_ids_to_tokens(flat.tolist())
    chosen = {tokens[i] for i in swappable(flat, offsets, word, continues)}
    pieces = tokenizer.tokenize("greatmoviefilm")
    assert len(pieces) > 1 and not chosen & set(pieces)  # a word of several pieces is never swapped
    assert {"superb", "the", "film", "movie"} <= chosen
    assert not chosen & {"[CLS]", "[SEP]", ",", "!", "123"}


def test_candidates_are_the_masked_lms_best_other_words_of_the_texts(mlm_dir: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(mlm_dir), AutoModelForMaskedLM.from_pretrained(mlm_dir)
    texts = ["the movie was superb", "a dull film", *TEXTS[:30]]
    ids = tokenizer(texts)["input_ids"]
    flat = np.array([i for row in ids for i in row], dtype=np.int32)
    offsets = np.cumsum([0, *map(len, ids)])
    row_of, choices = find_candidates(model, flat, offsets, None, tokenizer, top_k=5, logit_budget=1000)
    # the words of the texts that are one piece, found word by word (not as find_candidates does)
    whole = {pieces[0] for text in texts for word in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        tokenizer.backend_tokenizer.normalizer.normalize_str(text)) if len(pieces := tokenizer.tokenize(word[0])) == 1
        and pieces[0].isalpha()}  # fmt: skip
    assert (row_of >= 0).sum() == sum(tokenizer.convert_ids_to_tokens(i) in whole for i in flat.tolist())
    assert choices.shape == ((row_of >= 0).sum(), 5)  # a tiny budget: batches of one or two
    # by hand: position 4 ("superb") masked, the best 5 words of the texts other than itself
    masked = torch.tensor([ids[0]])
    masked[0, 4] = tokenizer.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=masked).logits[0, 4]
    keep = torch.tensor([t in whole and i != ids[0][4] for i, t in
                         enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))])  # fmt: skip
    logits[~keep] = float("-inf")
    assert choices[row_of[4]].tolist() == logits.topk(5).indices.tolist()
    assert set(tokenizer.convert_ids_to_tokens(choices.flatten().tolist())) <= whole
    assert (choices != torch.from_numpy(flat.astype(np.int64))[row_of >= 0][:, None]).all()


def test_swaps_replace_only_swappable_tokens_by_their_candidates() -> None:
    row_of = torch.tensor([-1, 0, 1, -1, -1, 2, -1])  # two samples: tokens 0-3 and 4-6
    choices = torch.tensor([[10, 11], [12, 13], [14, 15]])
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    starts = np.array([0, 4])

    def swapped(prob: float, keep: float, seed: int = 0) -> torch.Tensor:
        return WordSwaps(row_of, choices, prob, keep).apply(ids, mask, starts, torch.Generator().manual_seed(seed))

    assert torch.equal(swapped(0.0, 0.0), ids) and torch.equal(swapped(1.0, 1.0), ids)
    every = [swapped(1.0, 0.0, seed) for seed in range(20)]
    for out in every:
        assert out[0, 1].item() in (10, 11) and out[0, 2].item() in (12, 13) and out[1, 1].item() in (14, 15)
        assert out[0, [0, 3]].tolist() == [1, 4] and out[1, [0, 2, 3]].tolist() == [5, 7, 0]  # padding kept
    assert len({tuple(o.flatten().tolist()) for o in every}) > 1
    assert torch.equal(swapped(0.5, 0.1, seed=4), swapped(0.5, 0.1, seed=4))


def test_training_batches_are_swapped_validation_is_not_and_the_table_is_cached(
    tmp_path: Path, mlm_dir: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bundle(tmp_path, mlm_dir, word_prob=1.0, keep_original=0.0)
    train, plain = data.train.dataset, data.val.dataset
    assert train is not plain and train.swaps is not None and plain.swaps is None
    index = list(range(len(train)))
    swapped, original = train.get_batch(index), plain.get_batch(index)
    assert torch.equal(swapped.inputs["attention_mask"], original.inputs["attention_mask"])  # lengths kept
    assert torch.equal(swapped.targets, original.targets)
    changed = (swapped.inputs["input_ids"] != original.inputs["input_ids"]).sum().item()
    assert changed == (train.swaps.row_of >= 0).sum().item()  # every swappable word, once each
    assert torch.equal(train.get_batch([0, 5, 9]).inputs["input_ids"], train.get_batch([0, 5, 9]).inputs["input_ids"])
    assert data.val.get_batch(range(len(data.val))).inputs["input_ids"].tolist() == \
        plain.get_batch(data.val.indices).inputs["input_ids"].tolist()  # fmt: skip
    assert train.content_digest() != plain.content_digest()
    files = list((cache_home / "tinykd" / "text-augment").glob("*.safetensors"))
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the masked LM ran again")

    monkeypatch.setattr(augment_module, "find_candidates", refuse)
    again = bundle(tmp_path, mlm_dir, word_prob=1.0, keep_original=0.0).train.dataset
    assert torch.equal(again.swaps.choices, train.swaps.choices)
    assert bundle(tmp_path, mlm_dir, word_prob=0.0).train.dataset.content_digest() != train.content_digest()


def test_bad_augmentation_settings_are_one_line(tmp_path: Path, mlm_dir: Path) -> None:
    other = tmp_path / "other"
    train_wordpiece(["zebra quokka", "good bad"] * 5, vocab_size=60).save_pretrained(other)
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(other)  # fmt: skip
    train = write(tmp_path / "train.tsv", make_rows(40))
    test = write(tmp_path / "test.tsv", make_rows(10, seed=1))

    def build(model: str, **options) -> None:
        text = text_options(train=str(train), test=str(test), tokenizer=str(mlm_dir),
                           augment=augment(model), **options)  # fmt: skip
        build_datasets("text", val_size=0, text=text)

    one_line_error(r"text_augment.model .*other has its own tokenizer, not the data's", build, str(other))
    one_line_error(r"text_augment swaps words of labelled texts .* masked-lm", build, str(mlm_dir), task="masked-lm")
    one_line_error(r"hf:.*no-such-dir", build, str(tmp_path / "no-such-dir" / "x"))
    classifier = tmp_path / "classifier"
    BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32)).save_pretrained(classifier)  # fmt: skip
    one_line_error(r"is a BertForSequenceClassification, not a masked LM", build, str(classifier))
    from transformers import PreTrainedTokenizerFast

    gpt_like = PreTrainedTokenizerFast(tokenizer_object=train_wordpiece(TEXTS, vocab_size=200).backend_tokenizer,
                                       eos_token="[SEP]", unk_token="[UNK]", pad_token="[PAD]")  # fmt: skip
    text = text_options(train=str(train), test=str(test), tokenizer=gpt_like, augment=augment(str(mlm_dir)))
    one_line_error("the data's tokenizer .* has no mask token", build_datasets, "text", val_size=0, text=text)


def test_a_recipe_with_text_augment_on_images_is_one_line() -> None:
    from tinykd.errors import TinykdError
    from tinykd.pipeline import build_data
    from tinykd.recipes import load_recipe

    recipe = load_recipe("fmnist-distill", ["data.text_augment.model=x"])
    with pytest.raises(TinykdError, match="text_augment swaps words of texts; data.name fashion-mnist is images"):
        build_data(recipe)


def test_embedding_candidates_are_each_words_nearest_other_words_of_the_texts(mlm_dir: Path, tmp_path: Path) -> None:
    """`candidates: embeddings` (a teacher without a masked-LM head): the nearest words by cosine in its input
    embeddings, the same for a word wherever it stands, and read through the pipeline from the model's folder."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from tinykd.data.text_augment import nearest_words
    from tinykd.pipeline import embedding_model

    tokenizer, model = AutoTokenizer.from_pretrained(mlm_dir), AutoModelForMaskedLM.from_pretrained(mlm_dir)
    ids = tokenizer(TEXTS[:40])["input_ids"]
    flat = np.array([i for row in ids for i in row], dtype=np.int32)
    offsets = np.cumsum([0, *map(len, ids)])
    table = model.get_input_embeddings().weight
    row_of, choices = nearest_words(table, flat, offsets, tokenizer, top_k=4, chunk=7)
    words = sorted({int(flat[p]) for p in np.flatnonzero(row_of.numpy() >= 0)})
    assert len(choices) == len(words) and choices.shape[1] == 4
    unit = torch.nn.functional.normalize(table.detach()[words], dim=1)
    for p in np.flatnonzero(row_of.numpy() >= 0)[:25]:  # by hand: cosine against the other words of the texts
        token = int(flat[p])
        similar = unit @ unit[words.index(token)]
        similar[words.index(token)] = float("-inf")
        assert choices[row_of[p]].tolist() == [words[i] for i in similar.topk(4).indices.tolist()]
    same = [p for p in range(len(flat)) if row_of[p] >= 0 and flat[p] == flat[np.flatnonzero(row_of.numpy() >= 0)[0]]]
    assert len({int(row_of[p]) for p in same}) == 1  # one row per distinct word
    loaded, _, digest = embedding_model(str(mlm_dir), tokenizer)
    assert loaded.get_input_embeddings().weight.shape[0] == len(tokenizer) and len(digest) > 8
    train = bundle(tmp_path, mlm_dir, candidates="embeddings", top_k=4).train.dataset
    assert train.swaps is not None and train.swaps.choices.shape[1] == 4
    small = tmp_path / "small"
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                             intermediate_size=8)).save_pretrained(small)  # fmt: skip
    with pytest.raises(TinykdError, match="has no input embeddings for the data's"):
        embedding_model(str(small), tokenizer)
