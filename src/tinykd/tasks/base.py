"""The Task contract: what a kind of problem (classification, masked-LM, causal-LM, seq2seq, ...) means to tinykd.

A task owns what differs between problems: its targets and the label that counts in no loss, the model class
it asks of Hugging Face, its metrics (summed on the device, with the one score that picks the best checkpoint),
and how its rows read in reports. The engine, the distiller, the predictors and the reports call a task; they
never name one. A new task is one file in this package and a line in `tasks/__init__.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tinykd.registry import Registry

IGNORE_INDEX = -100  # a target that counts in no loss and no metric (PyTorch's and Hugging Face's convention)


class Task:
    """Base class of the tasks: top-1 accuracy and mean cross-entropy over the targets that are not IGNORE_INDEX.

    `metric_sums` runs on the device inside the evaluation loop (no host sync); `metrics` turns the sums, added
    over batches and processes, into the numbers a report shows. `best_metric` (higher is better) picks the best
    checkpoint.
    """

    name: str = ""
    hf_auto_class: str | None = None  # the transformers Auto class for a Hugging Face model of this task
    per_token: bool = False  # logits are one distribution per token (B, T, V) rather than per sample (B, C)
    generative: bool = False  # predicts tokens that generate() continues
    needs_labels: bool = True  # the data must have a label column
    best_metric: str = "accuracy"
    ignore_index: int = IGNORE_INDEX
    sum_names: tuple[str, ...] = ("correct", "loss", "count")

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
