"""Masked-LM (BERT's pre-training): predict the masked tokens; accuracy over the masked positions."""

from __future__ import annotations

from typing import Any

import torch

from tinykd.data.loader import Batch, seeded_generator
from tinykd.tasks.base import TASKS, Task


@TASKS.register("masked-lm")
class MaskedLM(Task):
    name = "masked-lm"
    hf_auto_class = "AutoModelForMaskedLM"
    hf_architecture = "ForMaskedLM"
    per_token = True
    needs_labels = False
    needs_mask_token = True

    def targets(self, dataset: Any, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
        """BERT's masking by transformers' collator, drawing from a generator keyed on (seed, indices): a resumed
        run sees the same masks. Targets: the ids to predict (B, T), the ignore label elsewhere."""
        collator = dataset.collator()
        keep = dataset.special_mask(inputs["input_ids"]) | (inputs["attention_mask"] == 0)  # never chosen
        collator.generator = seeded_generator(dataset.seed, index)
        try:
            masked, targets = collator.torch_mask_tokens(inputs["input_ids"].clone(), special_tokens_mask=keep)
        finally:
            collator.generator = None
        return Batch({**inputs, "input_ids": masked}, targets)
