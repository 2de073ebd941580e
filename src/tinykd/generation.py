"""What a generative model writes, scored: greedy decoding on test sources against the test targets.

Token accuracy and perplexity come from the teacher-forced evaluation (`Engine.evaluate`); this module adds what
only generation shows. For seq2seq: exact match and ROUGE-L F1 (Lin 2004, through Google's `rouge-score`, the
implementation papers report) of the greedy output. Both sides are decoded by the same tokenizer with special
tokens skipped, so a lowercasing tokenizer compares lowercased texts on both sides.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tinykd.data.text import TextDataset, pad_samples


def perplexity(mean_token_loss: float) -> float:
    """exp of the mean next-token cross-entropy (nats), inf when it overflows."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return math.inf


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
