"""Text data: tables read with Hugging Face `datasets`, checked, tokenized once, served as padded batches.

A split is read (csv, tsv, jsonl/json, parquet, or a hub dataset) and its columns are checked (`tables.py`:
every mistake is one line naming the file and the column, before any training), every text is tokenized once
up front (`tokenizers.py`), and the
token ids are kept as one flat int32 array with offsets. `TextDataset.get_batch` then pads a batch to its longest
sequence (or to `max_length` for XLA's one compiled shape) and, for masked-lm, masks it as BERT does, with draws
that are a pure function of (seed, batch indices): a resumed run sees the same masks. The generative tasks:
causal-lm predicts each next token (texts one per sample, or packed into blocks of `max_length`), seq2seq
reads a source and a target column and predicts the target through the decoder (teacher forcing). What a task
needs of the table and how it makes its targets is the task's (`TextOptions.task`, a `tinykd.tasks.Task`): this
module reads its attributes and never asks for a task by name.

Where the files are (SST-2's folder, its download) is `datasets.py`'s business; this module only reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from tinykd.data.loader import Batch, BatchDataset, seeded_generator, tensor_digest
from tinykd.data.tables import label_ids, read_labels, read_texts, text_column
from tinykd.data.text_augment import TextAugmentOptions, WordSwaps
from tinykd.data.tokenizers import encode, load_tokenizer, packed, tokenizer_name, train_wordpiece, with_eos
from tinykd.data.tokens import Encoded, pad_samples
from tinykd.errors import TinykdError


@dataclass
class TextOptions:
    """What the recipe's `data` section says about text; the pipeline fills it."""

    train: str | None = None  # files, for data.name == "text"
    test: str | None = None
    text_column: str | None = None  # None: the first of TEXT_COLUMNS present
    text_pair_column: str | None = None  # sentence pairs (MNLI-style), optional
    label_column: str = "label"
    label_names: list[str] | None = None  # the class names in id order (labels written as names, or ids named)
    task: TextTask | None = None  # the Task (tinykd.tasks.get_task(data.task)): what the data holds and targets
    max_length: int = 128
    tokenizer: Any = None  # None: a WordPiece trained on the training texts; a str: a directory or hub id; an object
    vocab_size: int = 8000  # for the trained WordPiece
    lowercase: bool = True  # for the trained WordPiece
    mlm_probability: float = 0.15
    static_shapes: bool = False  # pad every batch to max_length (XLA: one compiled shape)
    source_column: str | None = None  # seq2seq: None: the first of TEXT_COLUMNS present
    target_column: str = "target"  # seq2seq
    packing: bool = False  # causal-lm: the texts joined end to end and cut into blocks of max_length
    augment: TextAugmentOptions | None = None  # classification: TinyBERT's word swaps in training batches


class TextTask(Protocol):
    """What the text data reads of its task (a `tinykd.tasks.Task`, which the pipeline hands over in
    `TextOptions.task`): what the table must hold, what the data may do, and how a batch's targets are made."""

    name: str
    needs_labels: bool  # a label column
    needs_mask_token: bool  # a tokenizer with a mask token
    generative: bool  # predicts tokens that generate() continues: needs an end-of-sequence token
    text_to_text: bool  # a source and a target column
    min_tokens: int  # a sample with fewer tokens has nothing to predict
    allows_packing: bool
    allows_text_augment: bool

    def targets(self, dataset: TextDataset, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch: ...


# --- the dataset -------------------------------------------------------------------------------------------------


class TextDataset(BatchDataset):
    """Tokenized texts (and labels, for classification), served as right-padded batches.

    `get_batch(indices)` gives `Batch({"input_ids", "attention_mask"[, "token_type_ids"]}, targets)`, padded to the
    longest sample of the batch or, with `static_shapes`, to `max_length`. Targets: the labels (B,) for
    classification; for masked-lm the ids to predict (B, T), -100 elsewhere; for causal-lm the next token at each
    position; for seq2seq the target tokens (`decoder`, one per sample), with `decoder_input_ids` and
    `decoder_attention_mask` added to the inputs. Masking draws from a generator seeded by (seed, indices), as
    `TensorImageDataset`'s augmentation does: never from torch's global RNG.
    """

    def __init__(self, encoded: Encoded, tokenizer: Any, labels: np.ndarray | None = None,
                 task: TextTask | None = None, max_length: int = 128, static_shapes: bool = False,
                 mlm_probability: float = 0.15, classes: list[str] | None = None, seed: int = 0,
                 decoder: Encoded | None = None) -> None:  # fmt: skip
        if task is None:
            raise ValueError("a TextDataset needs its task (a tinykd.tasks.Task: it makes the targets)")
        if task.needs_labels and (labels is None or len(labels) != len(encoded)):
            raise ValueError(f"task {task.name!r} needs one label per sample")
        if task.text_to_text and (decoder is None or len(decoder) != len(encoded)):
            raise ValueError(f"task {task.name!r} needs one target sequence per sample")
        self.decoder = decoder
        self.decoder_start_id = default_decoder_start(tokenizer)
        self.texts: list[str] | None = None  # the raw texts, sample by sample, where samples are texts
        self.encoded, self.tokenizer, self.task = encoded, tokenizer, task  # task: a tinykd.tasks.Task
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        self.max_length, self.static_shapes, self.mlm_probability = max_length, static_shapes, mlm_probability
        self.classes = classes if classes is not None else []
        self.seed = seed
        self.pad_id = int(tokenizer.pad_token_id)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64)
        self._collator: Any = None
        self.swaps: WordSwaps | None = None  # the training view's word swaps (text_augment.py); None: none

    def __len__(self) -> int:
        return len(self.encoded)

    def sample_lengths(self) -> list[int]:
        return np.diff(self.encoded.offsets).tolist()

    def get_batch(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        width = self.max_length if self.static_shapes else None
        input_ids, attention = pad_samples(self.encoded, index, width, self.pad_id)
        if self.swaps is not None:
            input_ids = self.swaps.apply(input_ids, attention, self.encoded.offsets[index.numpy()],
                                         seeded_generator(self.seed, index))  # fmt: skip
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        types = self.encoded.type_ids
        if types is not None:
            inputs["token_type_ids"] = pad_samples(Encoded(types, self.encoded.offsets), index, width, 0)[0]
        return self.task.targets(self, inputs, index)

    def content_digest(self) -> str:
        e, d = self.encoded, self.decoder
        return tensor_digest(e.ids, e.offsets, e.type_ids, self.labels, self.task.name, self.max_length,
                             self.static_shapes, self.mlm_probability, self.pad_id, self.special_ids, self.seed,
                             *((d.ids, d.offsets, self.decoder_start_id) if d is not None else ()),
                             *(self.swaps.digest_parts() if self.swaps is not None else ()))  # fmt: skip

    def special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where the special tokens ([CLS], [SEP], [PAD]...) are: never chosen for masking."""
        return torch.isin(input_ids, self.special_ids)

    def collator(self) -> Any:
        """transformers' masked-LM collator (made once per process; its generator is set per batch)."""
        if self._collator is None:
            from transformers import DataCollatorForLanguageModeling

            self._collator = DataCollatorForLanguageModeling(self.tokenizer, mlm=True,
                                                             mlm_probability=self.mlm_probability)  # fmt: skip
        return self._collator

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_collator": None}  # loader workers make their own


def default_decoder_start(tokenizer: Any) -> int:
    """The token a decoder starts from when the model does not say: begin-of-sequence, else [CLS], else end,
    else padding (T5's choice). A pretrained encoder-decoder's own `decoder_start_token_id` replaces it."""
    for name in ("bos_token_id", "cls_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


# --- splits ------------------------------------------------------------------------------------------------------


@dataclass
class TextSplits:
    """What the text builders give `datasets.py`: the two datasets, the classes and the tokenizer."""

    train: TextDataset
    test: TextDataset
    classes: list[str]
    tokenizer: Any


def check_options(options: TextOptions) -> None:
    """The options that do not depend on the data, checked first."""
    task = options.task
    if task is None:
        raise TinykdError("text data needs its task: give TextOptions.task (tinykd.tasks.get_task(data.task))")
    if options.max_length < 4:
        raise TinykdError(f"data.max_length={options.max_length} is too short; give at least 4 tokens (e.g. 128)")
    if options.vocab_size < 100:
        raise TinykdError(f"data.vocab_size={options.vocab_size} is too small; give at least 100 (e.g. 8000)")
    if not 0 < options.mlm_probability < 1:
        raise TinykdError(f"data.mlm_probability={options.mlm_probability} must be between 0 and 1 (e.g. 0.15)")
    if options.augment is not None and not task.allows_text_augment:
        raise TinykdError(f"data.text_augment swaps words of labelled texts (data.task: classification); data.task is "
                          f"{task.name}: remove data.text_augment")  # fmt: skip
    if options.packing and not task.allows_packing:
        raise TinykdError(f"data.packing joins texts into blocks for causal-lm; data.task is {task.name}: "
                          "remove data.packing or set data.task: causal-lm")  # fmt: skip


def text_splits(train: Any, test: Any, options: TextOptions, train_name: str, test_name: str,
                classes: list[str] | None = None) -> TextSplits:  # fmt: skip
    """Check both tables, make or load the tokenizer, tokenize both splits once.

    Classes are `classes` when given (SST-2's names, a hub dataset's ClassLabel), else "0", "1", ... up to the
    largest training label; a test label outside them is an error. The other tasks read no labels: classes are
    []. seq2seq reads `source_column` (default: the first of TEXT_COLUMNS) and `target_column`.
    """
    check_options(options)
    task = options.task
    assert task is not None
    tables = ((train_name, train), (test_name, test))
    wanted = options.source_column if task.text_to_text else options.text_column
    setting = "data.source_column" if task.text_to_text else "data.text_column"
    texts = {name: read_texts(table, text_column(table, wanted, name, setting), name, setting)
             for name, table in tables}  # fmt: skip
    pairs: dict[str, list[str]] | None = None
    if options.text_pair_column is not None:
        pairs = {name: read_texts(table, options.text_pair_column, name, "data.text_pair_column")
                 for name, table in tables}  # fmt: skip
    targets: dict[str, list[str]] | None = None
    if task.text_to_text:
        targets = {name: read_texts(table, options.target_column, name, "data.target_column")
                   for name, table in tables}  # fmt: skip
    labels: dict[str, np.ndarray | None] = {train_name: None, test_name: None}
    if task.needs_labels:
        read = {name: read_labels(table, options.label_column, name) for name, table in tables}
        labels, classes = label_ids(read, options.label_names or classes, options.label_column)  # type: ignore[assignment]
        classes = _classes(labels[train_name], labels[test_name], classes, options.label_column, train_name,  # type: ignore[arg-type]
                           test_name)  # fmt: skip
    else:
        classes = []
    if options.tokenizer is None:
        corpus = texts[train_name] + (pairs[train_name] if pairs else []) + (targets[train_name] if targets else [])
        tokenizer = train_wordpiece(corpus, options.vocab_size, options.lowercase, options.max_length)
    else:
        tokenizer = load_tokenizer(options.tokenizer)
    _check_tokenizer(tokenizer, options, pairs is not None)

    def make(name: str) -> TextDataset:
        encoded = encode(tokenizer, texts[name], pairs[name] if pairs else None, options.max_length)
        decoder = None
        if task.generative:
            encoded = with_eos(encoded, tokenizer.eos_token_id, options.max_length)
        if options.packing:  # allowed for causal-lm only (check_options)
            encoded = packed(encoded, options.max_length)
        if targets is not None:
            decoder = with_eos(encode(tokenizer, targets[name], None, options.max_length), tokenizer.eos_token_id,
                               options.max_length)  # fmt: skip
        if not any(np.diff(encoded.offsets) >= task.min_tokens):
            raise TinykdError(f"{name}: every text is empty after tokenization; {task.name} needs text to "
                              "predict")  # fmt: skip
        made = TextDataset(encoded, tokenizer, labels[name], task, options.max_length, options.static_shapes,
                           options.mlm_probability, classes, decoder=decoder)  # fmt: skip
        if not options.packing:  # samples are texts: keep them (tinykd generate)
            made.texts = texts[name]
        return made

    return TextSplits(make(train_name), make(test_name), classes, tokenizer)


def _classes(train: np.ndarray, test: np.ndarray, names: list[str] | None, column: str, train_name: str,
             test_name: str) -> list[str]:  # fmt: skip
    if names is not None:
        for name, labels in ((train_name, train), (test_name, test)):
            if len(labels) and labels.max() >= len(names):
                row = int(np.argmax(labels >= len(names)))
                raise TinykdError(f"{name}: column '{column}' holds the label {labels[row]} in row {row + 1}, but the "
                                  f"classes are 0..{len(names) - 1} ({', '.join(names)})")  # fmt: skip
        return list(names)
    classes = [str(i) for i in range(int(train.max()) + 1)]
    if len(test) and test.max() >= len(classes):
        row = int(np.argmax(test >= len(classes)))
        raise TinykdError(f"{test_name}: column '{column}' holds the label {test[row]} in row {row + 1}, a class the "
                          f"training set never has; the classes are the training labels 0..{len(classes) - 1} "
                          f"(from {train_name})")  # fmt: skip
    return classes


def _check_tokenizer(tokenizer: Any, options: TextOptions, pairs: bool) -> None:
    name = tokenizer_name(tokenizer)
    task = options.task
    assert task is not None
    if task.generative and tokenizer.eos_token_id is None:
        raise TinykdError(f"data.task={task.name} needs a tokenizer with an end-of-sequence token (to learn where "
                          f"a text ends); {name} has none: set its eos_token, or leave data.tokenizer unset to train "
                          "one")  # fmt: skip
    if task.needs_mask_token and tokenizer.mask_token is None:
        raise TinykdError(f"data.task={task.name} needs a tokenizer with a mask token; {name} has none "
                          "(use a BERT-style tokenizer, or leave data.tokenizer unset to train one)")  # fmt: skip
    special = tokenizer.num_special_tokens_to_add(pair=pairs)
    if options.max_length <= special:
        raise TinykdError(f"data.max_length={options.max_length} leaves no room for text: {name} adds {special} "
                          "special tokens per sample; give more (e.g. 128)")  # fmt: skip
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and options.max_length > limit:
        raise TinykdError(f"data.max_length={options.max_length} is more than {name}'s model_max_length {limit}; "
                          f"give at most {limit}")  # fmt: skip
