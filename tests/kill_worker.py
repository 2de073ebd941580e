"""Run `tinykd` in this process and kill it at a chosen point: the crash half of the resume tests.

    python tests/kill_worker.py KILL -- tinykd arguments...

KILL is one of:
    step:N          SIGKILL right after training step N (in the middle of an epoch, or wherever N falls)
    write:N         SIGKILL in the middle of the N-th file of a resume checkpoint (half of it written)
    weights:N       SIGKILL in the middle of the N-th write of best/last.safetensors (half of it written)
    signal:N:NAME   send SIGINT or SIGTERM to itself after step N (the graceful stop)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import tinykd.engine.state as state
import tinykd.models.checkpoint as checkpoint
from tinykd.cli import main
from tinykd.engine.engine import Engine


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _half_written(real: Any, count: list[int], at: int) -> Any:
    """Wrap a safetensors writer: on call `at`, leave half of the bytes in the file, then die."""

    def write(tensors: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        real(tensors, path, *args, **kwargs)
        if count[0] == at:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            _die()

    return write


def install(kill: str) -> None:
    kind, n, *rest = kill.split(":")
    at, count = int(n), [0]
    if kind in ("step", "signal"):
        real_step = Engine._train_step

        def step(self: Engine, *args: Any, **kwargs: Any) -> Any:
            out = real_step(self, *args, **kwargs)
            count[0] += 1
            if count[0] == at:
                if kind == "step":
                    _die()
                os.kill(os.getpid(), getattr(signal, rest[0]))
            return out

        Engine._train_step = step  # type: ignore[method-assign]
    elif kind == "write":
        state.write_tensors = _half_written(state.write_tensors, count, at)
    elif kind == "weights":  # save_model's own write (the resume checkpoint's writes are patched above)
        checkpoint.write_tensors = _half_written(checkpoint.write_tensors, count, at)
    else:
        raise SystemExit(f"unknown kill point {kill}")


if __name__ == "__main__":
    install(sys.argv[1])
    main(sys.argv[3:])
