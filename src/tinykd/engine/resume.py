"""What `Engine.fit` saves in a resume checkpoint and puts back from one (the file format is in `state.py`).

A run continues exactly where it stopped when everything that shapes the next step comes back: the trained
module, the optimizer and the loss scaler, the running statistics and fault steps kept on the device, the
position in the data, the best score and history, and every random generator of every process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tinykd.engine.log import say
from tinykd.engine.state import (
    Checkpoint,
    flatten_optimizer,
    load_latest,
    remove_partial_writes,
    restore_rng,
    save_checkpoint,
    unflatten_optimizer,
)
from tinykd.errors import TinykdError
from tinykd.version import __version__

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class FitResult:
    """What `fit` returns: the best validation accuracy, where the checkpoints are, and the history."""

    best_accuracy: float
    best_epoch: int
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    seconds: float
    samples_per_second: float  # images or texts: training samples of every process per second
    history: list[dict[str, Any]] = field(default_factory=list)
    xla: dict[str, int] | None = None  # compilations and graph executions during fit, on an XLA device
    skipped_steps: int = 0  # steps not applied because of a non-finite loss (train.nonfinite: skip)
    time_breakdown: dict[str, float] | None = None  # seconds of this session by part (runtime.time_breakdown)


@dataclass
class Position:
    """Where training is: what a resume checkpoint needs beyond tensors to continue at the same step."""

    step: int = 0  # optimizer steps taken (skipped ones included): the schedule's clock
    epoch_done: int = 0  # epochs finished, validation included
    batches_done: int = 0  # batches of the next epoch already trained on
    samples: int = 0  # training samples seen, of every process (older state files call it `images`)
    seconds: float = 0.0
    skipped: int = 0


@dataclass
class Tally:
    """Sums since the start of training, kept on the device and read by the host once per log interval.

    Every step after the first runs the same graph (running + stats), and the host subtracts its previous read.
    """

    running: torch.Tensor | None = None  # [total, each term..., correct, images, steps, counted]
    faults: torch.Tensor | None = None  # per loss value, the first step at which it was not finite (0: never)
    names: list[str] = field(default_factory=list)  # the loss terms, in the order of `running`
    previous: list[float] | None = None  # the host's last read of `running`


def save_resume(acc: Accelerator, root: Path, learner: nn.Module, optimizer: torch.optim.Optimizer, tally: Tally,
                pos: Position, result: FitResult, shape: dict[str, int], keep: int) -> Path:  # fmt: skip
    """Everything needed to continue exactly: weights, optimizer, scaler, statistics, position, RNG."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    if acc.is_main_process:
        # `task.`: the learner's prefix in the file since the first format (resume reads it back as is)
        tensors = {f"task.{k}": v for k, v in acc.unwrap_model(learner).state_dict().items()}
        opt_tensors, meta["optimizer"] = flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        if tally.running is not None and tally.faults is not None:
            tensors.update(running=tally.running, faults=tally.faults)
        scaler = getattr(acc, "scaler", None)
        meta.update(
            tinykd_version=__version__, torch_version=torch.__version__,
            position=asdict(pos), shape=shape, previous=tally.previous, names=tally.names,
            best=[result.best_accuracy, result.best_epoch], history=result.history,
            scaler=scaler.state_dict() if scaler is not None else None,
        )  # fmt: skip
    barrier = acc.wait_for_everyone if acc.num_processes > 1 else (lambda: None)
    return save_checkpoint(root, pos.step, tensors, meta, acc.process_index, acc.is_main_process, barrier, keep)


def load_resume(acc: Accelerator, root: Path) -> Checkpoint | None:
    """The newest complete resume checkpoint (partial writes are removed), or None for a fresh start."""
    if acc.is_main_process:
        for leftover in remove_partial_writes(root) + remove_partial_writes(root.parent):
            say(f"tinykd: removed {leftover}, a write that was interrupted")
    if acc.num_processes > 1:
        acc.wait_for_everyone()
    found = load_latest(root, acc.process_index, lambda m: say(f"tinykd: {m}"))
    if found is None and acc.is_main_process:
        say(f"tinykd: no complete checkpoint in {root}: starting from step 0")
    return found


def restore(acc: Accelerator, found: Checkpoint, optimizer: torch.optim.Optimizer, tally: Tally, pos: Position,
            result: FitResult, shape: dict[str, int], ckpt_dir: Path | None) -> None:  # fmt: skip
    """Put a checkpoint's optimizer, scaler, RNG, statistics, position and best score back."""
    meta = found.meta
    saved_shape = meta["shape"]
    changed = [f"{k} {saved_shape.get(k)} -> {v}" for k, v in shape.items() if saved_shape.get(k) != v]
    if changed:
        raise TinykdError(f"cannot resume from {found.path}: the run's shape changed ({'; '.join(changed)}); "
                          "resume with the same batch size, number of processes and epochs")  # fmt: skip
    optimizer.load_state_dict(unflatten_optimizer(found.prefixed("optimizer"), meta["optimizer"]))
    scaler = getattr(acc, "scaler", None)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    restore_rng(found.rng_tensors, found.rng_meta)
    for key, value in meta["position"].items():
        setattr(pos, "samples" if key == "images" else key, value)  # `images`: a state file of an older tinykd
    result.best_accuracy, result.best_epoch = meta["best"]
    result.history = list(meta["history"])
    if ckpt_dir is not None and result.best_epoch > 0:
        result.best_checkpoint = ckpt_dir / "best.safetensors"
        result.last_checkpoint = ckpt_dir / "last.safetensors"
    running, faults = found.tensors.get("running"), found.tensors.get("faults")
    tally.running = running.to(acc.device) if running is not None else None
    tally.faults = faults.to(acc.device) if faults is not None else None
    tally.previous, tally.names = meta["previous"], list(meta["names"])
    if acc.is_main_process:
        where = f"epoch {pos.epoch_done + 1}, step {pos.step}" if pos.step < shape["total_steps"] else \
            f"training had finished at step {pos.step}; making the report"  # fmt: skip
        say(f"tinykd: resuming from {found.path} ({where})")


@contextlib.contextmanager
def not_fitting(path: Path) -> Iterator[None]:
    """A checkpoint whose content does not fit this run (another model, a hand-edited file): one clear line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TinykdError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {first[:300]})") from None
