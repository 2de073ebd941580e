"""Text data: tables read with Hugging Face `datasets`, checked, tokenized once, served as padded batches.

A split is read (csv, tsv, jsonl/json, parquet, or a hub dataset), its columns are checked (every mistake is
one line naming the file and the column, before any training), every text is tokenized once up front, and the
token ids are kept as one flat int32 array with offsets. `TextDataset.get_batch` then pads a batch to its longest
sequence (or to `max_length` for XLA's one compiled shape) and, for masked-lm, masks it as BERT does, with draws
that are a pure function of (seed, batch indices): a resumed run sees the same masks. The generative tasks:
causal-lm predicts each next token (texts one per sample, or packed into blocks of `max_length`), seq2seq
reads a source and a target column and predicts the target through the decoder (teacher forcing).

Where the files are (SST-2's folder, its download) is `datasets.py`'s business; this module only reads.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.data.loader import Batch, BatchDataset, seeded_generator, tensor_digest
from tinykd.data.text_augment import TextAugmentOptions, WordSwaps
from tinykd.data.tokens import Encoded, pad_samples
from tinykd.errors import TinykdError, close_matches

TEXT_COLUMNS = ("text", "sentence", "content", "review")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
IGNORE_INDEX = -100  # a target that counts in no loss (PyTorch's and Hugging Face's convention)
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class TextOptions:
    """What the recipe's `data` section says about text; the pipeline fills it."""

    train: str | None = None  # files, for data.name == "text"
    test: str | None = None
    text_column: str | None = None  # None: the first of TEXT_COLUMNS present
    text_pair_column: str | None = None  # sentence pairs (MNLI-style), optional
    label_column: str = "label"
    task: str = "classification"  # a key of TASKS
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


@dataclass(frozen=True)
class TextTask:
    """What a task needs from the table, and how it makes a batch's targets from the padded inputs."""

    needs_labels: bool
    needs_mask_token: bool
    targets: Callable[[TextDataset, dict[str, torch.Tensor], torch.Tensor], Batch]
    generative: bool = False  # predicts tokens that generate() continues: needs an end-of-sequence token


def _classification(dataset: TextDataset, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
    assert dataset.labels is not None
    return Batch(inputs, dataset.labels[index])


def _masked_lm(dataset: TextDataset, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
    """BERT's masking by transformers' collator, drawing from a generator keyed on (seed, indices)."""
    collator = dataset.collator()
    keep = dataset.special_mask(inputs["input_ids"]) | (inputs["attention_mask"] == 0)  # never chosen
    collator.generator = seeded_generator(dataset.seed, index)
    try:
        masked, targets = collator.torch_mask_tokens(inputs["input_ids"].clone(), special_tokens_mask=keep)
    finally:
        collator.generator = None
    return Batch({**inputs, "input_ids": masked}, targets)


def _causal_lm(dataset: TextDataset, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
    """Next-token targets: position t predicts token t + 1; the last position and padding predict nothing.

    The shift is made here, not inside the model (Hugging Face shifts `labels` itself), so that the logits and
    the targets line up position for position for every term, the evaluation and the teacher cache."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = torch.where(mask[:, 1:].bool(), ids[:, 1:], IGNORE_INDEX)
    return Batch(inputs, targets)


def _seq2seq(dataset: TextDataset, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
    """The decoder reads the target shifted right (its start token first) and predicts the target; padding -100."""
    assert dataset.decoder is not None
    labels, decoder_mask = pad_samples(dataset.decoder, index, dataset.max_length if dataset.static_shapes else None,
                                dataset.pad_id)  # fmt: skip
    decoder_ids = torch.full_like(labels, dataset.pad_id)
    decoder_ids[:, 0] = dataset.decoder_start_id
    decoder_ids[:, 1:] = labels[:, :-1]
    decoder_ids = torch.where(decoder_mask.bool(), decoder_ids, dataset.pad_id)  # start, t1 .. t(n-1), padding
    decoder_inputs = {"decoder_input_ids": decoder_ids, "decoder_attention_mask": decoder_mask}
    return Batch({**inputs, **decoder_inputs}, torch.where(decoder_mask.bool(), labels, IGNORE_INDEX))


# Task name -> what it needs from the table and how a batch's targets are made.
TASKS: dict[str, TextTask] = {
    "classification": TextTask(needs_labels=True, needs_mask_token=False, targets=_classification),
    "masked-lm": TextTask(needs_labels=False, needs_mask_token=True, targets=_masked_lm),
    "causal-lm": TextTask(needs_labels=False, needs_mask_token=False, targets=_causal_lm, generative=True),
    "seq2seq": TextTask(needs_labels=False, needs_mask_token=False, targets=_seq2seq, generative=True),
}
GENERATIVE_TASKS = tuple(name for name, task in TASKS.items() if task.generative)  # causal-lm, seq2seq
TOKEN_TASKS = ("masked-lm", *GENERATIVE_TASKS)  # tasks whose logits are one distribution per token


# --- reading tables ----------------------------------------------------------------------------------------------


def offline() -> bool:
    """`TINYKD_OFFLINE` or Hugging Face's own offline switches: nothing may be fetched from the network."""
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no", "off")
               for v in ("TINYKD_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))  # fmt: skip


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """`datasets` draws a progress bar per split it generates; a run's output has no use for them."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def read_table(path: str | Path) -> Any:
    """A csv, tsv, jsonl/json or parquet file as a `datasets.Dataset`, in memory.

    tsv is read with no quote processing: SST-2's sentences hold quote characters that are text, not quoting.
    The parse goes through a throw-away cache folder, so a file edited in place is never served from a stale cache.
    """
    import datasets

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TinykdError(f"{path}: unknown file type '{path.suffix}'; text files must end in "
                          f"{', '.join(FORMATS)}")  # fmt: skip
    if not path.is_file():
        raise TinykdError(f"{path} does not exist; give an existing {path.suffix} file")
    if path.stat().st_size == 0:
        raise TinykdError(f"{path} is empty; it needs a header (or fields) and at least one row")
    options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix.lower() == ".tsv" else {}
    with tempfile.TemporaryDirectory(prefix="tinykd-") as cache, quiet_datasets():
        try:
            loaded = datasets.load_dataset(kind, data_files=str(path), keep_in_memory=True, cache_dir=cache,
                                           split="train", **options)  # fmt: skip
        except Exception as exc:  # any parse error of any backend: the user's file, one line
            cause = exc.__cause__ or exc
            if "corresponds to no data" in str(exc):
                raise TinykdError(f"{path} has no rows; it needs at least one sample") from None
            raise TinykdError(f"{path} could not be read as {path.suffix.lstrip('.')}: "
                              f"{type(cause).__name__}: {_first_line(cause)}") from None  # fmt: skip
    if len(loaded) == 0:
        raise TinykdError(f"{path} has no rows; it needs at least one sample")
    return loaded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def hf_cached(name: str) -> bool:
    """Whether `datasets` holds the hub dataset `name` in its cache (the folder its offline fallback reads)."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    folder = Path(config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(p.is_dir() for p in folder.glob("*/*/*"))


def load_hf(spec: str, download: bool, options: TextOptions) -> tuple[Any, Any, list[str] | None, str, str]:
    """`DATASET[/CONFIG]` or `OWNER/DATASET/CONFIG` from the hub: (train, test, class names or None, train's name,
    test's name).

    Fetched only with `download` (or when already cached); offline, a name that is not cached is an error. The
    test split is `test` unless its labels are all missing or negative (GLUE hides them), then `validation`.
    """
    import datasets

    parts = spec.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise TinykdError(f"data.name 'hf:{spec}' must be hf:DATASET, hf:DATASET/CONFIG or hf:OWNER/DATASET/CONFIG "
                          "(CONFIG 'default' for a dataset without configurations)")  # fmt: skip
    name, config = ("/".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (spec, None)
    if not hf_cached(name):
        if offline():
            raise TinykdError(f"hub dataset '{name}' is not in the Hugging Face datasets cache and TINYKD_OFFLINE or "
                              "HF_HUB_OFFLINE is set; load it once online, or use data.name: text with "
                              "files")  # fmt: skip
        if not download:
            raise TinykdError(f"hub dataset '{name}' is not in the Hugging Face datasets cache; set data.download=true "
                              "to fetch it, or use data.name: text with files")  # fmt: skip
    with quiet_datasets():
        try:
            loaded = datasets.load_dataset(name, config)
        except Exception as exc:  # a wrong name, config or connection: one line
            raise TinykdError(f"could not load hub dataset 'hf:{spec}': {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None  # fmt: skip
    splits = list(loaded)
    if "train" not in loaded:
        raise TinykdError(f"hub dataset 'hf:{spec}' has no train split (splits: {', '.join(splits)})")
    train = loaded["train"]
    test_name = next((s for s in ("test", "validation") if s in loaded), None)
    if test_name == "test" and "validation" in loaded and TASKS[options.task].needs_labels \
            and not _has_labels(loaded["test"], options.label_column):  # fmt: skip
        test_name = "validation"  # GLUE hides its test labels (-1)
    if test_name is None:
        raise TinykdError(f"hub dataset 'hf:{spec}' has no test or validation split (splits: {', '.join(splits)})")
    feature = train.features.get(options.label_column)
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return train, loaded[test_name], names, f"hf:{spec} (train)", f"hf:{spec} ({test_name})"


def _has_labels(table: Any, column: str) -> bool:
    """Whether a split has any real label in `column`: not absent, not all missing, not all negative."""
    if column not in table.column_names:
        return False
    return any(isinstance(v, int | float) and v >= 0 for v in table.data.column(column).to_pylist())


# --- checking columns --------------------------------------------------------------------------------------------


def _columns(table: Any) -> str:
    return ", ".join(table.column_names) or "none"


def text_column(table: Any, wanted: str | None, source: str, setting: str = "data.text_column") -> str:
    """The text column: the one asked for, else the first of TEXT_COLUMNS that the table has."""
    if wanted is not None:
        if wanted not in table.column_names:
            raise TinykdError(f"{source} has no column '{wanted}' ({setting})"
                              f"{close_matches(wanted, table.column_names)}; columns: {_columns(table)}")  # fmt: skip
        return wanted
    found = next((c for c in TEXT_COLUMNS if c in table.column_names), None)
    if found is None:
        raise TinykdError(f"{source} has no text column (looked for {', '.join(TEXT_COLUMNS)}); columns: "
                          f"{_columns(table)}; set {setting}")  # fmt: skip
    return found


def read_texts(table: Any, column: str, source: str, setting: str = "data.text_column") -> list[str]:
    """A column of strings; a missing value is an empty text, a column of anything else is an error."""
    import pyarrow as pa

    if column not in table.column_names:
        raise TinykdError(f"{source} has no column '{column}' ({setting}); columns: {_columns(table)}")
    values = table.data.column(column)
    if pa.types.is_null(values.type) or values.null_count == len(values):  # csv reads a column of blanks as numbers
        return [""] * len(table)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise TinykdError(f"{source}: column '{column}' holds {values.type}, not text; set {setting} to the column "
                          f"of texts (columns: {_columns(table)})")  # fmt: skip
    return [v or "" for v in values.to_pylist()]


def read_labels(table: Any, column: str, source: str) -> np.ndarray:
    """A column of integer class labels >= 0 as int64; every other content is an error naming a row."""
    import pyarrow as pa

    if column not in table.column_names:
        near = close_matches(column, table.column_names)
        raise TinykdError(f"{source} has no label column '{column}' (data.label_column){near}; columns: "
                          f"{_columns(table)}")  # fmt: skip
    values = table.data.column(column)
    if values.null_count:
        row = next(i for i, v in enumerate(values.to_pylist()) if v is None)
        raise TinykdError(f"{source}: column '{column}' has no label in row {row + 1}; every sample needs one")
    if pa.types.is_integer(values.type):
        labels = values.to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_floating(values.type):
        floats = values.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(floats != np.round(floats))
        if len(bad):
            row = int(bad[0])
            raise TinykdError(f"{source}: column '{column}' holds the label {float(floats[row]):g} in row {row + 1}; "
                              "labels must be integers 0, 1, ...: one per class")  # fmt: skip
        labels = floats.astype(np.int64)
    else:
        example = next((v for v in values.to_pylist() if v is not None), None)
        kind = "text" if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else values.type
        raise TinykdError(f"{source}: column '{column}' holds {kind} labels (e.g. {example!r}), not integers; "
                          "labels must be integers 0, 1, ...: map each class name to its number")  # fmt: skip
    if len(labels) and labels.min() < 0:
        row = int(np.argmax(labels < 0))
        raise TinykdError(f"{source}: column '{column}' holds the negative label {labels[row]} in row {row + 1}; "
                          "labels must be integers 0, 1, ...: one per class")  # fmt: skip
    return labels


# --- tokenizers --------------------------------------------------------------------------------------------------


def train_wordpiece(texts: Sequence[str], vocab_size: int = 8000, lowercase: bool = True, max_length: int = 512) -> Any:
    """A BERT-style WordPiece tokenizer trained on `texts`, as a `PreTrainedTokenizerFast` (saves and reloads
    with `save_pretrained` / `AutoTokenizer.from_pretrained`).

    Deterministic: `tokenizers`' trainer numbers the continuation pieces ("##x") in the order of a Rust hash map,
    and those numbers break ties between merges of equal count, so the same texts gave other vocabularies from
    one call to the next. Giving it every "##x" up front, in sorted order, fixes the numbering; they are then
    plain vocabulary entries again (only the five BERT tokens are special).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    chars = sorted(set(normalizer.normalize_str("\n".join(texts))) - set(" \t\n\r"))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=SPECIAL_TOKENS + [f"##{c}" for c in chars])  # fmt: skip
    draft = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    draft.normalizer = normalizer
    draft.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    draft.train_from_iterator(texts, trainer)
    vocab = draft.get_vocab(with_added_tokens=False)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    # [CLS] and [SEP] also serve as begin and end of sequence: a causal LM learns to end a text with [SEP], and
    # generate() stops there
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   bos_token="[CLS]", eos_token="[SEP]",
                                   model_max_length=max_length,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])  # fmt: skip


def load_tokenizer(spec: Any) -> Any:
    """A tokenizer object as it is; a str through `AutoTokenizer.from_pretrained` (a directory, or a hub id, from
    the cache only when offline). A tokenizer without a pad token pads with its end-of-sequence token (GPT-2)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

    if isinstance(spec, str):
        local = Path(spec).expanduser()
        try:
            if local.is_dir():
                tokenizer = AutoTokenizer.from_pretrained(str(local))
            else:
                tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=offline())
        except Exception as exc:  # not a tokenizer, not cached, not on the hub: one line
            where = f"directory {local}" if local.is_dir() else f"'{spec}' (not a directory; a hub id)"
            hint = "; TINYKD_OFFLINE or HF_HUB_OFFLINE is set, so only the cache was read" if offline() and \
                not local.is_dir() else ""  # fmt: skip
            raise TinykdError(f"data.tokenizer: could not load a tokenizer from {where}{hint}: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None  # fmt: skip
    elif isinstance(spec, PreTrainedTokenizerBase):
        tokenizer = spec
    elif type(spec).__module__.startswith("tokenizers") and type(spec).__name__ == "Tokenizer":
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=spec)
    else:
        raise TinykdError(f"data.tokenizer must be a directory, a hub id or a transformers tokenizer, not "
                          f"{type(spec).__name__}")  # fmt: skip
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TinykdError(f"data.tokenizer {_tokenizer_name(tokenizer)} has no pad token and no end-of-sequence "
                              "token to pad with; use a tokenizer that has one")  # fmt: skip
        tokenizer.pad_token = tokenizer.eos_token
        print(f"tinykd: note: tokenizer {_tokenizer_name(tokenizer)} has no pad token; padding with its "
              f"end-of-sequence token {tokenizer.eos_token!r} (masked out by the attention mask)")  # fmt: skip
    return tokenizer


def _tokenizer_name(tokenizer: Any) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def encode(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> Encoded:
    """Every text tokenized once, in one batched call, truncated to `max_length` tokens."""
    want_types = pairs is not None and "token_type_ids" in tokenizer.model_input_names
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=want_types)  # fmt: skip
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    ids = np.fromiter(chain.from_iterable(enc["input_ids"]), dtype=np.int32, count=total)
    types = np.fromiter(chain.from_iterable(enc["token_type_ids"]), dtype=np.int8, count=total) if want_types \
        else None  # fmt: skip
    return Encoded(ids, offsets, types)


def with_eos(encoded: Encoded, eos_id: int, max_length: int) -> Encoded:
    """Every sample ending in `eos_id` (within `max_length` tokens): a generative model learns where a text ends.
    Tokenizers that add it themselves (the trained WordPiece's [SEP]) leave nothing to do."""
    lengths = np.diff(encoded.offsets)
    last = encoded.ids[np.maximum(encoded.offsets[1:] - 1, 0)]
    if len(encoded) and ((lengths > 0) & (last == eos_id)).all():
        return encoded
    pieces = []
    for start, end in zip(encoded.offsets[:-1].tolist(), encoded.offsets[1:].tolist(), strict=True):
        row = encoded.ids[start:end]
        if not len(row) or row[-1] != eos_id:
            row = np.append(row[: max_length - 1], np.int32(eos_id))
        pieces.append(row)
    new_lengths = np.fromiter((len(r) for r in pieces), dtype=np.int64, count=len(pieces))
    offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64)
    ids = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
    return Encoded(ids, offsets)


def packed(encoded: Encoded, block: int) -> Encoded:
    """The samples joined end to end and cut into blocks of `block` tokens (the last may be shorter): no padding,
    and texts shorter than a block share one (GPT-2's pre-training layout)."""
    total = len(encoded.ids)
    offsets = np.append(np.arange(0, total, block, dtype=np.int64), np.int64(total))
    if total == 0:
        offsets = np.zeros(1, np.int64)
    return Encoded(encoded.ids.copy(), offsets)


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
                 task: str = "classification", max_length: int = 128, static_shapes: bool = False,
                 mlm_probability: float = 0.15, classes: list[str] | None = None, seed: int = 0,
                 decoder: Encoded | None = None) -> None:  # fmt: skip
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        if TASKS[task].needs_labels and (labels is None or len(labels) != len(encoded)):
            raise ValueError(f"task {task!r} needs one label per sample")
        if task == "seq2seq" and (decoder is None or len(decoder) != len(encoded)):
            raise ValueError("task 'seq2seq' needs one target sequence per sample")
        self.decoder = decoder
        self.decoder_start_id = default_decoder_start(tokenizer)
        self.texts: list[str] | None = None  # the raw texts, sample by sample, where samples are texts
        self.encoded, self.tokenizer, self.task = encoded, tokenizer, task
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
        return TASKS[self.task].targets(self, inputs, index)

    def content_digest(self) -> str:
        e, d = self.encoded, self.decoder
        return tensor_digest(e.ids, e.offsets, e.type_ids, self.labels, self.task, self.max_length, self.static_shapes,
                             self.mlm_probability, self.pad_id, self.special_ids, self.seed,
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
    if options.task not in TASKS:
        raise TinykdError(f"data.task '{options.task}' is not a text task{close_matches(options.task, TASKS)}; "
                          f"known: {', '.join(TASKS)}")  # fmt: skip
    if options.max_length < 4:
        raise TinykdError(f"data.max_length={options.max_length} is too short; give at least 4 tokens (e.g. 128)")
    if options.vocab_size < 100:
        raise TinykdError(f"data.vocab_size={options.vocab_size} is too small; give at least 100 (e.g. 8000)")
    if not 0 < options.mlm_probability < 1:
        raise TinykdError(f"data.mlm_probability={options.mlm_probability} must be between 0 and 1 (e.g. 0.15)")
    if options.augment is not None and options.task != "classification":
        raise TinykdError(f"data.text_augment swaps words of labelled texts (data.task: classification); data.task is "
                          f"{options.task}: remove data.text_augment")  # fmt: skip
    if options.packing and options.task != "causal-lm":
        raise TinykdError(f"data.packing joins texts into blocks for causal-lm; data.task is {options.task}: "
                          "remove data.packing or set data.task: causal-lm")  # fmt: skip


def text_splits(train: Any, test: Any, options: TextOptions, train_name: str, test_name: str,
                classes: list[str] | None = None) -> TextSplits:  # fmt: skip
    """Check both tables, make or load the tokenizer, tokenize both splits once.

    Classes are `classes` when given (SST-2's names, a hub dataset's ClassLabel), else "0", "1", ... up to the
    largest training label; a test label outside them is an error. The other tasks read no labels: classes are
    []. seq2seq reads `source_column` (default: the first of TEXT_COLUMNS) and `target_column`.
    """
    check_options(options)
    task = TASKS[options.task]
    tables = ((train_name, train), (test_name, test))
    wanted = options.source_column if options.task == "seq2seq" else options.text_column
    setting = "data.source_column" if options.task == "seq2seq" else "data.text_column"
    texts = {name: read_texts(table, text_column(table, wanted, name, setting), name, setting)
             for name, table in tables}  # fmt: skip
    pairs: dict[str, list[str]] | None = None
    if options.text_pair_column is not None:
        pairs = {name: read_texts(table, options.text_pair_column, name, "data.text_pair_column")
                 for name, table in tables}  # fmt: skip
    targets: dict[str, list[str]] | None = None
    if options.task == "seq2seq":
        targets = {name: read_texts(table, options.target_column, name, "data.target_column")
                   for name, table in tables}  # fmt: skip
    labels: dict[str, np.ndarray | None] = {train_name: None, test_name: None}
    if task.needs_labels:
        labels = {name: read_labels(table, options.label_column, name) for name, table in tables}
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
        if options.task == "causal-lm" and options.packing:
            encoded = packed(encoded, options.max_length)
        if targets is not None:
            decoder = with_eos(encode(tokenizer, targets[name], None, options.max_length), tokenizer.eos_token_id,
                               options.max_length)  # fmt: skip
        if not any(np.diff(encoded.offsets) > (1 if options.task == "causal-lm" else 0)):
            raise TinykdError(f"{name}: every text is empty after tokenization; {options.task} needs text to "
                              "predict")  # fmt: skip
        made = TextDataset(encoded, tokenizer, labels[name], options.task, options.max_length, options.static_shapes,
                           options.mlm_probability, classes, decoder=decoder)  # fmt: skip
        if not (options.task == "causal-lm" and options.packing):  # samples are texts: keep them (tinykd generate)
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
    name = _tokenizer_name(tokenizer)
    if TASKS[options.task].generative and tokenizer.eos_token_id is None:
        raise TinykdError(f"data.task={options.task} needs a tokenizer with an end-of-sequence token (to learn where "
                          f"a text ends); {name} has none: set its eos_token, or leave data.tokenizer unset to train "
                          "one")  # fmt: skip
    if TASKS[options.task].needs_mask_token and tokenizer.mask_token is None:
        raise TinykdError(f"data.task={options.task} needs a tokenizer with a mask token; {name} has none "
                          "(use a BERT-style tokenizer, or leave data.tokenizer unset to train one)")  # fmt: skip
    special = tokenizer.num_special_tokens_to_add(pair=pairs)
    if options.max_length <= special:
        raise TinykdError(f"data.max_length={options.max_length} leaves no room for text: {name} adds {special} "
                          "special tokens per sample; give more (e.g. 128)")  # fmt: skip
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and options.max_length > limit:
        raise TinykdError(f"data.max_length={options.max_length} is more than {name}'s model_max_length {limit}; "
                          f"give at most {limit}")  # fmt: skip
