"""Optimizers and learning-rate schedules as plain functions.

`lr_at(step, total, ...)` is pure: the loop sets the rate of every parameter
group itself each step (as nanoGPT does), so there is no scheduler object to
prepare, wrap, or step in the wrong order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from tinykd.recipes.schema import OptimizerSpec, ScheduleSpec


def build_optimizer(params: Iterable[torch.nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW. Weight decay skips biases and norm weights (1-D tensors)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if spec.name == "sgd":
        nesterov = spec.nesterov and spec.momentum > 0
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, base_lr: float, spec: ScheduleSpec) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    warmup = int(spec.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    floor = base_lr * spec.min_lr_ratio
    if spec.name == "constant":
        return base_lr
    if spec.name == "step":
        epoch = step / steps_per_epoch
        return base_lr * spec.gamma ** sum(epoch >= m for m in spec.milestones)
    if spec.name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    # one-cycle: cosine rise from base_lr/25 to base_lr over pct_start, then cosine fall to the floor
    peak = max(warmup + 1, int(spec.pct_start * total_steps))
    start = base_lr / 25
    if step < peak:
        t = (step - warmup) / max(1, peak - warmup)
        return start + (base_lr - start) * 0.5 * (1 - math.cos(math.pi * t))
    t = (step - peak) / max(1, total_steps - peak)
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
