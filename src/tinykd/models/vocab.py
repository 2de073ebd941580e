"""A transformer's vocabulary cut to the tokens a corpus uses, model and tokenizer together (as TextPruner does).

A pretrained tokenizer has tens of thousands of tokens; one task's texts use a fraction of them, and in a small
model the embedding table is most of the weights (11.7M of all-MiniLM-L6-v2's 22.7M). `prune_vocabulary` keeps
the rows of the tokens the corpus produces (and every special token), in their order, renumbered 0..n-1: the
word embeddings, and an output layer over the vocabulary (a masked-LM head, tied or not) alike. The tokenizer gets
the same vocabulary, so it produces the same tokens for every text of the corpus (WordPiece and BPE keep their
longest match: every piece they chose is still there), with the new numbers; a token it never saw in the corpus
becomes what the tokenizer does without it (shorter pieces, or the unknown token).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError


def used_tokens(tokenizer: Any, texts: Iterable[str], min_count: int = 1) -> list[int]:
    """The ids `tokenizer` produces on `texts` (at least `min_count` times), and every special token's, sorted."""
    counts: dict[int, int] = {}
    batch: list[str] = []

    def count(chunk: list[str]) -> None:
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            for i in ids:
                counts[i] = counts.get(i, 0) + 1

    for text in texts:
        batch.append(text)
        if len(batch) == 4096:
            count(batch)
            batch = []
    if batch:
        count(batch)
    kept = {i for i, n in counts.items() if n >= min_count}
    kept.update(tokenizer.all_special_ids)
    kept.update(tokenizer.convert_tokens_to_ids(t) for t in tokenizer.get_added_vocab())
    return sorted(kept)


def prune_vocabulary(model: nn.Module, tokenizer: Any, keep: list[int]) -> tuple[nn.Module, Any]:
    """A copy of `model` and of its fast `tokenizer` with only the tokens `keep` (ids, renumbered in that order)."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TinykdError(f"{type(tokenizer).__name__} has no `tokenizers` backend; vocabulary pruning rewrites the "
                          "tokenizer.json of a fast (Rust) tokenizer")  # fmt: skip
    size = len(tokenizer)
    keep = sorted(set(keep))
    if not keep or keep[0] < 0 or keep[-1] >= size:
        raise TinykdError(f"token ids to keep must lie in 0..{size - 1}")
    new_tokenizer = _pruned_tokenizer(tokenizer, keep)
    return _pruned_model(model, keep), new_tokenizer


def _pruned_model(model: nn.Module, keep: list[int]) -> nn.Module:
    """The word embedding rows (and an output layer's rows over the vocabulary) of `keep`."""
    pruned = copy.deepcopy(model)
    index = torch.tensor(keep, dtype=torch.long)
    old = pruned.get_input_embeddings()
    vocab = old.num_embeddings
    padding = keep.index(old.padding_idx) if old.padding_idx is not None and old.padding_idx in keep else None
    table = nn.Embedding(len(keep), old.embedding_dim, padding_idx=padding)
    table.weight = nn.Parameter(old.weight.detach()[index].clone())
    pruned.set_input_embeddings(table)
    head = pruned.get_output_embeddings() if hasattr(pruned, "get_output_embeddings") else None
    if isinstance(head, nn.Linear) and head.out_features == vocab:
        tied = head.weight is old.weight
        new_head = nn.Linear(head.in_features, len(keep), bias=head.bias is not None)
        new_head.weight = table.weight if tied else nn.Parameter(head.weight.detach()[index].clone())
        if head.bias is not None:
            new_head.bias = nn.Parameter(head.bias.detach()[index].clone())
        pruned.set_output_embeddings(new_head)
        decoder_bias = getattr(getattr(getattr(pruned, "cls", None), "predictions", None), "bias", None)
        if isinstance(decoder_bias, nn.Parameter) and decoder_bias.numel() == vocab:  # BERT keeps it apart too
            pruned.cls.predictions.bias = new_head.bias  # type: ignore[union-attr]
    config = pruned.config
    config.vocab_size = len(keep)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id"):
        old_id = getattr(config, key, None)
        if isinstance(old_id, int):
            setattr(config, key, keep.index(old_id) if old_id in keep else None)
    return pruned


def _pruned_tokenizer(tokenizer: Any, keep: list[int]) -> Any:
    """The tokenizer's tokenizer.json with the vocabulary of `keep`, renumbered; its special tokens follow."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    new_id = {old: new for new, old in enumerate(keep)}
    model = spec["model"]
    if model["type"] not in ("WordPiece", "BPE", "WordLevel"):
        raise TinykdError(f"vocabulary pruning knows WordPiece, BPE and WordLevel tokenizers, not {model['type']}")
    model["vocab"] = {token: new_id[i] for token, i in model["vocab"].items() if i in new_id}
    if model["type"] == "BPE":  # a merge whose result is gone can never apply
        kept = set(model["vocab"])
        model["merges"] = [m for m in model["merges"]
                           if "".join(m if isinstance(m, list) else m.split(" ")) in kept]  # fmt: skip
    unk = model.get("unk_token")
    if unk is not None and unk not in model["vocab"]:
        raise TinykdError(f"the unknown token {unk} must be kept")
    for added in spec.get("added_tokens") or []:
        if added["id"] not in new_id:
            raise TinykdError(f"the special token {added['content']} must be kept")
        added["id"] = new_id[added["id"]]
    _renumber_specials(spec.get("post_processor"), new_id)
    backend = Tokenizer.from_str(json.dumps(spec))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                   model_input_names=list(tokenizer.model_input_names), **specials)  # fmt: skip


def _renumber_specials(processor: Any, new_id: dict[int, int]) -> None:
    """The ids a post-processor writes ([CLS] and [SEP] of TemplateProcessing, BertProcessing, ...), renumbered."""
    if not isinstance(processor, dict):
        return
    for step in processor.get("processors") or []:  # a Sequence
        _renumber_specials(step, new_id)
    for special in (processor.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
        if isinstance(processor.get(key), list) and len(processor[key]) == 2:
            processor[key][1] = new_id[processor[key][1]]
