"""Text data: files in four formats, SST-2's folder, hub datasets, checks, tokenizers, padding, masking, bucketing.

Every file and tokenizer is made here in tmp_path: no network, no shared data.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TINYKD_OFFLINE"] = "1"

from tinykd.data import (
    EpochShuffle,
    PadToMultiple,
    TextDataset,
    TextOptions,
    build_datasets,
    collate_batched,
    make_loader,
    train_wordpiece,
)
from tinykd.data import tables as tables_module
from tinykd.errors import TinykdError
from tinykd.tasks import get_task

GOOD = ["good", "great", "fun", "superb", "lovely"]
BAD = ["bad", "awful", "boring", "dull", "weak"]
FILLER = ["the", "movie", "film", "was", "really", "plot", 'a "so-called" story', "it's", "acting"]


def text_options(**options: Any) -> TextOptions:
    """TextOptions as the pipeline makes them: the task (a name here, default classification) as a Task."""
    return TextOptions(**{**options, "task": get_task(options.get("task", "classification"))})


def make_rows(n: int = 60, seed: int = 0) -> list[tuple[str, int]]:
    """Short sentences of 1 to 20 words, label 1 with good words and 0 with bad ones; some hold quote marks."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(GOOD if label else BAD) if rng.random() < 0.4 else rng.choice(FILLER)
                 for _ in range(rng.randint(1, 20))]  # fmt: skip
        rows.append((" ".join(words), label))
    return rows


def write(path: Path, rows: list[tuple], columns: tuple[str, ...] = ("sentence", "label")) -> Path:
    """rows in the format of path's extension: csv (quoted as needed), tsv (never quoted), jsonl, parquet."""
    suffix = path.suffix
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
    elif suffix == ".tsv":
        path.write_text("\t".join(columns) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r, strict=True))) + "\n" for r in rows))
    elif suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows, columns=list(columns)).to_parquet(path)
    else:
        path.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def text_bundle(tmp_path: Path, fmt: str = "tsv", n: int = 60, val_size: float = 0, seed: int = 0, **options):
    train = write(tmp_path / f"train.{fmt}", make_rows(n))
    test = write(tmp_path / f"test.{fmt}", make_rows(20, seed=1))
    return build_datasets("text", val_size=val_size, seed=seed,
                          text=text_options(train=str(train), test=str(test), vocab_size=200, **options))  # fmt: skip


def one_line_error(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(TinykdError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- formats and folders -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_each_file_format_loads_every_row_and_keeps_quote_marks(tmp_path: Path, fmt: str) -> None:
    rows = make_rows()
    table = tables_module.read_table(write(tmp_path / f"t.{fmt}", rows))
    assert tables_module.read_texts(table, "sentence", "t") == [s for s, _ in rows]  # quotes are text, in tsv too
    assert tables_module.read_labels(table, "label", "t").tolist() == [label for _, label in rows]
    bundle = text_bundle(tmp_path, fmt)
    assert (len(bundle.train), bundle.val, len(bundle.test)) == (60, None, 20)
    assert bundle.classes == ["0", "1"] and bundle.num_classes == 2 and bundle.task.name == "classification"
    assert (bundle.in_channels, bundle.image_size, bundle.max_length) == (0, 0, 128)
    assert bundle.train.dataset.get_batch(range(60)).targets.tolist() == [label for _, label in rows]


def test_a_fake_sst2_folder_loads_from_root_and_from_tinykd_data(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "data" / "sst2"
    folder.mkdir(parents=True)
    write(folder / "train.tsv", make_rows(40))
    write(folder / "dev.tsv", [('a "really" good film', 1), ("bad", 0), ("it's dull", 0)])
    bundle = build_datasets("sst2", root=str(folder), val_size=0.25, text=text_options())
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 3)
    assert bundle.classes == ["negative", "positive"]
    tokens = bundle.tokenizer.convert_ids_to_tokens(bundle.test.get_batch([0]).inputs["input_ids"][0])
    assert tokens[:5] == ["[CLS]", "a", '"', "really", '"'] and bundle.test.get_batch([0, 1, 2]).targets.tolist() == [
        1, 0, 0]  # fmt: skip
    monkeypatch.setenv("TINYKD_DATA", str(tmp_path / "data"))
    assert len(build_datasets("sst2", val_size=0, text=text_options()).train) == 40


def test_missing_sst2_says_where_it_looked_and_offline_forbids_the_download(tmp_path: Path) -> None:
    one_line_error(r"SST-2 files \(train.tsv, dev.tsv\) not found; looked in .*nowhere.*download=true",
                   build_datasets, "sst2", root=str(tmp_path / "nowhere"))  # fmt: skip
    one_line_error("TINYKD_OFFLINE is set", build_datasets, "sst2", root=str(tmp_path / "nowhere"), download=True)


def test_the_text_column_is_found_by_name_and_can_be_chosen(tmp_path: Path) -> None:
    rows = [(i, s, f"other {i}", label) for i, (s, label) in enumerate(make_rows(30))]
    train = write(tmp_path / "train.csv", rows, ("id", "review", "content", "label"))
    found = build_datasets("text", val_size=0, text=text_options(train=str(train), test=str(train), vocab_size=200))
    decoded = found.tokenizer.decode(found.test.get_batch([3]).inputs["input_ids"][0], skip_special_tokens=True)
    assert decoded == "other 3"  # "content" comes before "review" (and "id" is no text column)
    chosen = build_datasets("text", val_size=0, text=text_options(train=str(train), test=str(train), vocab_size=200,
                                                                 text_column="review"))  # fmt: skip
    ids = chosen.test.get_batch([0]).inputs["input_ids"][0].tolist()
    assert ids == chosen.tokenizer(rows[0][1])["input_ids"] and len(ids) > 4


# --- bad data: one line each, naming the file and the column -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.csv", "", r"empty\.csv is empty"),
        ("header.csv", "sentence,label\n", r"header\.csv has no rows"),
        (
            "notext.csv",
            "words,label\nhi,1\n",
            r"notext\.csv has no text column \(looked for text, sentence, content, "
            r"review\); columns: words, label; set data.text_column",
        ),
        (
            "nolabel.csv",
            "sentence,target\nhi,1\n",
            r"nolabel\.csv has no label column 'label' \(data.label_column\); columns: sentence, target",
        ),
        (
            "names.csv",
            "sentence,label\nhi,positive\nho,negative\n",
            r"column 'label' holds class ids in .*good\.csv but class names in .*names\.csv; write the labels",
        ),
        (
            "negative.csv",
            "sentence,label\nhi,1\nho,-1\n",
            r"negative\.csv: column 'label' holds the negative label -1 in row 2",
        ),
        ("half.csv", "sentence,label\nhi,1\nho,0.5\n", r"half\.csv: column 'label' holds the label 0\.5 in row 2"),
        ("missing.csv", "sentence,label\nhi,1\nho,\n", r"missing\.csv: column 'label' has no label in row 2"),
        ("numbers.csv", "sentence,label\n1,1\n2,0\n", r"numbers\.csv: column 'sentence' holds int64, not text"),
        ("words.txt", "hi\n", r"words\.txt: unknown file type '\.txt'; text files must end in \.csv, \.tsv"),
        (
            "broken.jsonl",
            '{"sentence": "hi", "label": 1}\n{"sentence": \n',
            r"broken\.jsonl could not be read as jsonl",
        ),
    ],
)
def test_bad_training_files_are_one_line_errors(tmp_path: Path, name: str, content: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    good = write(tmp_path / "good.csv", make_rows(10))
    one_line_error(match, build_datasets, "text", text=text_options(train=str(path), test=str(good)))


def test_test_labels_must_be_training_classes_and_files_must_exist(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", make_rows(10))
    test = write(tmp_path / "test.csv", [("good", 1), ("odd", 2)])
    one_line_error(r"test\.csv: column 'label' holds the label 2 in row 2, a class the training set never has; the "
                   r"classes are the training labels 0\.\.1", build_datasets, "text",
                   text=text_options(train=str(train), test=str(test)))  # fmt: skip
    one_line_error(r"nope\.csv does not exist", build_datasets, "text",
                   text=text_options(train=str(train), test=str(tmp_path / "nope.csv")))  # fmt: skip
    one_line_error("needs data.train and data.test", build_datasets, "text", text=text_options(train=str(train)))
    one_line_error(r"has no column 'sentense' \(data.text_column\) \(did you mean: sentence\?\)", build_datasets,
                   "text", text=text_options(train=str(train), test=str(train), text_column="sentense"))  # fmt: skip


def test_empty_texts_are_allowed(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", [*make_rows(10), ("", 1)])
    bundle = build_datasets("text", val_size=0, text=text_options(train=str(train), test=str(train), vocab_size=200))
    inputs, targets = bundle.test.get_batch([10])
    assert bundle.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]) == ["[CLS]", "[SEP]"] and targets[0] == 1
    blank = tmp_path / "blank.csv"  # a column of blanks only: csv readers infer numbers (all missing), not text
    blank.write_text("sentence,label\n" + ",1\n" * 4)
    table = tables_module.read_table(blank)
    assert tables_module.read_texts(table, "sentence", "blank.csv") == [""] * 4


def test_options_are_checked(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", make_rows(10))
    one_line_error(r"unknown task 'masked_lm' \(did you mean: masked-lm\?\)", text_options, task="masked_lm")
    for options, match in [({"max_length": 2}, "data.max_length=2 is too short"),
                           ({"mlm_probability": 1.5}, "data.mlm_probability=1.5 must be between 0 and 1"),
                           ({"vocab_size": 50}, "data.vocab_size=50 is too small")]:  # fmt: skip
        one_line_error(match, build_datasets, "text", text=text_options(train=str(train), test=str(train), **options))


def test_masked_lm_needs_no_labels(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [(s,) for s, _ in make_rows(30)], ("text",))
    bundle = build_datasets("text", val_size=0.2, text=text_options(train=str(train), test=str(train),
                                                                   task="masked-lm", vocab_size=200))  # fmt: skip
    assert bundle.classes == [] and bundle.task.name == "masked-lm" and (len(bundle.train), len(bundle.val)) == (24, 6)
    inputs, targets = bundle.val.get_batch(range(6))
    assert targets.shape == inputs["input_ids"].shape


# --- tokenizers --------------------------------------------------------------------------------------------------


def test_the_trained_tokenizer_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    texts = [s for s, _ in make_rows(200)]
    vocabs = [train_wordpiece(texts, vocab_size=120).get_vocab() for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs)  # tokenizers' own trainer gave a new vocabulary on most calls
    tokenizer = train_wordpiece(texts, vocab_size=120)
    assert {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}.items() <= tokenizer.get_vocab().items()
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    sample = [*texts[:20], "Superb, GOOD film!", ""]
    assert loaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    ids = tokenizer("good film")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "good", "film", "[SEP]"]
    pair = tokenizer("good film", "bad")
    assert tokenizer.convert_ids_to_tokens(pair["input_ids"]) == ["[CLS]", "good", "film", "[SEP]", "bad", "[SEP]"]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1]


def test_a_tokenizer_directory_is_used(tmp_path: Path) -> None:
    other = train_wordpiece(["zebra quokka", "good bad"] * 5, vocab_size=60)
    other.save_pretrained(tmp_path / "tok")
    bundle = text_bundle(tmp_path, tokenizer=str(tmp_path / "tok"))
    assert bundle.tokenizer.get_vocab() == other.get_vocab()
    assert bundle.train.dataset.get_batch([0]).inputs["input_ids"][0].tolist() == other(make_rows(1)[0][0])["input_ids"]
    one_line_error(r"data.tokenizer: could not load a tokenizer from 'no-such/tokenizer' .*TINYKD_OFFLINE",
                   text_bundle, tmp_path, tokenizer="no-such/tokenizer")  # fmt: skip


def test_a_tokenizer_without_pad_pads_with_eos_and_masked_lm_needs_a_mask(tmp_path: Path, capsys) -> None:
    from transformers import PreTrainedTokenizerFast

    base = train_wordpiece([s for s, _ in make_rows(60)], vocab_size=120)
    gpt_like = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, eos_token="[SEP]", unk_token="[UNK]")
    bundle = text_bundle(tmp_path, tokenizer=gpt_like)
    assert bundle.tokenizer.pad_token == "[SEP]" and "padding with its end-of-sequence token" in capsys.readouterr().out
    one_line_error("data.task=masked-lm needs a tokenizer with a mask token", text_bundle, tmp_path,
                   task="masked-lm", tokenizer=gpt_like)  # fmt: skip


def test_sentence_pairs_get_token_type_ids(tmp_path: Path) -> None:
    rows = [(s, "good" if label else "bad", label) for s, label in make_rows(20)]
    train = write(tmp_path / "pairs.csv", rows, ("premise", "hypothesis", "label"))
    bundle = build_datasets("text", val_size=0, text=text_options(train=str(train), test=str(train), vocab_size=200,
                                                                 text_column="premise",
                                                                 text_pair_column="hypothesis"))  # fmt: skip
    inputs, _ = bundle.test.get_batch([0, 1])
    for row in range(2):
        n = int(inputs["attention_mask"][row].sum())
        tokens = bundle.tokenizer.convert_ids_to_tokens(inputs["input_ids"][row, :n])
        assert tokens[-3:] == ["[SEP]", rows[row][1], "[SEP]"]
        assert inputs["token_type_ids"][row, :n].tolist() == [0] * (n - 2) + [1, 1]


# --- padding -----------------------------------------------------------------------------------------------------


def test_dynamic_padding_to_the_longest_and_static_to_max_length(tmp_path: Path) -> None:
    bundle = text_bundle(tmp_path, max_length=16)
    dataset = bundle.train.dataset
    lengths = dataset.sample_lengths()
    assert max(lengths) == 16 and min(lengths) >= 3  # truncated at 16: [CLS] ... [SEP]
    indices = [5, 0, 17, 33]
    inputs, targets = dataset.get_batch(indices)
    assert inputs["input_ids"].shape == (4, max(lengths[i] for i in indices)) and targets.shape == (4,)
    assert inputs["attention_mask"].sum(1).tolist() == [lengths[i] for i in indices]
    assert bool((inputs["input_ids"][inputs["attention_mask"] == 0] == dataset.pad_id).all())
    longest = lengths.index(16)
    assert dataset.tokenizer.convert_ids_to_tokens(int(dataset.get_batch([longest]).inputs["input_ids"][0, -1])) == \
        "[SEP]"  # fmt: skip
    static = text_bundle(tmp_path, max_length=16, static_shapes=True).train.dataset
    assert {tuple(static.get_batch(i).inputs["input_ids"].shape) for i in ([0], [1, 2], indices)} == {
        (1, 16), (2, 16), (4, 16)}  # fmt: skip
    assert torch.equal(static.get_batch(indices).inputs["attention_mask"].sum(1), inputs["attention_mask"].sum(1))


# --- masked language modelling -----------------------------------------------------------------------------------


@pytest.fixture()
def mlm(tmp_path: Path) -> TextDataset:
    return text_bundle(tmp_path, n=120, task="masked-lm").train.dataset


def test_masking_chooses_about_15_percent_of_real_tokens_never_special_or_padding(mlm: TextDataset) -> None:
    chosen = real = replaced = 0
    special = set(mlm.tokenizer.all_special_ids)
    for first in range(0, 120, 8):
        indices = list(range(first, first + 8))
        inputs, targets = mlm.get_batch(indices)
        original = _unmasked(mlm, indices)
        picked = targets != -100
        assert torch.equal(targets[picked], original[picked])  # targets are the original ids
        assert not any(int(t) in special for t in original[picked])  # never [CLS], [SEP], [PAD]
        assert bool((inputs["attention_mask"][picked] == 1).all())
        assert torch.equal(inputs["input_ids"][~picked], original[~picked])  # only chosen tokens change
        chosen += int(picked.sum())
        real += sum(int(t) not in special for t in original[inputs["attention_mask"] == 1])
        replaced += int((inputs["input_ids"][picked] == mlm.tokenizer.mask_token_id).sum())
    assert 0.1 < chosen / real < 0.2, chosen / real
    assert 0.65 < replaced / chosen < 0.95  # 80% [MASK]


def _unmasked(dataset: TextDataset, indices: list[int]) -> torch.Tensor:
    """The same samples as a classification set: the ids before masking."""
    labels = np.zeros(len(dataset), np.int64)
    plain = TextDataset(dataset.encoded, dataset.tokenizer, labels, get_task("classification"))
    return plain.get_batch(indices).inputs["input_ids"]


def test_masks_are_a_function_of_seed_and_indices_and_leave_the_global_rng_alone(mlm: TextDataset) -> None:
    indices = [3, 1, 4, 1, 5, 9, 2, 6, 53, 58]
    state = torch.get_rng_state()
    torch.manual_seed(1)
    a = mlm.get_batch(indices)
    torch.manual_seed(2)
    b = mlm.get_batch(indices)
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"]) and torch.equal(a.targets, b.targets)
    torch.set_rng_state(state)
    mlm.get_batch(indices)
    assert torch.equal(torch.get_rng_state(), state)
    mlm.seed = 1
    c = mlm.get_batch(indices)
    assert not torch.equal(a.targets, c.targets)


def test_masked_batches_are_the_same_with_and_without_workers(mlm: TextDataset) -> None:
    order = torch.randperm(120, generator=torch.Generator().manual_seed(3)).tolist()

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(mlm, batch_size=16, sampler=order, num_workers=workers, collate_fn=collate_batched)
        return [(x["input_ids"], y) for x, y in loader]

    pairs = list(zip(batches(0), batches(2), strict=True))
    assert len(pairs) == 8
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- length bucketing --------------------------------------------------------------------------------------------


def _padded_fraction(loader: DataLoader) -> float:
    masks = [x["attention_mask"] for x, _ in loader]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_bucketing_cuts_padding_and_keeps_a_seeded_permutation(tmp_path: Path) -> None:
    bundle = text_bundle(tmp_path, n=600, val_size=0.1)
    train = bundle.train
    lengths = train.sample_lengths()
    assert lengths == [bundle.train.dataset.sample_lengths()[i] for i in train.indices]
    bucketed = make_loader(train, 4, train=True, seed=5)
    assert isinstance(bucketed.sampler, EpochShuffle) and bucketed.sampler.lengths is not None
    plain = DataLoader(train, batch_size=4, sampler=EpochShuffle(len(train), 5), drop_last=True,
                       collate_fn=collate_batched)  # fmt: skip
    assert _padded_fraction(bucketed) < 0.5 * _padded_fraction(plain)
    sampler = EpochShuffle(len(train), 5, lengths, batch_size=4)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(540)) and first != second  # each epoch a new permutation of all
    again = EpochShuffle(len(train), 5, lengths, batch_size=4)
    assert list(again) == first and list(again) == second  # the same (seed, epoch), the same order
    again.epoch, again.start = 1, 10
    assert list(again) == second[10:]
    assert list(EpochShuffle(len(train), 6, lengths, batch_size=4)) != first


def test_bucketed_batches_are_whole_the_rest_comes_last_and_without_lengths_nothing_changes() -> None:
    lengths = [random.Random(i).randint(1, 50) for i in range(1003)]
    order = list(EpochShuffle(1003, 2, lengths, batch_size=10))
    assert sorted(order) == list(range(1003))
    permutation = torch.randperm(1003, generator=torch.Generator().manual_seed(2 * 100_003)).tolist()
    assert set(order[-3:]) == set(permutation[1000:])  # the last chunk's rest is last: drop_last drops it alone
    for first in range(0, 1000, 10):  # within a batch, lengths are sorted: it came from one sorted chunk
        batch = [lengths[i] for i in order[first : first + 10]]
        assert batch == sorted(batch)
    for seed, epoch in ((0, 0), (3, 2)):
        sampler = EpochShuffle(17, seed)
        sampler.epoch = epoch
        expected = torch.randperm(17, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        assert list(sampler) == expected  # images: the order of every earlier version, bit for bit


# --- evaluation padding ------------------------------------------------------------------------------------------


def test_pad_to_multiple_over_a_text_subset_gives_whole_batches_and_ignored_targets(tmp_path: Path) -> None:
    assert PadToMultiple.IGNORE == -100
    bundle = text_bundle(tmp_path, n=60, val_size=13)
    padded = PadToMultiple(bundle.val, 8)
    assert len(padded) == 16 and padded.sample_lengths()[13:] == [padded.sample_lengths()[0]] * 3
    batches = list(make_loader(padded, 8, train=False))
    assert [y.shape for _, y in batches] == [(8,), (8,)]
    targets = torch.cat([y for _, y in batches])
    assert targets[13:].tolist() == [-100] * 3 and bool((targets[:13] >= 0).all())
    assert targets[:13].tolist() == bundle.val.get_batch(range(13)).targets.tolist()
    mlm = text_bundle(tmp_path, n=60, val_size=13, task="masked-lm")
    inputs, targets = PadToMultiple(mlm.val, 8).get_batch(range(8, 16))
    assert targets.shape == inputs["input_ids"].shape and bool((targets[5:] == -100).all())
    assert bool((targets[:5] != -100).any())


# --- hub datasets ------------------------------------------------------------------------------------------------


def test_a_hub_dataset_that_is_not_cached_is_one_line_offline(monkeypatch) -> None:
    monkeypatch.setattr(tables_module, "hf_cached", lambda name: False)
    one_line_error(r"hub dataset 'glue' is not in the Hugging Face datasets cache and TINYKD_OFFLINE",
                   build_datasets, "hf:glue/sst2", download=True, text=text_options())  # fmt: skip
    one_line_error(r"data.name 'hf:a/b/c/d' must be hf:DATASET", build_datasets, "hf:a/b/c/d", text=text_options())


def test_a_cached_hub_dataset_uses_validation_when_test_labels_are_hidden(monkeypatch) -> None:
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})  # fmt: skip
    rows = make_rows(40)

    def split(part: list[tuple[str, int]], hide: bool = False) -> datasets.Dataset:
        labels = [-1 if hide else label for _, label in part]
        return datasets.Dataset.from_dict({"sentence": [s for s, _ in part], "label": labels}, features)

    calls = []

    def fake_load(name, config=None, **kwargs):
        calls.append((name, config))
        return datasets.DatasetDict({"train": split(rows[:30]), "validation": split(rows[30:]),
                                     "test": split(rows[30:36], hide=True)})  # fmt: skip

    monkeypatch.setattr(tables_module, "hf_cached", lambda name: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    bundle = build_datasets("hf:glue/sst2", val_size=0, text=text_options(vocab_size=200))
    assert calls == [("glue", "sst2")]
    assert bundle.classes == ["negative", "positive"] and len(bundle.test) == 10  # validation, not the hidden test
    assert bundle.test.get_batch(range(10)).targets.tolist() == [label for _, label in rows[30:]]
    mlm = build_datasets("hf:nyu-mll/glue/sst2", val_size=0, text=text_options(vocab_size=200, task="masked-lm"))
    assert calls[-1] == ("nyu-mll/glue", "sst2") and len(mlm.test) == 6  # no labels needed: the test split


def test_build_datasets_seeds_the_text_training_set(tmp_path: Path) -> None:
    a = text_bundle(tmp_path, seed=7, task="masked-lm")
    b = text_bundle(tmp_path, seed=8, task="masked-lm")
    assert a.train.dataset.seed == 7
    assert torch.equal(a.train.get_batch(range(16)).targets, a.train.get_batch(range(16)).targets)
    assert not torch.equal(a.train.get_batch(range(16)).targets, b.train.get_batch(range(16)).targets)
    plain_a, plain_b = a.train.dataset.get_batch(range(4)), b.train.dataset.get_batch(range(4))
    assert torch.equal(plain_a.inputs["attention_mask"], plain_b.inputs["attention_mask"])  # only the masks differ
    assert not torch.equal(plain_a.targets, plain_b.targets)
