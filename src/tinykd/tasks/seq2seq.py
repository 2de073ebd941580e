"""Seq2seq (BART/T5-style): the decoder predicts the target text; token accuracy and perplexity, and the
report scores generated texts (ROUGE-L, exact match)."""

from __future__ import annotations

from typing import Any

import torch

from tinykd.data.loader import Batch
from tinykd.data.tokens import pad_samples
from tinykd.tasks.base import TASKS, Task, perplexity


@TASKS.register("seq2seq")
class Seq2Seq(Task):
    name = "seq2seq"
    hf_auto_class = "AutoModelForSeq2SeqLM"
    hf_architecture = "ForConditionalGeneration"
    per_token = True
    generative = True
    needs_labels = False
    text_to_text = True
    report_metrics = ("accuracy", "perplexity")  # accuracy is per predicted token; perplexity of the same tokens
    scores_generations = True

    def targets(self, dataset: Any, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
        """The decoder reads the target shifted right (its start token first) and predicts the target; its
        padding is the ignore label."""
        assert dataset.decoder is not None
        width = dataset.max_length if dataset.static_shapes else None
        labels, decoder_mask = pad_samples(dataset.decoder, index, width, dataset.pad_id)
        decoder_ids = torch.full_like(labels, dataset.pad_id)
        decoder_ids[:, 0] = dataset.decoder_start_id
        decoder_ids[:, 1:] = labels[:, :-1]
        decoder_ids = torch.where(decoder_mask.bool(), decoder_ids, dataset.pad_id)  # start, t1 .. t(n-1), padding
        decoder_inputs = {"decoder_input_ids": decoder_ids, "decoder_attention_mask": decoder_mask}
        return Batch({**inputs, **decoder_inputs}, torch.where(decoder_mask.bool(), labels, self.ignore_index))

    def metrics(self, sums: torch.Tensor | list[float]) -> dict[str, float]:
        scores = super().metrics(sums)
        scores["perplexity"] = perplexity(scores["loss"])
        return scores
