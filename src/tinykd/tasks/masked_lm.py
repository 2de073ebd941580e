"""Masked-LM (BERT's pre-training): predict the masked tokens; accuracy over the masked positions."""

from __future__ import annotations

from tinykd.tasks.base import TASKS, Task


@TASKS.register("masked-lm")
class MaskedLM(Task):
    name = "masked-lm"
    hf_auto_class = "AutoModelForMaskedLM"
    per_token = True
    needs_labels = False
