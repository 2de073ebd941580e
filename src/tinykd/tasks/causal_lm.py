"""Causal-LM (GPT-style): each position predicts the next token; token accuracy and perplexity."""

from __future__ import annotations

import torch

from tinykd.tasks.base import TASKS, Task, perplexity


@TASKS.register("causal-lm")
class CausalLM(Task):
    name = "causal-lm"
    hf_auto_class = "AutoModelForCausalLM"
    per_token = True
    generative = True
    needs_labels = False

    def metrics(self, sums: torch.Tensor | list[float]) -> dict[str, float]:
        scores = super().metrics(sums)
        scores["perplexity"] = perplexity(scores["loss"])
        return scores
