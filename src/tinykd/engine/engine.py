"""The training engine: one readable loop on top of Hugging Face Accelerate.

It trains any `task` module whose `forward(inputs, targets)` returns
`(logits, {name: loss})` and that offers `trainable_parameters()`; it checkpoints
and evaluates `model`, the module that will be kept. It does not know what
distillation is, and nothing here names a device: Accelerate places the work.
Per-step values stay on the device and are read once per `log_every` steps, so
the loop has no host sync per step.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from tinykd.data import PadToMultiple, collate_batched
from tinykd.distill.distiller import call_model
from tinykd.engine.runtime import make_accelerator
from tinykd.engine.schedule import build_optimizer, lr_at
from tinykd.engine.state import (
    Checkpoint,
    flatten_optimizer,
    latest_complete,
    load_latest,
    remove_partial_writes,
    restore_rng,
    save_checkpoint,
    unflatten_optimizer,
)
from tinykd.errors import RunInterrupted, TinykdError
from tinykd.recipes.schema import RuntimeSpec, TrainSpec

console = Console(stderr=True)


def say(message: str) -> None:
    """One line on stderr, as written: no wrapping at 80 columns in logs, no markup read into paths."""
    console.print(message, soft_wrap=True, markup=False, highlight=False)


@dataclass
class FitResult:
    """What `fit` returns: the best validation accuracy, where the checkpoints are, and the history."""

    best_accuracy: float
    best_epoch: int
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    seconds: float
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    xla: dict[str, int] | None = None  # compilations and graph executions during fit, on an XLA device
    skipped_steps: int = 0  # steps not applied because of a non-finite loss (train.nonfinite: skip)


@dataclass
class Position:
    """Where training is: what a resume checkpoint needs beyond tensors to continue at the same step."""

    step: int = 0  # optimizer steps taken (skipped ones included): the schedule's clock
    epoch_done: int = 0  # epochs finished, validation included
    batches_done: int = 0  # batches of the next epoch already trained on
    images: int = 0
    seconds: float = 0.0
    skipped: int = 0


class StopSignals:
    """SIGINT and SIGTERM ask the loop to stop at the next step boundary (after a checkpoint), not to die mid-step.

    A second signal of the same kind acts at once, as it would without tinykd. Handlers can only be set from
    the main thread; elsewhere (a notebook's worker thread) signals keep their usual meaning.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        say(f"tinykd: {self.received} received: stopping after this step, with a checkpoint "
                      "(send it again to stop at once)")  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """Append-only JSON lines (`metrics.jsonl`), written by the main process only."""

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path = path if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def keep_until(self, step: int) -> None:
        """On resume: drop the records of steps after the checkpoint (they will be made again)."""
        if self.path is None or not self.path.exists():
            return
        kept = []
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():  # a damaged line is dropped
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)


class EpochShuffle(Sampler[int]):
    """A new permutation each epoch from (seed, epoch) alone: the same order on every device and process.

    torch's RandomSampler draws from a generator that Accelerate re-seeds or synchronises differently per
    backend (the CPU and XLA paths gave different orders for one seed); this sampler has no hidden state but
    `epoch` and `start` (how far into the epoch's order to begin, once), which a resumed run sets.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        start, self.start = self.start, 0
        self.epoch += 1
        return iter(order[start:].tolist())


def make_loader(
    dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Training loaders shuffle (seeded) and drop the last partial batch, so every step has the same shape."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(len(dataset), seed) if train else None,  # type: ignore[arg-type]
        drop_last=train,
        num_workers=num_workers,
        collate_fn=collate_batched,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


class Engine:
    """Owns the Accelerator; `fit` trains, `evaluate` measures accuracy."""

    def __init__(self, runtime: RuntimeSpec) -> None:
        self.runtime = runtime
        self.accelerator = make_accelerator(runtime)

    def describe(self) -> str:
        """Where the run happens, e.g. `cpu x 2 processes (MULTI_CPU), fp32`."""
        acc = self.accelerator
        procs = f" x {acc.num_processes} processes" if acc.num_processes > 1 else ""
        return f"{acc.device}{procs} ({acc.distributed_type.value}), {self.runtime.precision}"

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
        if self.runtime.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

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
        acc = self.accelerator
        if self.runtime.channels_last:
            task.to(memory_format=torch.channels_last)
        sampler = train_loader.sampler if isinstance(getattr(train_loader, "sampler", None), EpochShuffle) else None
        samples_per_step = (getattr(train_loader, "batch_size", None) or 0) * acc.num_processes
        ckpt_dir = run_dir / "checkpoints" if run_dir else None
        resume_dir = ckpt_dir / "resume" if ckpt_dir else None
        restored = self._load_resume(resume_dir) if resume and resume_dir else None
        if restored is not None:
            with _not_fitting(restored.path):  # before prepare: the same tensors get wrapped and moved
                task.load_state_dict(restored.prefixed("task"))
        optimizer = build_optimizer(task.trainable_parameters(), spec.optimizer)
        task, optimizer, train_loader = acc.prepare(task, optimizer, train_loader)
        if val_loader is not None:
            val_loader = acc.prepare(val_loader)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        steps_per_epoch = len(train_loader)
        if spec.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, spec.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise TinykdError("the training set is smaller than one batch; lower data.batch_size")
        total_steps = spec.epochs * steps_per_epoch
        shape = {"num_processes": acc.num_processes, "samples_per_step": samples_per_step,
                 "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}  # fmt: skip
        log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None, self.is_main)
        result = FitResult(-1.0, -1, None, None, 0.0, 0.0)
        pos = Position()
        # Sums since the start of training, kept on the device: every step after the first runs the same graph
        # (running + stats), and the host reads them once per interval and subtracts the previous read.
        # `faults` holds, per loss value, the first step at which it was not finite (0: never).
        running: torch.Tensor | None = None
        faults: torch.Tensor | None = None
        names: list[str] = []
        previous: list[float] | None = None
        if restored is not None:
            with _not_fitting(restored.path):
                running, faults, previous, names = self._restore(restored, optimizer, pos, result, shape, ckpt_dir)
            if pos.batches_done and sampler is None:
                raise TinykdError("cannot resume in the middle of an epoch: the training loader has no EpochShuffle")
            log.keep_until(pos.step)
            log.write({"event": "resume", "step": pos.step, "epoch": pos.epoch_done + 1, "from": str(restored.path)})
        elif resume:
            log.keep_until(0)  # killed before its first checkpoint: start again from step 0 in the same folder
        self._step_boundary()  # on XLA: run what set-up left pending, so it is not counted as a training step
        start = time.perf_counter()
        xla_before = self.xla_counts()
        xla_train = {"compilations": 0, "executions": 0}
        skip_nonfinite = spec.nonfinite == "skip"
        seconds_before = pos.seconds  # training time of the run before this process took over

        def checkpoint() -> Path | None:
            if resume_dir is None:
                return None
            if faults is not None and spec.nonfinite == "stop":  # never save a state a non-finite loss has reached
                self._check_faults(self._first_bad(faults), names, steps_per_epoch, resume_dir)
            pos.seconds = seconds_before + time.perf_counter() - start
            return self._save_resume(resume_dir, task, optimizer, running, faults, previous, names, pos, result,
                                     shape, spec.keep_checkpoints)  # fmt: skip

        def stop_here(signal_name: str, epoch: int) -> RunInterrupted:
            saved = checkpoint()
            return RunInterrupted(signal_name, epoch, pos.step, str(saved) if saved else None)

        with StopSignals() as signals, _progress(self.is_main) as bar:
            for epoch in range(pos.epoch_done + 1, spec.epochs + 1):
                task.train()
                skip = pos.batches_done
                if sampler is not None:  # the data order of this epoch, from the position reached in it
                    sampler.epoch, sampler.start = epoch - 1, skip * samples_per_step
                bar_task = bar.add_task(f"epoch {epoch}/{spec.epochs}", total=steps_per_epoch, completed=skip,
                                        stats="")  # fmt: skip
                window_start, window_images, epoch_start = time.perf_counter(), 0, time.perf_counter()
                epoch_xla = self.xla_counts()
                for i, (inputs, targets) in enumerate(train_loader, start=skip):
                    if i >= steps_per_epoch:
                        break
                    lr = lr_at(pos.step, total_steps, steps_per_epoch, spec.optimizer.lr, spec.schedule)
                    running, faults, names, stepped = self._train_step(
                        task, optimizer, params, inputs, targets, lr, spec.grad_clip, running, faults, skip_nonfinite
                    )
                    pos.step, pos.batches_done = pos.step + 1, i + 1
                    pos.images += len(targets) * acc.num_processes
                    window_images += len(targets) * acc.num_processes
                    if not stepped:
                        pos.skipped += 1
                        self._count_skip(pos, epoch, faults, names, spec, resume_dir)
                    stop = signals.received if acc.num_processes == 1 else None
                    if (i + 1) % spec.log_every == 0 or i + 1 == steps_per_epoch:
                        totals = self._read(running)  # the one host sync of the interval
                        record = _interval_means(totals, previous, names)
                        previous = totals
                        now = time.perf_counter()
                        record.update(event="train", epoch=epoch, step=pos.step, lr=lr,
                                      img_per_s=window_images / max(now - window_start, 1e-9))  # fmt: skip
                        if skip_nonfinite:
                            record["skipped"] = pos.skipped
                        window_start, window_images = now, 0
                        if not skip_nonfinite:
                            self._check_faults(self._first_bad(faults), names, steps_per_epoch, resume_dir)
                        log.write(record)
                        bar.update(bar_task, completed=i + 1, stats=_bar_stats(record))
                        if acc.num_processes > 1:
                            stop = self._agree_on_stop(signals.received)
                    else:
                        bar.update(bar_task, completed=i + 1)
                    if stop is not None and i + 1 < steps_per_epoch:
                        raise stop_here(stop, epoch)
                    if spec.checkpoint_every and pos.step % spec.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                        checkpoint()
                if epoch_xla is not None:
                    now_xla = self.xla_counts()
                    for key in xla_train:
                        xla_train[key] += now_xla[key] - epoch_xla[key]  # type: ignore[index]
                record = self._end_epoch(model, val_loader, epoch, pos.step, time.perf_counter() - epoch_start,
                                         spec.epochs, result, ckpt_dir, save)  # fmt: skip
                log.write(record)
                pos.epoch_done, pos.batches_done = epoch, 0
                stop = self._agree_on_stop(signals.received)
                if stop is not None:
                    raise stop_here(stop, epoch)
                checkpoint()
        result.seconds = seconds_before + time.perf_counter() - start
        result.images_per_second = pos.images / max(result.seconds, 1e-9)
        result.skipped_steps = pos.skipped
        if xla_before is not None:
            after = self.xla_counts()
            result.xla = {k: after[k] - xla_before[k] for k in after}  # type: ignore[index]
            result.xla.update({f"train_{k}": v for k, v in xla_train.items()}, train_steps=pos.step)
        if val_loader is None:
            result.best_accuracy = float("nan")
        return result

    def _train_step(
        self,
        task: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list[torch.Tensor],
        inputs: Any,
        targets: torch.Tensor,
        lr: float,
        grad_clip: float | None,
        running: torch.Tensor | None,
        faults: torch.Tensor | None,
        skip_nonfinite: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], bool]:
        """One optimizer step; adds [total, each term..., correct, images, 1, counted] to `running` (no sync).

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
            norm = norm if norm is not None else _grad_norm(params)
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
        stats = torch.cat(
            [values, (logits.detach().argmax(1) == targets).sum().float()[None] * counted,
             torch.full((1,), float(len(targets)), device=device) * counted, torch.ones(1, device=device), counted]
        )  # fmt: skip
        running = stats if running is None else running + stats
        steps = running[-2]  # steps since the start of training, this one included
        fresh = ~finite if faults is None else ~finite & (faults == 0)
        faults = torch.where(fresh, steps, torch.zeros_like(values) if faults is None else faults)
        self._step_boundary()
        return running, faults, list(losses), stepped

    def xla_counts(self) -> dict[str, int] | None:
        """Graphs compiled and executed so far in this process (torch_xla's metrics); None off XLA."""
        if self.device.type != "xla":
            return None
        import torch_xla.core.xla_model as xm
        import torch_xla.debug.metrics as met

        xm.wait_device_ops()  # executions are asynchronous: let the ones started finish before counting

        def samples(name: str) -> int:
            data = met.metric_data(name)
            return int(data[0]) if data else 0

        return {"compilations": samples("CompileTime"), "executions": samples("ExecuteTime")}

    def _step_boundary(self) -> None:
        """On XLA, cut the graph here: one compiled graph per step, executed once, whatever is read later."""
        if self.device.type == "xla":
            import torch_xla

            torch_xla.sync()

    def _end_epoch(
        self,
        model: nn.Module,
        val_loader: DataLoader | None,
        epoch: int,
        step: int,
        seconds: float,
        epochs: int,
        result: FitResult,
        ckpt_dir: Path | None,
        save: Callable[[nn.Module, Path], None] | None,
    ) -> dict[str, Any]:
        """Validate, keep the best and last checkpoints of `model`, and return the epoch's record."""
        acc = self.accelerator
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

    def _first_bad(self, faults: torch.Tensor) -> list[float]:
        """Per loss value, the first step at which any process saw it non-finite (0: never), on the host."""
        if self.accelerator.num_processes > 1:
            every = self.accelerator.gather(faults[None]).float()  # (processes, values)
            faults = torch.where(every > 0, every, torch.full_like(every, math.inf)).amin(0).nan_to_num(posinf=0.0)
        return faults.tolist()

    def _agree_on_stop(self, received: str | None) -> str | None:
        """With several processes, stop only when all agree (at a log point): any one that got a signal decides."""
        if self.accelerator.num_processes == 1:
            return received
        flag = torch.tensor([1.0 if received else 0.0], device=self.device)
        return (received or "SIGTERM") if self.accelerator.reduce(flag, reduction="sum").item() > 0 else None

    def _check_faults(self, first_bad: list[float], names: list[str], steps_per_epoch: int, resume_dir: Path | None
                      ) -> None:  # fmt: skip
        """Stop with the step, the epoch and the term where the loss first stopped being a finite number."""
        hits = [(int(s), name) for s, name in zip(first_bad, ["total", *names], strict=True) if s > 0]
        if not hits:
            return
        step = min(s for s, _ in hits)
        terms = [n for s, n in hits if s == step and n != "total"] or ["total"]
        raise TinykdError(
            f"the loss became nan or inf at epoch {(step - 1) // steps_per_epoch + 1}, step {step} "
            f"(term {', '.join(repr(t) for t in terms)}){_last_good(resume_dir)}; lower train.optimizer.lr, "
            "set train.grad_clip, or set train.nonfinite=skip"
        )

    def _count_skip(self, pos: Position, epoch: int, faults: torch.Tensor, names: list[str], spec: TrainSpec,
                    resume_dir: Path | None) -> None:  # fmt: skip
        """`nonfinite: skip`: warn about the skipped step, and stop once more than `max_skipped_steps` were."""
        first_bad = self._first_bad(faults)
        terms = [n for s, n in zip(first_bad, ["total", *names], strict=True) if s > 0 and n != "total"]
        which = f" (terms that were non-finite so far: {', '.join(terms)})" if terms else " (gradients)"
        if self.is_main:
            say(f"tinykd: step {pos.step} skipped: non-finite loss or gradients{which}; {pos.skipped} skipped so far")
        if pos.skipped > spec.max_skipped_steps:
            raise TinykdError(
                f"{pos.skipped} steps had a non-finite loss or gradients, more than train.max_skipped_steps="
                f"{spec.max_skipped_steps}; the last at epoch {epoch}, step {pos.step}{which}"
                f"{_last_good(resume_dir)}; "
                "lower train.optimizer.lr or set train.grad_clip"
            )

    def _save_resume(
        self,
        root: Path,
        task: nn.Module,
        optimizer: torch.optim.Optimizer,
        running: torch.Tensor | None,
        faults: torch.Tensor | None,
        previous: list[float] | None,
        names: list[str],
        pos: Position,
        result: FitResult,
        shape: dict[str, int],
        keep: int,
    ) -> Path:
        """Everything needed to continue exactly: weights, optimizer, scaler, statistics, position, RNG."""
        acc = self.accelerator
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        if self.is_main:
            tensors = {f"task.{k}": v for k, v in acc.unwrap_model(task).state_dict().items()}
            opt_tensors, meta["optimizer"] = flatten_optimizer(optimizer.state_dict())
            tensors.update(opt_tensors)
            if running is not None and faults is not None:
                tensors.update(running=running, faults=faults)
            scaler = getattr(acc, "scaler", None)
            import tinykd

            meta.update(
                tinykd_version=tinykd.__version__, torch_version=torch.__version__,
                position=asdict(pos), shape=shape, previous=previous, names=names,
                best=[result.best_accuracy, result.best_epoch], history=result.history,
                scaler=scaler.state_dict() if scaler is not None else None,
            )  # fmt: skip
        barrier = acc.wait_for_everyone if acc.num_processes > 1 else (lambda: None)
        return save_checkpoint(root, pos.step, tensors, meta, acc.process_index, self.is_main, barrier, keep)

    def _load_resume(self, root: Path) -> Checkpoint | None:
        """The newest complete resume checkpoint (partial writes are removed), or None for a fresh start."""
        if self.is_main:
            for leftover in remove_partial_writes(root) + remove_partial_writes(root.parent):
                say(f"tinykd: removed {leftover}, a write that was interrupted")
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
        found = load_latest(root, self.accelerator.process_index, lambda m: say(f"tinykd: {m}"))
        if found is None and self.is_main:
            say(f"tinykd: no complete checkpoint in {root}: starting from step 0")
        return found

    def _restore(
        self,
        found: Checkpoint,
        optimizer: torch.optim.Optimizer,
        pos: Position,
        result: FitResult,
        shape: dict[str, int],
        ckpt_dir: Path | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[float] | None, list[str]]:
        """Put a checkpoint's optimizer, scaler, RNG, position and best score back; returns the statistics."""
        meta = found.meta
        saved_shape = meta["shape"]
        changed = [f"{k} {saved_shape.get(k)} -> {v}" for k, v in shape.items() if saved_shape.get(k) != v]
        if changed:
            raise TinykdError(f"cannot resume from {found.path}: the run's shape changed ({'; '.join(changed)}); "
                              "resume with the same batch size, number of processes and epochs")  # fmt: skip
        optimizer.load_state_dict(unflatten_optimizer(found.prefixed("optimizer"), meta["optimizer"]))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        restore_rng(found.rng_tensors, found.rng_meta)
        for key, value in meta["position"].items():
            setattr(pos, key, value)
        result.best_accuracy, result.best_epoch = meta["best"]
        result.history = list(meta["history"])
        if ckpt_dir is not None and result.best_epoch > 0:
            result.best_checkpoint = ckpt_dir / "best.safetensors"
            result.last_checkpoint = ckpt_dir / "last.safetensors"
        running = found.tensors.get("running")
        faults = found.tensors.get("faults")
        if self.is_main:
            where = f"epoch {pos.epoch_done + 1}, step {pos.step}" if pos.step < shape["total_steps"] else \
                f"training had finished at step {pos.step}; making the report"  # fmt: skip
            say(f"tinykd: resuming from {found.path} ({where})")
        return (
            running.to(self.device) if running is not None else None,
            faults.to(self.device) if faults is not None else None,
            meta["previous"],
            list(meta["names"]),
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Top-1 accuracy and mean cross-entropy of `model` on `loader`; padding (label -1) is not counted."""
        acc = self.accelerator
        was_training = model.training
        model.eval()
        sums = torch.zeros(3).to(acc.device)  # a copy to the device, not a graph of its own on XLA
        for inputs, targets in loader:
            with acc.autocast():
                logits = call_model(model, self._to_memory_format(inputs)).float()
            if acc.num_processes > 1:
                logits, targets = acc.gather_for_metrics((logits, targets))
            valid = targets != PadToMultiple.IGNORE
            sums += torch.stack([((logits.argmax(1) == targets) & valid).sum().float(),
                                 F.cross_entropy(logits, targets, ignore_index=PadToMultiple.IGNORE, reduction="sum"),
                                 valid.sum().float()])  # fmt: skip
            self._step_boundary()
        model.train(was_training)
        correct, loss, count = sums.tolist()
        return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1), "count": int(count)}


def _last_good(resume_dir: Path | None) -> str:
    """'; the last good checkpoint is ...' for messages that stop a run, or '' when there is none."""
    last = latest_complete(resume_dir) if resume_dir else None
    return f"; the last good checkpoint is {last}" if last else ""


@contextlib.contextmanager
def _not_fitting(path: Path) -> Iterator[None]:
    """A checkpoint whose content does not fit this run (another model, a hand-edited file): one clear line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TinykdError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {first[:300]})") from None


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients (what clipping would compute), on the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _interval_means(totals: list[float], previous: list[float] | None, names: list[str]) -> dict[str, Any]:
    """Means over the interval between two reads of [total, each term..., correct, images, steps, counted] sums.

    `counted` leaves out the steps skipped for a non-finite loss; a resumed run's sums include the steps before it.
    """
    delta = totals if previous is None else [a - b for a, b in zip(totals, previous, strict=True)]
    *loss_sums, correct, count, _steps, counted = delta
    counted = counted or math.nan  # every step of the interval was skipped: no mean to give
    record: dict[str, Any] = {"loss": loss_sums[0] / counted}
    record.update({f"loss/{name}": value / counted for name, value in zip(names, loss_sums[1:], strict=True)})
    record["accuracy"] = correct / (count or math.nan)
    return record


def _bar_stats(record: dict[str, Any]) -> str:
    return f"loss {record['loss']:.4f}  acc {record['accuracy']:.2%}  {record['img_per_s']:,.0f} img/s"


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"), console=console, disable=not enabled, transient=False,
    )  # fmt: skip
