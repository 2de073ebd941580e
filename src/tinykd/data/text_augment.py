"""TinyBERT's data augmentation: words swapped for a masked LM's guesses, so that the teacher labels new sentences.

TinyBERT (Jiao et al. 2020, Algorithm 1) masks each single-piece word of a sentence in turn and keeps the masked
LM's top K guesses (K = 15) as that word's candidates; each augmented copy of the sentence swaps each word for one
of its candidates with probability p (0.4). The student then learns from the teacher's outputs on sentences the
labels never covered. A swap can change a sentence's meaning, so its label may no longer hold: train on
augmented text with teacher terms (`kd`, hidden states), and give `ce` little or no weight.

TinyBERT takes a multi-piece word's candidates from GloVe's nearest neighbours instead; `candidates: embeddings`
takes every word's from its nearest neighbours in a model's own input embeddings (cosine), for teachers that have
no masked-LM head (a sentence encoder, a classifier fine-tuned from one).

Here the candidates are found once per training set and masked LM (and kept in a file named by their digests), and
the swaps are drawn at batch time from a generator seeded by (seed, batch indices), as image augmentation is: each
epoch sees new sentences, the validation split sees the originals, and a teacher cache keyed on the data stays
exact. A swap replaces one token by one token, so lengths and padding are unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.data.tokens import Encoded, pad_samples
from tinykd.errors import TinykdError

CANDIDATES_FILE_VERSION = 1


@dataclass(frozen=True)
class TextAugmentOptions:
    """What the recipe's `data.text_augment` says (TinyBERT's defaults: K = 15, p = 0.4, one original in 21)."""

    model: str  # a masked LM sharing the data's tokenizer: a Hugging Face directory, a tinykd run folder, a hub id
    candidates: str = "masked-lm"  # or "embeddings": the nearest words in the model's input embeddings
    top_k: int = 15
    word_prob: float = 0.4
    keep_original: float = 0.05
    # tokenizer -> (the model, its name, a digest of its weights): models are built a layer above the data
    masked_lm: Callable[[Any], tuple[nn.Module, str, str]] | None = field(default=None, compare=False, repr=False)


@dataclass
class WordSwaps:
    """The swap candidates of every swappable token of a tokenized set, and how often to swap.

    `row_of[t]` is the row of `choices` for token t of the set's flat id array (`Encoded.ids`), -1 where the token
    is not a whole single-piece word."""

    row_of: torch.Tensor  # (total tokens,) int64
    choices: torch.Tensor  # (swappable tokens, K) int64, token ids
    word_prob: float
    keep_original: float

    def digest_parts(self) -> tuple[Any, ...]:
        return (self.row_of, self.choices, self.word_prob, self.keep_original)

    def apply(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, starts: np.ndarray,
              generator: torch.Generator) -> torch.Tensor:  # fmt: skip
        """`input_ids` (B, T) with words swapped; row b's tokens start at `starts[b]` in the flat id array."""
        batch, width = input_ids.shape
        inside = attention_mask.bool()
        flat = torch.as_tensor(starts, dtype=torch.int64)[:, None] + torch.arange(width)
        rows = torch.where(inside, self.row_of[torch.where(inside, flat, 0)], -1)
        draw = torch.rand((batch, width), generator=generator)
        pick = torch.randint(self.choices.shape[1], (batch, width), generator=generator)
        keep = torch.rand((batch, 1), generator=generator) < self.keep_original
        swap = (rows >= 0) & (draw < self.word_prob) & ~keep
        return torch.where(swap, self.choices[rows.clamp(min=0), pick], input_ids)


def token_kinds(tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per vocabulary id: (`word`: a whole-word token that may be swapped in or out, `continues`: a piece that
    continues the word before it). WordPiece marks continuations (`##ing`); byte-level BPE (`Ġword`) and
    SentencePiece (`▁word`) mark word starts. Only alphabetic words are swapped (not numbers, not punctuation)."""
    size = len(tokenizer)
    tokens = [t or "" for t in tokenizer.convert_ids_to_tokens(list(range(size)))]
    special = np.zeros(size, dtype=bool)
    special[[i for i in tokenizer.all_special_ids if 0 <= i < size]] = True
    share = {mark: sum(t.startswith(mark) for t in tokens) / max(size, 1) for mark in ("##", "Ġ", "▁")}
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    wordpiece = type(backend).__name__ == "WordPiece"  # a pruned one may hold no continuation piece at all
    if wordpiece or share["##"] > 0.01:
        mark = getattr(backend, "continuing_subword_prefix", "##") if wordpiece else "##"
        continues = np.array([t.startswith(mark) for t in tokens])
        word = np.array([t.isalpha() for t in tokens]) & ~continues
    else:
        mark = max(("Ġ", "▁"), key=lambda m: share[m])
        if share[mark] <= 0.01:
            raise TinykdError("data.text_augment needs a WordPiece (##), byte-level BPE (Ġ) or SentencePiece (▁) "
                              f"tokenizer, to tell whole words from pieces; {type(tokenizer).__name__} is none of "
                              "them")  # fmt: skip
        starts = np.array([t.startswith(mark) for t in tokens])
        word = starts & np.array([t[1:].isalpha() for t in tokens])
        continues = ~starts & np.array([t[:1].isalpha() for t in tokens])
    return word & ~special, continues & ~special


def swappable(ids: np.ndarray, offsets: np.ndarray, word: np.ndarray, continues: np.ndarray) -> np.ndarray:
    """Flat indices of the tokens that are whole single-piece words: a word token not continued by the next one."""
    if not len(ids):
        return np.zeros(0, dtype=np.int64)
    nxt = np.append(ids[1:], ids[-1])
    continued = continues[nxt]
    continued[np.maximum(offsets[1:] - 1, 0)] = False  # a sample's last token is continued by nothing
    return np.flatnonzero(word[ids] & ~continued).astype(np.int64)


@torch.no_grad()
def find_candidates(model: nn.Module, ids: np.ndarray, offsets: np.ndarray, type_ids: np.ndarray | None,
                    tokenizer: Any, top_k: int, logit_budget: int = 2**26) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_of, choices): for each swappable token, the masked LM's top `top_k` whole words when it is masked
    (the token itself left out). One masked copy of its sample per swappable token, batched by length so that
    a batch's logits hold at most `logit_budget` floats.

    A candidate must stand as a whole word somewhere in these texts: a vocabulary learned on little text has
    word-start pieces that are no word alone (`grea` of `grea ##t`), which a swap would turn into nonsense."""
    word, continues = token_kinds(tokenizer)
    positions = swappable(ids, offsets, word, continues)
    row_of = torch.full((len(ids),), -1, dtype=torch.int64)
    choices = torch.zeros((0, top_k), dtype=torch.int64)
    if not len(positions):
        return row_of, choices
    sample = np.searchsorted(offsets, positions, side="right") - 1
    column = positions - offsets[sample]
    lengths = np.diff(offsets)[sample]
    order = np.argsort(lengths, kind="stable")
    model.eval()
    vocab = int(model.get_output_embeddings().weight.shape[0]) if model.get_output_embeddings() is not None \
        else len(tokenizer)  # fmt: skip
    allowed = torch.zeros(vocab, dtype=torch.bool)
    whole = np.unique(ids[positions]).astype(np.int64)
    allowed[torch.from_numpy(whole[whole < vocab])] = True
    found = torch.empty((len(positions), top_k), dtype=torch.int64)
    ok = torch.zeros(len(positions), dtype=torch.bool)
    mask_id, pad_id = int(tokenizer.mask_token_id), int(tokenizer.pad_token_id)
    start = 0
    while start < len(order):
        take = order[start: start + max(1, logit_budget // (vocab * int(lengths[order[start]])))]
        while len(take) > 1 and len(take) * int(lengths[take[-1]]) * vocab > logit_budget:
            take = take[: len(take) // 2]  # sorted by length: the last is the longest
        batch, rows = len(take), torch.from_numpy(sample[take])
        input_ids, attention = pad_samples(Encoded(ids, offsets), rows, None, pad_id)
        types = pad_samples(Encoded(type_ids, offsets), rows, None, 0)[0] if type_ids is not None else None
        cols = torch.from_numpy(column[take])
        here = torch.arange(batch)
        original = input_ids[here, cols].clone()
        input_ids[here, cols] = mask_id
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if types is not None:
            inputs["token_type_ids"] = types
        logits = _masked_logits(model, inputs, cols)  # (batch, vocab)
        logits[:, ~allowed] = float("-inf")
        logits[here, original] = float("-inf")
        k = min(top_k, vocab)
        values, guesses = logits.topk(k, dim=1)
        good = torch.isfinite(values)
        guesses = torch.where(good, guesses, guesses[:, :1])  # too few whole words: repeat the best
        if k < top_k:
            guesses = torch.cat([guesses, guesses[:, :1].expand(-1, top_k - k)], dim=1)
        index = torch.from_numpy(take)
        found[index], ok[index] = guesses, good[:, 0]
        start += batch
    kept = torch.nonzero(ok).flatten()
    row_of[torch.from_numpy(positions)[kept]] = torch.arange(len(kept))
    return row_of, found[kept]


@torch.no_grad()
def nearest_words(table: torch.Tensor, ids: np.ndarray, offsets: np.ndarray, tokenizer: Any, top_k: int,
                  chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(row_of, choices) as `find_candidates` gives them, from the words nearest each word in the embedding `table`
    (cosine similarity): the candidates of a word do not depend on its sentence, so there is one row per distinct
    swappable word. As there, a candidate must stand as a whole word somewhere in these texts."""
    word, continues = token_kinds(tokenizer)
    positions = swappable(ids, offsets, word, continues)
    row_of = torch.full((len(ids),), -1, dtype=torch.int64)
    if not len(positions):
        return row_of, torch.zeros((0, top_k), dtype=torch.int64)
    whole = torch.from_numpy(np.unique(ids[positions]).astype(np.int64))
    vectors = torch.nn.functional.normalize(table.detach().float()[whole], dim=1)
    k = min(top_k, len(whole) - 1)
    if k < 1:  # one distinct word: nothing to swap it for
        return row_of, torch.zeros((0, top_k), dtype=torch.int64)
    choices = torch.empty((len(whole), top_k), dtype=torch.int64)
    for start in range(0, len(whole), chunk):
        similar = vectors[start: start + chunk] @ vectors.T
        here = torch.arange(similar.shape[0])
        similar[here, here + start] = float("-inf")  # never the word itself
        best = similar.topk(k, dim=1).indices
        if k < top_k:
            best = torch.cat([best, best[:, :1].expand(-1, top_k - k)], dim=1)
        choices[start: start + len(best)] = whole[best]
    row_of[torch.from_numpy(positions)] = torch.searchsorted(whole, torch.from_numpy(ids[positions]).long())
    return row_of, choices


def _masked_logits(model: nn.Module, inputs: dict[str, torch.Tensor], cols: torch.Tensor) -> torch.Tensor:
    """The masked LM's logits at one position per row. The head runs on that position only (a hook keeps it from
    the encoder's output: Hugging Face masked LMs apply their head to `base_model`'s first output); a model whose
    head does not take that path falls back to logits at every position."""
    here = torch.arange(len(cols))

    def keep_one(module: nn.Module, args: Any, output: Any) -> Any:
        picked = output[0][here, cols][:, None]
        if isinstance(output, tuple):
            return (picked, *output[1:])
        output["last_hidden_state"] = picked
        return output

    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        handle = base.register_forward_hook(keep_one)
        try:
            logits = model(**inputs).logits
        except (RuntimeError, KeyError, TypeError, IndexError):
            logits = None
        finally:
            handle.remove()
        if logits is not None and logits.shape[:2] == (len(cols), 1):
            return logits[:, 0].float()
    return model(**inputs).logits[here, cols].float()


def word_swaps(options: TextAugmentOptions, ids: np.ndarray, offsets: np.ndarray, type_ids: np.ndarray | None,
               tokenizer: Any, cache_dir: Path) -> WordSwaps:  # fmt: skip
    """The swaps of a tokenized training set, read from `cache_dir` when this set and masked LM made them before."""
    from safetensors.torch import load_file, save_file

    from tinykd.data.loader import tensor_digest

    if options.candidates != "embeddings" and tokenizer.mask_token_id is None:
        raise TinykdError(f"data.text_augment masks each word for a masked LM to guess, but the data's tokenizer "
                          f"({type(tokenizer).__name__}) has no mask token; use a BERT-style tokenizer and masked "
                          "LM")  # fmt: skip
    if options.masked_lm is None:
        raise TinykdError("data.text_augment: no masked LM loader was given (the pipeline gives one)")
    model, name, weights = options.masked_lm(tokenizer)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    digest = tensor_digest(CANDIDATES_FILE_VERSION, ids, offsets, type_ids, options.top_k, weights, vocab,
                           options.candidates)  # fmt: skip
    file = cache_dir / f"{digest[:32]}.safetensors"
    try:
        tensors = load_file(str(file)) if file.is_file() else None
    except Exception:
        tensors = None
    if tensors is not None:
        row_of, choices = tensors["row_of"], tensors["choices"]
    else:
        began = time.perf_counter()
        print(f"tinykd: data.text_augment: finding {options.top_k} swaps per word of {len(offsets) - 1} texts with "
              f"{name} (once; kept in {cache_dir})", flush=True)  # fmt: skip
        if options.candidates == "embeddings":
            table = model.get_input_embeddings().weight
            row_of, choices = nearest_words(table, ids, offsets, tokenizer, options.top_k)
        else:
            row_of, choices = find_candidates(model, ids, offsets, type_ids, tokenizer, options.top_k)
        print(f"tinykd: data.text_augment: {len(choices)} swappable words in {time.perf_counter() - began:.0f} s",
              flush=True)  # fmt: skip
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # ranks may write it at once: each its own
        save_file({"row_of": row_of.contiguous(), "choices": choices.contiguous()}, str(tmp),
                  metadata={"model": name, "top_k": str(options.top_k)})  # fmt: skip
        tmp.replace(file)
    return WordSwaps(row_of, choices, options.word_prob, options.keep_original)


def show_swaps(plain: Any, swapped: Any, count: int = 2) -> None:
    """Print a few training texts as the student will see them: what the swaps do, in words."""
    index = list(range(min(len(plain), 64)))
    before = plain.get_batch(index).inputs["input_ids"]
    after = swapped.get_batch(index).inputs["input_ids"]
    changed = [i for i in index if not torch.equal(before[i], after[i])][:count]
    for i in changed:
        old, new = (plain.tokenizer.decode(ids[i], skip_special_tokens=True) for ids in (before, after))
        print(f"tinykd: data.text_augment, e.g. {old!r} -> {new!r}", flush=True)
