"""Classification: one label per sample (images or texts); top-1 accuracy picks the best checkpoint."""

from __future__ import annotations

from tinykd.tasks.base import TASKS, Task


@TASKS.register("classification")
class Classification(Task):
    name = "classification"
    hf_auto_class = "AutoModelForSequenceClassification"
