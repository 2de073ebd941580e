"""The training engine: one readable loop on top of Hugging Face Accelerate.

It trains any `task` module whose `forward(inputs, targets)` returns
`(logits, {name: loss})` and that offers `trainable_parameters()`; it checkpoints
and evaluates `model`, the module that will be kept. It does not know what
distillation is, and nothing here names a device: Accelerate places the work.
Per-step values stay on the device and are read once per `log_every` steps, so
the loop has no host sync per step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from tinykd.errors import TinykdError
from tinykd.recipes.schema import RuntimeSpec, TrainSpec

console = Console(stderr=True)


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


class MetricsLog:
    """Append-only JSON lines (`metrics.jsonl`), written by the main process only."""

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path = path if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class EpochShuffle(Sampler[int]):
    """A new permutation each epoch from (seed, epoch) alone: the same order on every device and process.

    torch's RandomSampler draws from a generator that Accelerate re-seeds or synchronises differently per
    backend (the CPU and XLA paths gave different orders for one seed); this sampler has no hidden state but
    `epoch`, which a resumed run can set.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        self.epoch += 1
        return iter(order.tolist())


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
    ) -> FitResult:
        """Train `task` for `spec.epochs`; evaluate and checkpoint `model` after each epoch."""
        acc = self.accelerator
        if self.runtime.channels_last:
            task.to(memory_format=torch.channels_last)
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
        ckpt_dir = run_dir / "checkpoints" if run_dir else None
        log = MetricsLog(run_dir / "metrics.jsonl" if run_dir else None, self.is_main)
        result = FitResult(-1.0, -1, None, None, 0.0, 0.0)
        self._step_boundary()  # on XLA: run what set-up left pending, so it is not counted as a training step
        step, images, start = 0, 0, time.perf_counter()
        # Sums since the start of fit, kept on the device: every step after the first runs the same graph
        # (running + stats), and the host reads them once per interval and subtracts the previous read.
        running: torch.Tensor | None = None
        names: list[str] = []
        previous: list[float] | None = None
        xla_before = self.xla_counts()
        xla_train = {"compilations": 0, "executions": 0}
        with _progress(self.is_main) as bar:
            for epoch in range(1, spec.epochs + 1):
                task.train()
                bar_task = bar.add_task(f"epoch {epoch}/{spec.epochs}", total=steps_per_epoch, stats="")
                window_start, window_images, epoch_start = time.perf_counter(), 0, time.perf_counter()
                epoch_xla = self.xla_counts()
                for i, (inputs, targets) in enumerate(train_loader):
                    if i >= steps_per_epoch:
                        break
                    lr = lr_at(step, total_steps, steps_per_epoch, spec.optimizer.lr, spec.schedule)
                    running, names = self._train_step(task, optimizer, params, inputs, targets, lr, spec.grad_clip,
                                                      running)  # fmt: skip
                    step += 1
                    window_images += len(targets) * acc.num_processes
                    if (i + 1) % spec.log_every == 0 or i + 1 == steps_per_epoch:
                        totals = self._read(running)  # the one host sync of the interval
                        record = _interval_means(totals, previous, names)
                        previous = totals
                        now = time.perf_counter()
                        record.update(event="train", epoch=epoch, step=step, lr=lr,
                                      img_per_s=window_images / max(now - window_start, 1e-9))  # fmt: skip
                        images += window_images
                        window_start, window_images = now, 0
                        self._check_finite(record, epoch, step)
                        log.write(record)
                        bar.update(bar_task, completed=i + 1, stats=_bar_stats(record))
                    else:
                        bar.update(bar_task, completed=i + 1)
                if epoch_xla is not None:
                    now_xla = self.xla_counts()
                    for key in xla_train:
                        xla_train[key] += now_xla[key] - epoch_xla[key]  # type: ignore[index]
                record = self._end_epoch(model, val_loader, epoch, step, time.perf_counter() - epoch_start,
                                         spec.epochs, result, ckpt_dir, save)  # fmt: skip
                log.write(record)
        result.seconds = time.perf_counter() - start
        result.images_per_second = images / max(result.seconds, 1e-9)
        if xla_before is not None:
            after = self.xla_counts()
            result.xla = {k: after[k] - xla_before[k] for k in after}  # type: ignore[index]
            result.xla.update({f"train_{k}": v for k, v in xla_train.items()}, train_steps=step)
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
    ) -> tuple[torch.Tensor, list[str]]:
        """One optimizer step; adds [total, each term..., correct, images, 1] to `running` on the device (no sync).

        The addition happens before the graph cut, so that on XLA the whole step is one graph, executed once.
        """
        acc = self.accelerator
        for group in optimizer.param_groups:
            group["lr"] = lr
        with acc.autocast():
            logits, losses = task(self._to_memory_format(inputs), targets)
        loss = torch.stack([v.float() for v in losses.values()]).sum()
        acc.backward(loss)
        if grad_clip:
            acc.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        device = loss.device
        stats = torch.stack(
            [loss.detach(), *(v.detach().float() for v in losses.values()),
             (logits.detach().argmax(1) == targets).sum().float(),
             torch.full((), float(len(targets)), device=device), torch.ones((), device=device)]
        )  # fmt: skip
        running = stats if running is None else running + stats
        self._step_boundary()
        return running, list(losses)

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
        """The running sums, summed over processes, on the host."""
        if self.accelerator.num_processes > 1:
            running = self.accelerator.reduce(running, reduction="sum")
        return running.tolist()

    @staticmethod
    def _check_finite(record: dict[str, Any], epoch: int, step: int) -> None:
        bad = [k for k, v in record.items() if isinstance(v, float) and k.startswith("loss") and not math.isfinite(v)]
        if bad:
            term = next((k for k in bad if k != "loss"), "loss")
            raise TinykdError(f"the loss became {record[bad[0]]} at epoch {epoch}, step {step} (term '{term}'); "
                              "lower train.optimizer.lr or set train.grad_clip")  # fmt: skip

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


def _interval_means(totals: list[float], previous: list[float] | None, names: list[str]) -> dict[str, Any]:
    """Means over the interval between two reads of [total, each term..., correct, images, steps] sums."""
    delta = totals if previous is None else [a - b for a, b in zip(totals, previous, strict=True)]
    *loss_sums, correct, count, steps = delta
    record: dict[str, Any] = {"loss": loss_sums[0] / steps}
    record.update({f"loss/{name}": value / steps for name, value in zip(names, loss_sums[1:], strict=True)})
    record["accuracy"] = correct / count
    return record


def _bar_stats(record: dict[str, Any]) -> str:
    return f"loss {record['loss']:.4f}  acc {record['accuracy']:.2%}  {record['img_per_s']:,.0f} img/s"


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"), console=console, disable=not enabled, transient=False,
    )  # fmt: skip
