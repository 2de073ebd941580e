"""The Task contract: what a kind of problem (classification, masked-LM, causal-LM, seq2seq, ...) means to tinykd.

A task owns what differs between problems: its targets and the label that counts in no loss, the model class
it asks of Hugging Face, its metrics (summed on the device, with the one score that picks the best checkpoint),
and how its rows read in reports. The engine, the distiller, the predictors and the reports call a task; they
never name one. A new task is one file in this package and a line in `tasks/__init__.py`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tinykd.data.loader import Batch
from tinykd.labels import IGNORE_INDEX
from tinykd.registry import Registry


class Task:
    """Base class of the tasks: top-1 accuracy and mean cross-entropy over the targets that are not IGNORE_INDEX.

    `metric_sums` runs on the device inside the evaluation loop (no host sync); `metrics` turns the sums, added
    over batches and processes, into the numbers a report shows. `best_metric` (higher is better) picks the best
    checkpoint.
    """

    name: str = ""
    hf_auto_class: str | None = None  # the transformers Auto class for a Hugging Face model of this task
    hf_architecture: str | None = None  # how the class names of its models end (config.json's `architectures`)
    per_token: bool = False  # logits are one distribution per token (B, T, V) rather than per sample (B, C)
    generative: bool = False  # predicts tokens that generate() continues: the tokenizer needs an end token
    ignore_index: int = IGNORE_INDEX
    # What the data must hold and may do (the data layer reads these; it never asks for a task by name).
    needs_labels: bool = True  # a label column, one class per sample
    needs_mask_token: bool = False  # a tokenizer with a mask token
    text_to_text: bool = False  # a source and a target text per sample (data.source_column, data.target_column)
    min_tokens: int = 1  # a sample with fewer tokens has nothing to predict
    allows_packing: bool = False  # data.packing: texts joined end to end into blocks
    allows_text_augment: bool = False  # data.text_augment: word swaps need a label that survives them
    # The metrics and the report.
    sum_names: tuple[str, ...] = ("correct", "loss", "count")
    best_metric: str = "accuracy"  # higher is better: picks the best checkpoint
    report_metrics: tuple[str, ...] = ("accuracy",)  # the report's test_<name> columns, from `metrics`
    scores_generations: bool = False  # the report adds ROUGE-L and exact match of generated texts
    host_metrics: bool = False  # metrics need every sample's results at once (mAP): `collect` + `metrics_of`

    def step_counts(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[correct, counted] of a training batch, on the device: the running accuracy the log shows between
        evaluations. Cheap on purpose (no loss over the logits): it runs in every training step."""
        valid = targets != self.ignore_index
        return torch.stack([((logits.argmax(-1) == targets) & valid).sum().float(), valid.sum().float()])

    def metric_sums(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """This batch's contribution to the metrics, a 1-d float tensor on the device (order: `sum_names`)."""
        logits = logits.float()
        valid = targets != self.ignore_index
        correct = ((logits.argmax(-1) == targets) & valid).sum().float()
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=self.ignore_index,
                               reduction="sum")  # fmt: skip
        return torch.stack([correct, loss, valid.sum().float()])

    def metrics(self, sums: torch.Tensor | list[float]) -> dict[str, float]:
        """The report's numbers from the summed `metric_sums` (of every batch and process)."""
        correct, loss, count = (float(v) for v in (sums.tolist() if isinstance(sums, torch.Tensor) else sums))
        return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1), "count": int(count)}

    def collect(self, model: Any, logits: torch.Tensor, targets: torch.Tensor) -> Any:
        """host_metrics: one batch's results, moved to the host (what `metrics_of` needs)."""
        raise NotImplementedError(f"{type(self).__name__} sums its metrics on the device")

    def metrics_of(self, collected: list[Any]) -> dict[str, Any]:
        """host_metrics: the report's numbers from every batch's `collect` (of every process)."""
        raise NotImplementedError(f"{type(self).__name__} sums its metrics on the device")

    def targets(self, dataset: Any, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> Batch:
        """A text batch with its targets, from the padded `inputs` of `dataset`'s samples `index` (TextDataset)."""
        raise NotImplementedError(f"{type(self).__name__} makes no targets from texts")

    @property
    def per_sample_predictions(self) -> bool:
        """Whether one answer per sample means something (predictions.npz, the report's confusion matrix)."""
        return not self.per_token

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's answer per sample (or per token): top-1 class."""
        return logits.argmax(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def perplexity(mean_token_loss: float) -> float:
    """exp of the mean next-token cross-entropy (nats), inf when it overflows."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return math.inf


TASKS: Registry[type[Task]] = Registry("task")
