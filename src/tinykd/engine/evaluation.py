"""A model's metrics on a loader, as its task defines them, summed on the device and read once at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from tinykd.engine.runtime import step_boundary
from tinykd.engine.step import to_memory_format
from tinykd.models.outputs import call_model
from tinykd.tasks import Task

if TYPE_CHECKING:
    from accelerate import Accelerator


@torch.no_grad()
def evaluate(acc: Accelerator, model: nn.Module, loader: DataLoader, task: Task,
             channels_last: bool = False) -> dict[str, float]:  # fmt: skip
    """`task.metrics` of `model` on `loader`; targets equal to the ignore label (the padding of the last batch,
    unmasked tokens) count in nothing. Each process adds its own whole batches; the sums are added up once."""
    was_training = model.training
    model.eval()
    if task.host_metrics:
        return _evaluate_on_host(acc, model, loader, task, channels_last, was_training)
    sums = torch.zeros(len(task.sum_names)).to(acc.device)  # a copy to the device, not a graph of its own on XLA
    for inputs, targets in loader:
        with acc.autocast():
            logits = call_model(model, to_memory_format(inputs, channels_last))
        sums += task.metric_sums(logits, targets)
        step_boundary(acc.device)
    model.train(was_training)
    if acc.num_processes > 1:  # each process saw its own whole batches (the set is padded to fit): add them up
        sums = acc.reduce(sums, reduction="sum")
    return task.metrics(sums)


def _evaluate_on_host(acc: Accelerator, model: nn.Module, loader: DataLoader, task: Task, channels_last: bool,
                      was_training: bool) -> dict[str, float]:  # fmt: skip
    """A task whose metrics need every sample's results at once (detection's mAP): each batch's results go to the
    host (`task.collect`), every process's are gathered, and `task.metrics_of` scores them."""
    collected = []
    with torch.no_grad():
        for inputs, targets in loader:
            with acc.autocast():
                logits = call_model(model, to_memory_format(inputs, channels_last))
            collected.append(task.collect(model, logits, targets))
    model.train(was_training)
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        collected = gather_object(collected)
    return task.metrics_of(collected)
