"""What a generative model writes: scored against the test targets, and written out as training data.

Token accuracy and perplexity come from the teacher-forced evaluation (`Engine.evaluate`); this module adds what
only generation shows. For seq2seq: exact match and ROUGE-L F1 (Lin 2004, through Google's `rouge-score`, the
implementation papers report) of the greedy output. Both sides are decoded by the same tokenizer with special
tokens skipped, so a lowercasing tokenizer compares lowercased texts on both sides. `write_teacher_outputs` is
sequence-level KD's data step (`tinykd generate`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinykd.data.text import TextDataset, pad_samples
from tinykd.errors import TinykdError
from tinykd.tasks.base import perplexity  # noqa: F401  (a generative task's metric; read here too)


def base_dataset(dataset: Any) -> TextDataset:
    """The tokenized dataset under subsets (the test split is one already)."""
    while not isinstance(dataset, TextDataset) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if not isinstance(dataset, TextDataset):
        raise TypeError(f"generation scores need a TextDataset, not {type(dataset).__name__}")
    return dataset


def _normalize(text: str) -> str:
    return " ".join(text.split())


@torch.no_grad()
def seq2seq_scores(model: nn.Module, dataset: Any, samples: int = 200, batch_size: int = 32,
                   max_new_tokens: int | None = None) -> dict[str, float]:  # fmt: skip
    """Greedy decoding of the first `samples` test sources: exact match and ROUGE-L F1 against the targets
    (both in [0, 1]), and the number of samples scored."""
    from rouge_score import rouge_scorer

    data = base_dataset(dataset)
    assert data.decoder is not None, "seq2seq scores need targets"
    tokenizer = data.tokenizer
    count = min(samples, len(data))
    limit = max_new_tokens or data.max_length
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    exact, rouge = 0, 0.0
    try:
        for start in range(0, count, batch_size):
            index = torch.arange(start, min(start + batch_size, count))
            ids, mask = pad_samples(data.encoded, index, None, data.pad_id)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=limit,
                                 do_sample=False, num_beams=1, decoder_start_token_id=data.decoder_start_id,
                                 pad_token_id=data.pad_id)  # fmt: skip
            predictions = tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
            targets, _ = pad_samples(data.decoder, index, None, data.pad_id)
            references = tokenizer.batch_decode(targets, skip_special_tokens=True)
            for prediction, reference in zip(predictions, references, strict=True):
                prediction, reference = _normalize(prediction), _normalize(reference)
                exact += prediction == reference
                # identical texts score 1, also when both are empty (rouge-score gives an empty pair 0)
                rouge += 1.0 if prediction == reference else scorer.score(reference, prediction)["rougeL"].fmeasure
    finally:
        model.train(was_training)
    return {"exact_match": exact / max(count, 1), "rouge_l": rouge / max(count, 1), "generated": count}


def prompts(dataset: Any, count: int, tokens: int = 8) -> list[list[int]]:
    """Real prompts from the first `count` texts of a tokenized set: for causal-lm the first `tokens` tokens of
    each, without its end token (the model must have something to continue); for seq2seq the whole source."""
    data = base_dataset(dataset)
    eos, rows = data.tokenizer.eos_token_id, []
    for i in range(min(count, len(data))):
        ids = data.encoded.ids[data.encoded.offsets[i] : data.encoded.offsets[i + 1]].tolist()
        rows.append(ids if data.task.text_to_text else [t for t in ids if t != eos][:tokens] or ids[:1])
    return rows


# --- sequence-level KD: the teacher's outputs as a new training set ------------------------------------------------

OUTPUT_FORMATS = (".jsonl", ".csv")


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for a decoder-only model, padded on the left: generation continues from the last real token."""
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def write_teacher_outputs(model: nn.Module, dataset: Any, out: str | Path, columns: tuple[str, str],
                          num_beams: int = 1, max_new_tokens: int | None = None, batch_size: int = 32,
                          limit: int | None = None, prompt_tokens: int = 8,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Sequence-level KD's data step (Kim & Rush 2016): the teacher's greedy (`num_beams` 1) or beam outputs for
    the training sources, written as a table a student recipe trains on.

    seq2seq: one row per source, `columns` = (source column, target column), the target being the teacher's
    output. causal-lm: the first `prompt_tokens` tokens of each text are the prompt and the teacher writes on;
    one row per text with `columns[0]` = the prompt and the continuation. `.jsonl` or `.csv` by `out`'s suffix,
    written to a temporary file and renamed, so an interrupted run never leaves a half table.
    """
    data = base_dataset(dataset)
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise TinykdError(f"{out}: write the generated data as {' or '.join(OUTPUT_FORMATS)}")
    if data.texts is None:
        raise TinykdError("tinykd generate needs one text per sample; data.packing joins texts into blocks: "
                          "set data.packing=false")  # fmt: skip
    if not data.task.generative:
        raise TinykdError(f"tinykd generate writes a generative teacher's outputs; data.task is {data.task.name}: "
                          "use causal-lm or seq2seq")  # fmt: skip
    if num_beams < 1 or prompt_tokens < 1 or batch_size < 1 or (limit is not None and limit < 1) \
            or (max_new_tokens is not None and max_new_tokens < 1):  # fmt: skip
        raise TinykdError("--num-beams, --prompt-tokens, --limit, --max-new-tokens and the batch size must be >= 1")
    tokenizer, seq2seq = data.tokenizer, data.task.text_to_text
    count = len(data) if limit is None else min(limit, len(data))
    new_tokens = max_new_tokens or data.max_length
    device = next(model.parameters()).device
    model.eval()
    rows: list[dict[str, str]] = []
    starts = [] if seq2seq else prompts(data, count, prompt_tokens)  # causal-lm: each text's beginning, once
    for start in range(0, count, batch_size):
        index = torch.arange(start, min(start + batch_size, count))
        if seq2seq:
            ids, mask = pad_samples(data.encoded, index, None, data.pad_id)
            extra: dict[str, Any] = {"decoder_start_token_id": data.decoder_start_id}
        else:
            ids, mask = _left_padded(starts[start : start + len(index)], data.pad_id)
            extra = {}
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                   num_beams=num_beams, max_new_tokens=new_tokens, pad_token_id=data.pad_id,
                                   **extra)  # fmt: skip
        texts = tokenizer.batch_decode(generated.cpu(), skip_special_tokens=True)
        for i, text in zip(index.tolist(), texts, strict=True):
            text = _normalize(text)
            rows.append({columns[0]: data.texts[i], columns[1]: text} if seq2seq else {columns[0]: text})
        if progress is not None:
            progress(len(rows), count)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    with partial.open("w", newline="", encoding="utf-8") as f:
        if out.suffix.lower() == ".jsonl":
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(columns[: 2 if seq2seq else 1]))
            writer.writeheader()
            writer.writerows(rows)
    partial.replace(out)
    return {"file": str(out), "rows": len(rows), "num_beams": num_beams, "max_new_tokens": new_tokens}
