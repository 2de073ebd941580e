"""The training engine: one readable loop on top of Hugging Face Accelerate.

It trains any `task` module whose `forward(inputs, targets)` returns
`(logits, {name: loss})` and that offers `trainable_parameters()` (and, if it
wants to hear it, `set_epoch(epoch)` at the start of each epoch); it checkpoints
and evaluates `model`, the module that will be kept. It does not know what
distillation is, and nothing here names a device: Accelerate places the work.
Per-step values stay on the device and are read once per `log_every` steps, so
the loop has no host sync per step.

Beside this file: `faults.py` (non-finite losses, stop signals), `resume.py`
(what a resume checkpoint holds), `log.py` (metrics.jsonl, progress), and
`runtime.py` (which device, how many processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tinykd.data import EpochShuffle, PadToMultiple, make_loader
from tinykd.engine import faults
from tinykd.engine.log import (
    NO_CLOCK,
    Clock,
    MetricsLog,
    bar_stats,
    console,
    describe_breakdown,
    interval_means,
    progress_bar,
    say,
    time_breakdown,
)
from tinykd.engine.resume import FitResult, Position, Tally, load_resume, not_fitting, restore, save_resume
from tinykd.engine.runtime import GraphCounts, describe_run, make_accelerator, resolve_precision, step_boundary
from tinykd.engine.schedule import build_optimizer, lr_at
from tinykd.errors import RunInterrupted, TinykdError
from tinykd.models.checkpoint import versioned
from tinykd.models.outputs import call_model
from tinykd.recipes.schema import RuntimeSpec, TrainSpec


class Engine:
    """Owns the Accelerator; `fit` trains, `evaluate` measures accuracy."""

    def __init__(self, runtime: RuntimeSpec) -> None:
        self.runtime = runtime
        self.accelerator = make_accelerator(runtime)
        self.precision = resolve_precision(runtime.precision, self.accelerator.device.type)  # `auto` resolved
        self._clock = NO_CLOCK  # fit's, while it runs

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

    def _to_memory_format(self, x: Any) -> Any:
        """Image batches (4-D tensors, also inside tuples and dicts) in channels_last when the runtime asks."""
        if not self.runtime.channels_last:
            return x
        if isinstance(x, torch.Tensor):
            return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
        if isinstance(x, tuple):
            items = [self._to_memory_format(v) for v in x]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        if isinstance(x, dict):
            return {k: self._to_memory_format(v) for k, v in x.items()}
        return x

    @torch.no_grad()
    def replay(self, task: nn.Module, train_loader: DataLoader, spec: TrainSpec, fn: Callable[[Any], None]) -> int:
        """Call `fn(inputs)` on every training batch of every epoch that `fit` would train on, in the same order,
        on the same device, memory format and autocast, without training: to precompute a frozen model's outputs
        for exactly those batches. Returns the number of batches."""
        with self._releasing():
            return self._replay(task, train_loader, spec, fn)

    def _replay(self, task: nn.Module, train_loader: DataLoader, spec: TrainSpec, fn: Callable[[Any], None]) -> int:
        acc = self.accelerator
        if self.runtime.channels_last:
            task.to(memory_format=torch.channels_last)
        task.to(self.device)
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
                    fn(self._to_memory_format(inputs))
                step_boundary(self.device)
                count += 1
        return count

    def fit(
        self,
        task: nn.Module,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        spec: TrainSpec,
        run_dir: Path | None = None,
        save: Callable[[nn.Module, Path], None] | None = None,
        resume: bool = False,
    ) -> FitResult:
        """Train `task` for `spec.epochs`; evaluate and checkpoint `model` after each epoch.

        With a `run_dir`, resume checkpoints (`checkpoints/resume/`) are written every `spec.checkpoint_every`
        steps and at each epoch end; `resume` continues from the newest complete one, exactly. SIGINT and
        SIGTERM stop the loop at the next step boundary after saving one (`RunInterrupted`).
        """
        with self._releasing():
            return self._fit(task, model, train_loader, val_loader, spec, run_dir, save, resume)

    @contextmanager
    def _releasing(self) -> Iterator[None]:
        """Drop Accelerate's references to what it prepared here (it keeps every model, optimizer and loader):
        otherwise every run in a process (a notebook, a sweep, a multi-process job until its exit) stays alive."""
        try:
            yield
        finally:
            self.accelerator.free_memory()

    def _fit(self, task: nn.Module, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None,
             spec: TrainSpec, run_dir: Path | None, save: Callable[[nn.Module, Path], None] | None,
             resume: bool) -> FitResult:  # fmt: skip
        acc = self.accelerator
        if self.runtime.channels_last:
            task.to(memory_format=torch.channels_last)
        sampler = train_loader.sampler if isinstance(getattr(train_loader, "sampler", None), EpochShuffle) else None
        samples_per_step = (getattr(train_loader, "batch_size", None) or 0) * acc.num_processes
        ckpt_dir = run_dir / "checkpoints" if run_dir else None
        resume_dir = ckpt_dir / "resume" if ckpt_dir else None
        restored = load_resume(acc, resume_dir) if resume and resume_dir else None
        if restored is not None:
            with not_fitting(restored.path):  # before prepare: the same tensors get wrapped and moved
                task.load_state_dict(versioned(restored.prefixed("task"), task))
        optimizer = build_optimizer(task.trainable_parameters(), spec.optimizer)
        task, optimizer, train_loader = acc.prepare(task, optimizer, train_loader)
        if val_loader is not None:
            val_loader = acc.prepare(val_loader)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps_per_epoch = min(len(train_loader), spec.max_steps_per_epoch or len(train_loader))
        if steps_per_epoch == 0:
            raise TinykdError("the training set is smaller than one batch; lower data.batch_size")
        total_steps = spec.epochs * steps_per_epoch
        shape = {"num_processes": acc.num_processes, "samples_per_step": samples_per_step,
                 "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}  # fmt: skip
        log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None, self.is_main)
        result, pos, tally = FitResult(-1.0, -1, None, None, 0.0, 0.0), Position(), Tally()
        if restored is not None:
            with not_fitting(restored.path):
                restore(acc, restored, optimizer, tally, pos, result, shape, ckpt_dir)
            if pos.batches_done and sampler is None:
                raise TinykdError("cannot resume in the middle of an epoch: the training loader has no EpochShuffle")
            log.keep_until(pos.step)
            log.write({"event": "resume", "step": pos.step, "epoch": pos.epoch_done + 1, "from": str(restored.path)})
        elif resume:
            log.keep_until(0)  # killed before its first checkpoint: start again from step 0 in the same folder
        config = {"train": spec.model_dump(mode="json"), "runtime": self.runtime.model_dump(mode="json")}
        log.open_trackers(self.runtime.log_with, run_dir.name if run_dir else "run", flat(config), pos.step)
        step_boundary(self.device)  # on XLA: run what set-up left pending, so it is not counted as a training step
        start, seconds_before = time.perf_counter(), pos.seconds  # pos.seconds: the time of the run before this one
        graphs = GraphCounts(self.device)
        skip_nonfinite = spec.nonfinite == "skip"
        # where the time goes (off on XLA: a sync there would cut the step's graph); the task times its own parts
        sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        clock = Clock(sync, enabled=self.runtime.time_breakdown and self.device.type != "xla")
        self._clock = clock
        if hasattr(acc.unwrap_model(task), "clock"):
            acc.unwrap_model(task).clock = clock
        fit_steps_start = pos.step

        def checkpoint() -> Path | None:
            if resume_dir is None:
                return None
            if tally.faults is not None and spec.nonfinite == "stop":  # never save a state a non-finite loss reached
                faults.check_faults(faults.first_bad(acc, tally.faults), tally.names, steps_per_epoch, resume_dir)
            pos.seconds = seconds_before + time.perf_counter() - start
            with clock("checkpoints"):
                return save_resume(acc, resume_dir, task, optimizer, tally, pos, result, shape, spec.keep_checkpoints)

        def stop_here(signal_name: str, epoch: int) -> RunInterrupted:
            saved = checkpoint()
            return RunInterrupted(signal_name, epoch, pos.step, str(saved) if saved else None)

        with faults.StopSignals() as signals, progress_bar(self.is_main) as bar, log:
            for epoch in range(pos.epoch_done + 1, spec.epochs + 1):
                task.train()
                if hasattr(acc.unwrap_model(task), "set_epoch"):
                    acc.unwrap_model(task).set_epoch(epoch)
                skip = pos.batches_done
                if sampler is not None:  # the data order of this epoch, from the position reached in it
                    sampler.epoch, sampler.start = epoch - 1, skip * samples_per_step
                bar_task = bar.add_task(f"epoch {epoch}/{spec.epochs}", total=steps_per_epoch, completed=skip,
                                        stats="")  # fmt: skip
                window_start, window_images, epoch_start = time.perf_counter(), 0, time.perf_counter()
                graphs.begin_epoch()
                waited = time.perf_counter()
                for i, (inputs, targets) in enumerate(train_loader, start=skip):
                    clock.add("data", time.perf_counter() - waited)  # the loader's time to give this batch
                    if i >= steps_per_epoch:
                        break
                    lr = lr_at(pos.step, total_steps, steps_per_epoch, spec.optimizer.lr, spec.schedule)
                    with clock("step"):
                        stepped = self._train_step(task, optimizer, params, inputs, targets, lr, spec.grad_clip,
                                                   tally, skip_nonfinite)  # fmt: skip
                    pos.step, pos.batches_done = pos.step + 1, i + 1
                    pos.images += len(targets) * acc.num_processes
                    window_images += len(targets) * acc.num_processes
                    if not stepped:
                        pos.skipped += 1
                        faults.count_skip(acc, pos.skipped, pos.step, epoch, tally.faults, tally.names, spec,
                                          resume_dir)  # fmt: skip
                    stop = signals.received if acc.num_processes == 1 else None
                    if (i + 1) % spec.log_every == 0 or i + 1 == steps_per_epoch:
                        totals = self._read(tally.running)  # the one host sync of the interval
                        record = interval_means(totals, tally.previous, tally.names)
                        tally.previous, now = totals, time.perf_counter()
                        record.update(event="train", epoch=epoch, step=pos.step, lr=lr,
                                      img_per_s=window_images / max(now - window_start, 1e-9))  # fmt: skip
                        if skip_nonfinite:
                            record["skipped"] = pos.skipped
                        window_start, window_images = now, 0
                        if not skip_nonfinite:
                            faults.check_faults(faults.first_bad(acc, tally.faults), tally.names, steps_per_epoch,
                                                resume_dir)  # fmt: skip
                        log.write(record)
                        done = pos.step - fit_steps_start  # the rate of this process's run, evaluations included
                        eta = (now - start) / done * (total_steps - pos.step) if done else None
                        bar.update(bar_task, completed=i + 1, stats=bar_stats(record, eta))
                        if acc.num_processes > 1:
                            stop = faults.agree_on_stop(acc, signals.received)
                    else:
                        bar.update(bar_task, completed=i + 1)
                    if stop is not None and i + 1 < steps_per_epoch:
                        raise stop_here(stop, epoch)
                    if spec.checkpoint_every and pos.step % spec.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                        checkpoint()
                    waited = time.perf_counter()
                graphs.end_epoch()
                log.write(self._end_epoch(model, val_loader, epoch, pos.step, time.perf_counter() - epoch_start,
                                          spec.epochs, result, ckpt_dir, save))  # fmt: skip
                pos.epoch_done, pos.batches_done = epoch, 0
                stop = faults.agree_on_stop(acc, signals.received)
                if stop is not None:
                    raise stop_here(stop, epoch)
                checkpoint()
        result.seconds = seconds_before + time.perf_counter() - start
        result.images_per_second = pos.images / max(result.seconds, 1e-9)
        if clock.enabled:
            result.time_breakdown = time_breakdown(clock, time.perf_counter() - start)
            if self.is_main:
                say(f"tinykd: {describe_breakdown(result.time_breakdown)}" + (" (this session)" if restored else ""))
        result.skipped_steps = pos.skipped
        result.xla = graphs.totals(train_steps=pos.step)
        if val_loader is None:
            result.best_accuracy = float("nan")
        return result

    def _train_step(self, task: nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], inputs: Any,
                    targets: torch.Tensor, lr: float, grad_clip: float | None, tally: Tally,
                    skip_nonfinite: bool = False) -> bool:  # fmt: skip
        """One optimizer step; adds [total, each term..., correct, images, 1, counted] to `tally` (no sync).

        The addition happens before the graph cut, so that on XLA the whole step is one graph, executed once.
        With `skip_nonfinite`, a step whose loss or gradients are not finite is not applied; finding out costs
        one read from the device per step. Returns whether the optimizer stepped.
        """
        acc = self.accelerator
        for group in optimizer.param_groups:
            group["lr"] = lr
        with acc.autocast():
            logits, losses = task(self._to_memory_format(inputs), targets)
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
        correct, count = top1_counts(logits.detach(), targets)
        stats = torch.cat([values, correct[None] * counted, count[None] * counted, torch.ones(1, device=device),
                           counted])  # fmt: skip
        tally.running = stats if tally.running is None else tally.running + stats
        steps = tally.running[-2]  # steps since the start of training, this one included
        fresh = ~finite if tally.faults is None else ~finite & (tally.faults == 0)
        tally.faults = torch.where(fresh, steps, torch.zeros_like(values) if tally.faults is None else tally.faults)
        tally.names = list(losses)
        step_boundary(self.device)
        return stepped

    def _end_epoch(self, model: nn.Module, val_loader: DataLoader | None, epoch: int, step: int, seconds: float,
                   epochs: int, result: FitResult, ckpt_dir: Path | None,
                   save: Callable[[nn.Module, Path], None] | None) -> dict[str, Any]:  # fmt: skip
        """Validate, keep the best and last checkpoints of `model`, and return the epoch's record."""
        acc = self.accelerator
        with self._clock("evaluation"):
            val = self.evaluate(model, val_loader) if val_loader is not None else {}
        record = {"event": "epoch", "epoch": epoch, "step": step, "seconds": round(seconds, 3)}
        record.update({f"val_{k}": v for k, v in val.items()})
        result.history.append(record)
        if self.is_main:
            val_text = f"val acc {val['accuracy']:.2%} loss {val['loss']:.4f}" if val else "no validation set"
            console.print(f"epoch {epoch}/{epochs}: {val_text} ({seconds:.1f} s)")
        score = val.get("accuracy", epoch)  # without validation, the latest epoch counts as the best
        improved = score > result.best_accuracy
        if improved:
            result.best_accuracy, result.best_epoch = float(score), epoch
        if ckpt_dir is not None and save is not None:  # every process knows the paths; the main one writes
            result.last_checkpoint = ckpt_dir / "last.safetensors"
            if improved:
                result.best_checkpoint = ckpt_dir / "best.safetensors"
            if self.is_main:
                save(acc.unwrap_model(model), result.last_checkpoint)
                if improved:
                    save(acc.unwrap_model(model), result.best_checkpoint)  # type: ignore[arg-type]
        if acc.num_processes > 1:
            acc.wait_for_everyone()
        return record

    def _read(self, running: torch.Tensor) -> list[float]:
        """The running sums, summed over processes, on the host (a transfer of values the step already computed)."""
        if self.accelerator.num_processes > 1:
            running = self.accelerator.reduce(running, reduction="sum")
        return running.tolist()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Top-1 accuracy and mean cross-entropy of `model` on `loader`, per sample or per token; targets equal to
        PadToMultiple.IGNORE (padding, unmasked tokens) are not counted."""
        acc = self.accelerator
        was_training = model.training
        model.eval()
        sums = torch.zeros(3).to(acc.device)  # a copy to the device, not a graph of its own on XLA
        for inputs, targets in loader:
            with acc.autocast():
                logits = call_model(model, self._to_memory_format(inputs)).float()
            correct, count = top1_counts(logits, targets)
            loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=PadToMultiple.IGNORE,
                                   reduction="sum")
            sums += torch.stack([correct, loss, count])
            step_boundary(self.device)
        model.train(was_training)
        if acc.num_processes > 1:  # each process saw its own whole batches (the set is padded to fit): add them up
            sums = acc.reduce(sums, reduction="sum")
        correct, loss, count = sums.tolist()
        return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1), "count": int(count)}


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as `train.optimizer.lr: 0.1`: what trackers take as hyperparameters (lists as text)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def top1_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) top-1 predictions, on the device: per sample for (B, C) logits, per token for (B, T, V)
    logits; targets equal to PadToMultiple.IGNORE are not counted."""
    valid = targets != PadToMultiple.IGNORE
    return ((logits.argmax(-1) == targets) & valid).sum().float(), valid.sum().float()
