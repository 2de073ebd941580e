"""What can go wrong while training, found on the device and reported in one line.

- a loss or gradient that stops being a finite number: `train.nonfinite: stop` names the epoch, the exact
  step and the term; `skip` leaves the step out and stops past `train.max_skipped_steps`;
- SIGINT and SIGTERM: the loop stops at the next step boundary, after a checkpoint, instead of dying mid-step.

The first non-finite step of each loss value is tracked on the device by the training step (no host sync per
step); these functions read it when the loop asks.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tinykd.engine.log import say
from tinykd.engine.state import latest_complete
from tinykd.errors import TinykdError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from tinykd.recipes.schema import TrainSpec


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


def agree_on_stop(acc: Accelerator, received: str | None) -> str | None:
    """With several processes, stop only when all agree (at a log point): any one that got a signal decides."""
    if acc.num_processes == 1:
        return received
    flag = torch.tensor([1.0 if received else 0.0], device=acc.device)
    return (received or "SIGTERM") if acc.reduce(flag, reduction="sum").item() > 0 else None


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients (what clipping would compute), on the device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def first_bad(acc: Accelerator, faults: torch.Tensor) -> list[float]:
    """Per loss value, the first step at which any process saw it non-finite (0: never), on the host."""
    if acc.num_processes > 1:
        every = acc.gather(faults[None]).float()  # (processes, values)
        faults = torch.where(every > 0, every, torch.full_like(every, math.inf)).amin(0).nan_to_num(posinf=0.0)
    return faults.tolist()


def check_faults(first: list[float], names: list[str], steps_per_epoch: int, resume_dir: Path | None) -> None:
    """Stop with the step, the epoch and the term where the loss first stopped being a finite number."""
    hits = [(int(s), name) for s, name in zip(first, ["total", *names], strict=True) if s > 0]
    if not hits:
        return
    step = min(s for s, _ in hits)
    terms = [n for s, n in hits if s == step and n != "total"] or ["total"]
    raise TinykdError(
        f"the loss became nan or inf at epoch {(step - 1) // steps_per_epoch + 1}, step {step} "
        f"(term {', '.join(repr(t) for t in terms)}){last_good(resume_dir)}; lower train.optimizer.lr, "
        "set train.grad_clip, or set train.nonfinite=skip"
    )


def count_skip(acc: Accelerator, skipped: int, step: int, epoch: int, faults: torch.Tensor, names: list[str],
               spec: TrainSpec, resume_dir: Path | None) -> None:  # fmt: skip
    """`nonfinite: skip`: warn about the skipped step, and stop once more than `max_skipped_steps` were."""
    first = first_bad(acc, faults)
    terms = [n for s, n in zip(first, ["total", *names], strict=True) if s > 0 and n != "total"]
    which = f" (terms that were non-finite so far: {', '.join(terms)})" if terms else " (gradients)"
    if acc.is_main_process:
        say(f"tinykd: step {step} skipped: non-finite loss or gradients{which}; {skipped} skipped so far")
    if skipped > spec.max_skipped_steps:
        raise TinykdError(
            f"{skipped} steps had a non-finite loss or gradients, more than train.max_skipped_steps="
            f"{spec.max_skipped_steps}; the last at epoch {epoch}, step {step}{which}{last_good(resume_dir)}; "
            "lower train.optimizer.lr or set train.grad_clip"
        )


def last_good(resume_dir: Path | None) -> str:
    """'; the last good checkpoint is ...' for messages that stop a run, or '' when there is none."""
    last = latest_complete(resume_dir) if resume_dir else None
    return f"; the last good checkpoint is {last}" if last else ""
