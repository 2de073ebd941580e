"""What `Engine.fit` carries from step to step (`Loop`), and the pieces of its loop that are not the loop itself:
the interval's log record, the resume checkpoint, the result at the end, and `replay` of the training batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tinykd.data import EpochShuffle
from tinykd.engine import faults
from tinykd.engine.log import (
    NO_CLOCK,
    Clock,
    MetricsLog,
    bar_stats,
    describe_breakdown,
    interval_means,
    say,
    time_breakdown,
)
from tinykd.engine.resume import FitResult, Position, Tally, save_resume
from tinykd.engine.runtime import step_boundary
from tinykd.engine.step import to_memory_format
from tinykd.errors import RunInterrupted
from tinykd.recipes.schema import TrainSpec
from tinykd.tasks import Task

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class Loop:
    """What one `fit` carries from step to step: the prepared pieces, the position, the tally and the clocks."""

    learner: nn.Module
    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]  # the optimizer's, for gradient clipping and the finite check
    train_loader: DataLoader
    val_loader: DataLoader | None
    spec: TrainSpec
    sampler: EpochShuffle | None
    shape: dict[str, int]  # processes, samples per step, steps per epoch, total steps: what a resume must match
    log: MetricsLog
    ckpt_dir: Path | None
    save: Callable[[nn.Module, Path], None] | None
    resumed: bool
    pos: Position = field(default_factory=Position)
    tally: Tally = field(default_factory=Tally)
    result: FitResult = field(default_factory=lambda: FitResult(-1.0, -1, None, None, 0.0, 0.0))
    clock: Clock = NO_CLOCK
    graphs: Any = None  # runtime.GraphCounts
    start: float = 0.0
    seconds_before: float = 0.0  # the training time of the sessions before this one (resume)
    fit_steps_start: int = 0
    window_start: float = 0.0
    window_samples: int = 0

    @property
    def resume_dir(self) -> Path | None:
        return self.ckpt_dir / "resume" if self.ckpt_dir else None


def log_interval(acc: Accelerator, loop: Loop, totals: list[float], epoch: int, lr: float) -> dict[str, Any]:
    """The interval's record from the tally's sums read now (`totals`): means, rate, skips; fails on a fault."""
    tally, pos, skip_nonfinite = loop.tally, loop.pos, loop.spec.nonfinite == "skip"
    record = interval_means(totals, tally.previous, tally.names)
    tally.previous, now = totals, time.perf_counter()
    record.update(event="train", epoch=epoch, step=pos.step, lr=lr,
                  samples_per_s=loop.window_samples / max(now - loop.window_start, 1e-9))  # fmt: skip
    if skip_nonfinite:
        record["skipped"] = pos.skipped
    loop.window_start, loop.window_samples = now, 0
    if not skip_nonfinite:
        faults.check_faults(faults.first_bad(acc, tally.faults), tally.names, loop.shape["steps_per_epoch"],
                            loop.resume_dir)  # fmt: skip
    loop.log.write(record)
    return record


def progress_stats(loop: Loop, record: dict[str, Any]) -> str:
    """The bar's text: the interval's means and the run's time left at this process's rate, evaluations included."""
    now, pos = time.perf_counter(), loop.pos
    done = pos.step - loop.fit_steps_start
    eta = (now - loop.start) / done * (loop.shape["total_steps"] - pos.step) if done else None
    return bar_stats(record, eta)


def checkpoint(acc: Accelerator, loop: Loop) -> Path | None:
    """A resume checkpoint of where the loop is (none without a run folder)."""
    if loop.resume_dir is None:
        return None
    tally, spec = loop.tally, loop.spec
    if tally.faults is not None and spec.nonfinite == "stop":  # never save a state a non-finite loss reached
        faults.check_faults(faults.first_bad(acc, tally.faults), tally.names, loop.shape["steps_per_epoch"],
                            loop.resume_dir)  # fmt: skip
    loop.pos.seconds = loop.seconds_before + time.perf_counter() - loop.start
    with loop.clock("checkpoints"):
        return save_resume(acc, loop.resume_dir, loop.learner, loop.optimizer, tally, loop.pos, loop.result,
                           loop.shape, spec.keep_checkpoints)  # fmt: skip


def stop_here(acc: Accelerator, loop: Loop, signal_name: str, epoch: int) -> RunInterrupted:
    """The error that ends the run on a stop signal, after a checkpoint to resume from."""
    saved = checkpoint(acc, loop)
    return RunInterrupted(signal_name, epoch, loop.pos.step, str(saved) if saved else None)


def finish(loop: Loop, is_main: bool) -> FitResult:
    """The result: time, rate, where the time went, skipped steps, XLA's graph counts."""
    result, pos = loop.result, loop.pos
    result.seconds = loop.seconds_before + time.perf_counter() - loop.start
    result.samples_per_second = pos.samples / max(result.seconds, 1e-9)
    if loop.clock.enabled:
        result.time_breakdown = time_breakdown(loop.clock, time.perf_counter() - loop.start)
        if is_main:
            say(f"tinykd: {describe_breakdown(result.time_breakdown)}" + (" (this session)" if loop.resumed else ""))
    result.skipped_steps = pos.skipped
    result.xla = loop.graphs.totals(train_steps=pos.step)
    if loop.val_loader is None:
        result.best_accuracy = float("nan")
    return result


def replay(acc: Accelerator, learner: nn.Module, train_loader: DataLoader, spec: TrainSpec,
           fn: Callable[[Any], None], channels_last: bool) -> int:  # fmt: skip
    """`Engine.replay`: `fn(inputs)` on the batches `fit` would train on, in order, without training."""
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    learner.to(acc.device)
    sampler = train_loader.sampler if isinstance(getattr(train_loader, "sampler", None), EpochShuffle) else None
    loader = acc.prepare(train_loader)
    steps = min(len(loader), spec.max_steps_per_epoch or len(loader))
    count = 0
    for epoch in range(1, spec.epochs + 1):
        if sampler is not None:
            sampler.epoch, sampler.start = epoch - 1, 0
        for i, (inputs, _) in enumerate(loader):
            if i >= steps:
                break
            with acc.autocast():
                fn(to_memory_format(inputs, channels_last))
            step_boundary(acc.device)
            count += 1
    return count
