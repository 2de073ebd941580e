"""One optimizer step and the running tally it adds to on the device, and the memory format a batch is fed in.

The tally is what the log prints between evaluations: [total, each term..., correct, counted, steps, counted
steps], summed since the start of training and read by the host once per `log_every` steps (`log.interval_means`).
Its correct/counted pair is the task's cheap `step_counts`: no second loss over the logits per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tinykd.engine import faults
from tinykd.engine.resume import Tally
from tinykd.engine.runtime import step_boundary
from tinykd.tasks import Task

if TYPE_CHECKING:
    from accelerate import Accelerator


def to_memory_format(x: Any, channels_last: bool) -> Any:
    """Image batches (4-D tensors, also inside tuples and dicts) in channels_last when the runtime asks."""
    if not channels_last:
        return x
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
    if isinstance(x, tuple):
        items = [to_memory_format(v, channels_last) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    if isinstance(x, dict):
        return {k: to_memory_format(v, channels_last) for k, v in x.items()}
    return x


def train_step(acc: Accelerator, learner: nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
               inputs: Any, targets: torch.Tensor, lr: float, grad_clip: float | None, tally: Tally, task: Task,
               skip_nonfinite: bool = False, channels_last: bool = False) -> bool:  # fmt: skip
    """One optimizer step of `learner`; adds [total, each term..., correct, counted, 1, counted step] to `tally`
    (no sync).

    The addition happens before the graph cut, so that on XLA the whole step is one graph, executed once.
    With `skip_nonfinite`, a step whose loss or gradients are not finite is not applied; finding out costs
    one read from the device per step. Returns whether the optimizer stepped.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with acc.autocast():
        logits, losses = learner(to_memory_format(inputs, channels_last), targets)
    terms = torch.stack([v.float() for v in losses.values()])
    loss = terms.sum()
    acc.backward(loss)
    norm = acc.clip_grad_norm_(params, grad_clip) if grad_clip else None
    stepped = True
    if skip_nonfinite:  # gradients are summed over processes, so every process takes the same decision
        norm = norm if norm is not None else faults.grad_norm(params)
        bad = (~torch.isfinite(norm) | ~torch.isfinite(loss)).float()
        if acc.num_processes > 1:
            bad = acc.reduce(bad, reduction="sum")
        stepped = not bool(bad)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    device = loss.device
    values = torch.cat([loss.detach()[None], terms.detach()])
    finite = torch.isfinite(values)
    counted = finite.all().float()[None]  # a non-finite step is left out of the means (skip mode)
    if skip_nonfinite:  # keep the running sums readable; the skip itself is counted on the host
        values = torch.where(finite, values, torch.zeros_like(values))
    counts = task.step_counts(logits.detach(), targets)
    stats = torch.cat([values, counts * counted, torch.ones(1, device=device), counted])
    tally.running = stats if tally.running is None else tally.running + stats
    steps = tally.running[-2]  # steps since the start of training, this one included
    fresh = ~finite if tally.faults is None else ~finite & (tally.faults == 0)
    tally.faults = torch.where(fresh, steps, torch.zeros_like(values) if tally.faults is None else tally.faults)
    tally.names = list(losses)
    step_boundary(acc.device)
    return stepped
