"""User-facing errors.

A `TinykdError` is a mistake in what the user asked for (a recipe, a name, a
file). The CLI prints its message on one line and exits with code 2; every
other exception is a bug in tinykd and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TinykdError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""

    exit_code = 2


class RunInterrupted(TinykdError):
    """A run stopped on SIGINT or SIGTERM at a step boundary, after saving a checkpoint it can resume from.

    The exit code is the shell's for the signal (130, 143), so scripts and schedulers see a stop, not a crash.
    """

    def __init__(self, signal_name: str, epoch: int, step: int, checkpoint: str | None) -> None:
        self.signal_name, self.epoch, self.step, self.checkpoint = signal_name, epoch, step, checkpoint
        self.exit_code = {"SIGINT": 130, "SIGTERM": 143}.get(signal_name, 1)
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "nothing saved (the run has no folder)"
        super().__init__(f"stopped on {signal_name} at epoch {epoch}, step {step}; {saved}")


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return ' (did you mean: a, b?)' for names near `name`, or ''."""
    found = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""
