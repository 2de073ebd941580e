"""Causal-LM (GPT-style): each position predicts the next token; token accuracy and perplexity."""

from __future__ import annotations

from typing import Any

import torch

from tinykd.data.loader import Batch
from tinykd.tasks.base import TASKS, Task, perplexity


@TASKS.register("causal-lm")
class CausalLM(Task):
    name = "causal-lm"
    hf_auto_class = "AutoModelForCausalLM"
    hf_architecture = "ForCausalLM"
    per_token = True
    generative = True
    needs_labels = False
    min_tokens = 2  # one token predicts nothing
    allows_packing = True
    report_metrics = ("accuracy", "perplexity")  # accuracy is per predicted token; perplexity of the same tokens

    def targets(self, dataset: Any, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
        """Next-token targets: position t predicts token t + 1; the last position and padding predict nothing.

        The shift is made here, not inside the model (Hugging Face shifts `labels` itself), so that the logits and
        the targets line up position for position for every term, the evaluation and the teacher cache."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        targets = torch.full_like(ids, self.ignore_index)
        targets[:, :-1] = torch.where(mask[:, 1:].bool(), ids[:, 1:], self.ignore_index)
        return Batch(inputs, targets)

    def metrics(self, sums: torch.Tensor | list[float]) -> dict[str, float]:
        scores = super().metrics(sums)
        scores["perplexity"] = perplexity(scores["loss"])
        return scores
