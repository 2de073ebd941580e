"""Tokenizers: a WordPiece trained on the training texts or one loaded by name, and the token ids of many texts
(`Encoded`) with an end token added or packed into blocks for causal-lm."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from tinykd.data.tables import first_line
from tinykd.data.tokens import Encoded
from tinykd.errors import TinykdError
from tinykd.hub import offline, source_kwargs

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


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
            else:  # a hub id: the cache alone when it has the files, no network call (tinykd.hub)
                kwargs = source_kwargs(spec, "data.tokenizer", filename="tokenizer_config.json")
                tokenizer = AutoTokenizer.from_pretrained(spec, **kwargs)
        except TinykdError:
            raise
        except Exception as exc:  # not a tokenizer, not cached, not on the hub: one line
            where = f"directory {local}" if local.is_dir() else f"'{spec}' (not a directory; a hub id)"
            hint = "; TINYKD_OFFLINE or HF_HUB_OFFLINE is set, so only the cache was read" if offline() and \
                not local.is_dir() else ""  # fmt: skip
            raise TinykdError(f"data.tokenizer: could not load a tokenizer from {where}{hint}: "
                              f"{type(exc).__name__}: {first_line(exc)}") from None  # fmt: skip
    elif isinstance(spec, PreTrainedTokenizerBase):
        tokenizer = spec
    elif type(spec).__module__.startswith("tokenizers") and type(spec).__name__ == "Tokenizer":
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=spec)
    else:
        raise TinykdError(f"data.tokenizer must be a directory, a hub id or a transformers tokenizer, not "
                          f"{type(spec).__name__}")  # fmt: skip
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TinykdError(f"data.tokenizer {tokenizer_name(tokenizer)} has no pad token and no end-of-sequence "
                              "token to pad with; use a tokenizer that has one")  # fmt: skip
        tokenizer.pad_token = tokenizer.eos_token
        print(f"tinykd: note: tokenizer {tokenizer_name(tokenizer)} has no pad token; padding with its "
              f"end-of-sequence token {tokenizer.eos_token!r} (masked out by the attention mask)")  # fmt: skip
    return tokenizer


def tokenizer_name(tokenizer: Any) -> str:
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
