"""Classification: one label per sample (images or texts); top-1 accuracy picks the best checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from tinykd.data.loader import Batch
from tinykd.tasks.base import TASKS, Task


@TASKS.register("classification")
class Classification(Task):
    name = "classification"
    hf_auto_class = "AutoModelForSequenceClassification"
    hf_architecture = "ForSequenceClassification"
    allows_text_augment = True

    def targets(self, dataset: Any, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
        """The samples' labels (B,)."""
        assert dataset.labels is not None
        return Batch(inputs, dataset.labels[index])
