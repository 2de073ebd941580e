"""The training engine: one readable loop on top of Hugging Face Accelerate.

It trains any `learner` module whose `forward(inputs, targets)` returns
`(logits, {name: loss})` and that offers `trainable_parameters()` (and, if it
wants to hear it, `set_epoch(epoch)` at the start of each epoch); it checkpoints
and evaluates `model`, the module that will be kept, with the metrics of the
`task` (a `tinykd.tasks.Task`, which also picks the best checkpoint). It does not
know what distillation is or which task it trains, and nothing here names a
device: Accelerate places the work. Per-step values stay on the device and are
read once per `log_every` steps, so the loop has no host sync per step.

Beside this file: `loop.py` (what `fit` carries from step to step, its log
records, checkpoints and result), `step.py` (one optimizer step and its tally),
`evaluation.py` (a model's metrics on a loader), `faults.py` (non-finite losses, stop signals),
`resume.py` (what a resume checkpoint holds), `log.py` (metrics.jsonl, progress),
and `runtime.py` (which device, how many processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tinykd.data import EpochShuffle, PadToMultiple, make_loader
from tinykd.engine import faults
from tinykd.engine.evaluation import evaluate
from tinykd.engine.log import Clock, MetricsLog, console, progress_bar
from tinykd.engine.loop import Loop, checkpoint, finish, log_interval, progress_stats, replay, stop_here
from tinykd.engine.resume import FitResult, Tally, load_resume, not_fitting, restore
from tinykd.engine.runtime import GraphCounts, describe_run, make_accelerator, resolve_precision, step_boundary
from tinykd.engine.schedule import build_optimizer, lr_at
from tinykd.engine.step import train_step
from tinykd.engine.trackers import flat
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import versioned
from tinykd.recipes.schema import RuntimeSpec, TrainSpec
from tinykd.tasks import Task


def validation_text(val: dict[str, Any], best: str) -> str:
    """The epoch line's validation part: accuracy and loss where the task has them, else its best metric."""
    if not val:
        return "no validation set"
    if "accuracy" in val and "loss" in val:
        return f"val acc {val['accuracy']:.2%} loss {val['loss']:.4f}"
    return f"val {best} {val[best]:.4f}"


_TOP1 = Task()  # `evaluate`'s default: top-1 accuracy and mean cross-entropy, what any classifier is scored by


class Engine:
    """Owns the Accelerator; `fit` trains, `evaluate` measures a model by its task's metrics."""

    def __init__(self, runtime: RuntimeSpec) -> None:
        self.runtime = runtime
        self.accelerator = make_accelerator(runtime)
        self.precision = resolve_precision(runtime.precision, self.accelerator.device.type)  # `auto` resolved

    def describe(self) -> str:
        """Where the run happens, e.g. `cpu, 2 processes (GLOO), fp32`."""
        return describe_run(self.accelerator, self.precision)

    def seed(self, seed: int) -> None:
        """Seed python, numpy and torch identically on every process (weights start equal everywhere)."""
        from accelerate.utils import set_seed

        set_seed(seed)

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the main process only and give its result (or its error) to every process."""
        from accelerate.utils import broadcast_object_list

        outcome: list[Any] = [None, None]
        if self.is_main:
            try:
                outcome = [fn(), None]
            except TinykdError as exc:
                outcome = [None, str(exc)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(outcome, from_process=0)
        if outcome[1] is not None:
            raise TinykdError(outcome[1])
        return outcome[0]

    def loader(self, dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0) -> DataLoader:
        """`make_loader`, with pinned memory for a GPU; evaluation sets are padded to whole batches (one shape)."""
        if not train:
            dataset = PadToMultiple(dataset, batch_size * self.accelerator.num_processes)
        return make_loader(dataset, batch_size, train, num_workers, seed, pin_memory=self.device.type == "cuda")

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @torch.no_grad()
    def replay(self, learner: nn.Module, train_loader: DataLoader, spec: TrainSpec, fn: Callable[[Any], None]) -> int:
        """Call `fn(inputs)` on every training batch of every epoch that `fit` would train on, in the same order,
        on the same device, memory format and autocast, without training: to precompute a frozen model's outputs
        for exactly those batches. Returns the number of batches."""
        with self._releasing():
            return replay(self.accelerator, learner, train_loader, spec, fn, self.runtime.channels_last)

    def fit(
        self,
        learner: nn.Module,
        model: nn.Module,
        task: Task,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        spec: TrainSpec,
        run_dir: Path | None = None,
        save: Callable[[nn.Module, Path], None] | None = None,
        resume: bool = False,
    ) -> FitResult:
        """Train `learner` for `spec.epochs`; evaluate `model` by `task`'s metrics after each epoch and checkpoint it
        (the best by `task.best_metric`).

        With a `run_dir`, resume checkpoints (`checkpoints/resume/`) are written every `spec.checkpoint_every`
        steps and at each epoch end; `resume` continues from the newest complete one, exactly. SIGINT and
        SIGTERM stop the loop at the next step boundary after saving one (`RunInterrupted`).
        """
        with self._releasing():
            return self._fit(learner, model, task, train_loader, val_loader, spec, run_dir, save, resume)

    @contextmanager
    def _releasing(self) -> Iterator[None]:
        """Drop Accelerate's references to what it prepared here (it keeps every model, optimizer and loader):
        otherwise every run in a process (a notebook, a sweep, a multi-process job until its exit) stays alive."""
        try:
            yield
        finally:
            self.accelerator.free_memory()

    def _fit(self, learner: nn.Module, model: nn.Module, task: Task, train_loader: DataLoader,
             val_loader: DataLoader | None, spec: TrainSpec, run_dir: Path | None,
             save: Callable[[nn.Module, Path], None] | None, resume: bool) -> FitResult:  # fmt: skip
        loop = self._start(learner, model, task, train_loader, val_loader, spec, run_dir, save, resume)
        with faults.StopSignals() as signals, progress_bar(self.is_main) as bar, loop.log:
            for epoch in range(loop.pos.epoch_done + 1, spec.epochs + 1):
                epoch_start = time.perf_counter()
                self._train_epoch(loop, epoch, signals, bar)
                loop.graphs.end_epoch()
                loop.log.write(self._end_epoch(loop, epoch, time.perf_counter() - epoch_start))
                loop.pos.epoch_done, loop.pos.batches_done = epoch, 0
                stop = faults.agree_on_stop(self.accelerator, signals.received)
                if stop is not None:
                    raise stop_here(self.accelerator, loop, stop, epoch)
                checkpoint(self.accelerator, loop)
        return finish(loop, self.is_main)

    def _start(self, learner: nn.Module, model: nn.Module, task: Task, train_loader: DataLoader,
               val_loader: DataLoader | None, spec: TrainSpec, run_dir: Path | None,
               save: Callable[[nn.Module, Path], None] | None, resume: bool) -> Loop:  # fmt: skip
        """Everything before the first step: restore a resume checkpoint, prepare, open the log and the clock."""
        acc = self.accelerator
        if self.runtime.channels_last:
            learner.to(memory_format=torch.channels_last)
        sampler = train_loader.sampler if isinstance(getattr(train_loader, "sampler", None), EpochShuffle) else None
        samples_per_step = (getattr(train_loader, "batch_size", None) or 0) * acc.num_processes
        ckpt_dir = run_dir / "checkpoints" if run_dir else None
        resume_dir = ckpt_dir / "resume" if ckpt_dir else None
        restored = load_resume(acc, resume_dir) if resume and resume_dir else None
        if restored is not None:
            with not_fitting(restored.path):  # before prepare: the same tensors get wrapped and moved
                learner.load_state_dict(versioned(restored.prefixed("task"), learner))
        optimizer = build_optimizer(learner.trainable_parameters(), spec.optimizer)
        learner, optimizer, train_loader = acc.prepare(learner, optimizer, train_loader)
        if val_loader is not None:
            val_loader = acc.prepare(val_loader)
        steps_per_epoch = min(len(train_loader), spec.max_steps_per_epoch or len(train_loader))
        if steps_per_epoch == 0:
            raise TinykdError("the training set is smaller than one batch; lower data.batch_size")
        shape = {"num_processes": acc.num_processes, "samples_per_step": samples_per_step,
                 "steps_per_epoch": steps_per_epoch, "total_steps": spec.epochs * steps_per_epoch}  # fmt: skip
        log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None, self.is_main)
        loop = Loop(learner, model, task, optimizer, [p for group in optimizer.param_groups for p in group["params"]],
                    train_loader, val_loader, spec, sampler, shape, log,
                    ckpt_dir, save, restored is not None)  # fmt: skip
        if restored is not None:
            with not_fitting(restored.path):
                restore(acc, restored, optimizer, loop.tally, loop.pos, loop.result, shape, ckpt_dir)
            if loop.pos.batches_done and sampler is None:
                raise TinykdError("cannot resume in the middle of an epoch: the training loader has no EpochShuffle")
            log.keep_until(loop.pos.step)
            log.write({"event": "resume", "step": loop.pos.step, "epoch": loop.pos.epoch_done + 1,
                       "from": str(restored.path)})  # fmt: skip
        elif resume:
            log.keep_until(0)  # killed before its first checkpoint: start again from step 0 in the same folder
        config = {"train": spec.model_dump(mode="json"), "runtime": self.runtime.model_dump(mode="json")}
        log.open_trackers(self.runtime.log_with, run_dir.name if run_dir else "run", flat(config), loop.pos.step)
        step_boundary(self.device)  # on XLA: run what set-up left pending, so it is not counted as a training step
        loop.start, loop.seconds_before = time.perf_counter(), loop.pos.seconds  # the time of the run before this one
        loop.graphs = GraphCounts(self.device)
        # where the time goes (off on XLA: a sync there would cut the step's graph); the learner times its own parts
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        loop.clock = Clock(sync, enabled=self.runtime.time_breakdown and self.device.type != "xla")
        if hasattr(acc.unwrap_model(learner), "clock"):
            acc.unwrap_model(learner).clock = loop.clock
        loop.fit_steps_start = loop.pos.step
        return loop

    def _train_epoch(self, loop: Loop, epoch: int, signals: faults.StopSignals, bar: Any) -> None:
        """The steps of one epoch, from the position reached in it; logs every `log_every` steps."""
        acc, spec, pos = self.accelerator, loop.spec, loop.pos
        loop.learner.train()
        if hasattr(acc.unwrap_model(loop.learner), "set_epoch"):
            acc.unwrap_model(loop.learner).set_epoch(epoch)
        skip, steps_per_epoch = pos.batches_done, loop.shape["steps_per_epoch"]
        if loop.sampler is not None:  # the data order of this epoch, from the position reached in it
            loop.sampler.epoch, loop.sampler.start = epoch - 1, skip * loop.shape["samples_per_step"]
        bar_task = bar.add_task(f"epoch {epoch}/{spec.epochs}", total=steps_per_epoch, completed=skip, stats="")
        loop.window_start, loop.window_samples = time.perf_counter(), 0
        loop.graphs.begin_epoch()
        waited = time.perf_counter()
        for i, (inputs, targets) in enumerate(loop.train_loader, start=skip):
            loop.clock.add("data", time.perf_counter() - waited)  # the loader's time to give this batch
            if i >= steps_per_epoch:
                break
            lr = lr_at(pos.step, loop.shape["total_steps"], steps_per_epoch, spec.optimizer.lr, spec.schedule)
            with loop.clock("step"):
                stepped = self._train_step(loop.learner, loop.optimizer, loop.params, inputs, targets, lr,
                                           spec.grad_clip, loop.tally, loop.task, spec.nonfinite == "skip")  # fmt: skip
            pos.step, pos.batches_done = pos.step + 1, i + 1
            pos.samples += len(targets) * acc.num_processes
            loop.window_samples += len(targets) * acc.num_processes
            if not stepped:
                pos.skipped += 1
                faults.count_skip(acc, pos.skipped, pos.step, epoch, loop.tally.faults, loop.tally.names, spec,
                                  loop.resume_dir)  # fmt: skip
            stop = signals.received if acc.num_processes == 1 else None
            if (i + 1) % spec.log_every == 0 or i + 1 == steps_per_epoch:
                record = log_interval(acc, loop, self._read(loop.tally.running), epoch, lr)  # the interval's one sync
                bar.update(bar_task, completed=i + 1, stats=progress_stats(loop, record))
                if acc.num_processes > 1:
                    stop = faults.agree_on_stop(acc, signals.received)
            else:
                bar.update(bar_task, completed=i + 1)
            if stop is not None and i + 1 < steps_per_epoch:
                raise stop_here(self.accelerator, loop, stop, epoch)
            if spec.checkpoint_every and pos.step % spec.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                checkpoint(self.accelerator, loop)
            waited = time.perf_counter()

    def _train_step(self, learner: nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                    inputs: Any, targets: torch.Tensor, lr: float, grad_clip: float | None, tally: Tally, task: Task,
                    skip_nonfinite: bool = False) -> bool:  # fmt: skip
        """`step.train_step` on this engine (a method, so that a test can wrap every step of a run)."""
        return train_step(self.accelerator, learner, optimizer, params, inputs, targets, lr, grad_clip, tally, task,
                          skip_nonfinite, self.runtime.channels_last)  # fmt: skip

    def _end_epoch(self, loop: Loop, epoch: int, seconds: float) -> dict[str, Any]:
        """Validate, keep the best and last checkpoints of the model, and return the epoch's record."""
        acc, result, task, ckpt_dir, save = self.accelerator, loop.result, loop.task, loop.ckpt_dir, loop.save
        with loop.clock("evaluation"):
            val = self.evaluate(loop.model, loop.val_loader, task) if loop.val_loader is not None else {}
        record = {"event": "epoch", "epoch": epoch, "step": loop.pos.step, "seconds": round(seconds, 3)}
        record.update({f"val_{k}": v for k, v in val.items()})
        result.history.append(record)
        if self.is_main:
            val_text = validation_text(val, task.best_metric)
            console.print(f"epoch {epoch}/{loop.spec.epochs}: {val_text} ({seconds:.1f} s)")
        score = val.get(task.best_metric, epoch)  # without validation, the latest epoch counts as the best
        improved = score > result.best_accuracy
        if improved:
            result.best_accuracy, result.best_epoch = float(score), epoch
        if ckpt_dir is not None and save is not None:  # every process knows the paths; the main one writes
            result.last_checkpoint = ckpt_dir / "last.safetensors"
            if improved:
                result.best_checkpoint = ckpt_dir / "best.safetensors"
            if self.is_main:
                save(acc.unwrap_model(loop.model), result.last_checkpoint)
                if improved:
                    save(acc.unwrap_model(loop.model), result.best_checkpoint)  # type: ignore[arg-type]
        if acc.num_processes > 1:
            acc.wait_for_everyone()
        return record

    def _read(self, running: torch.Tensor) -> list[float]:
        """The running sums, summed over processes, on the host (a transfer of values the step already computed)."""
        if self.accelerator.num_processes > 1:
            running = self.accelerator.reduce(running, reduction="sum")
        return running.tolist()

    def evaluate(self, model: nn.Module, loader: DataLoader, task: Task = _TOP1) -> dict[str, float]:
        """`task`'s metrics of `model` on `loader` (by default top-1 accuracy and mean cross-entropy, per sample
        or per token); targets equal to the ignore label (padding, unmasked tokens) are not counted."""
        return evaluate(self.accelerator, model, loader, task, self.runtime.channels_last)
