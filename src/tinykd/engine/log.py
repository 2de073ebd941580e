"""What a run tells its user while it trains: one-line messages, `metrics.jsonl`, and the progress bar."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def say(message: str) -> None:
    """One line on stderr, as written: no wrapping at 80 columns in logs, no markup read into paths."""
    console.print(message, soft_wrap=True, markup=False, highlight=False)


class MetricsLog:
    """Append-only JSON lines (`metrics.jsonl`), written by the main process only, and copied to the run's
    trackers (`runtime.log_with`) once they are opened; as a context manager it closes them."""

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path = path if enabled else None
        self.trackers: Any = None

    def open_trackers(self, names: list[str], run_name: str, config: dict[str, Any], resume_step: int) -> None:
        if self.path is not None and names:
            from tinykd.engine.trackers import Trackers

            self.trackers = Trackers(names, self.path.parent, run_name, config, resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.trackers is not None:
            self.trackers.finish()
            self.trackers = None

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


def interval_means(totals: list[float], previous: list[float] | None, names: list[str]) -> dict[str, Any]:
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


def bar_stats(record: dict[str, Any], eta_seconds: float | None = None) -> str:
    eta = f"  run ETA {duration(eta_seconds)}" if eta_seconds is not None and math.isfinite(eta_seconds) else ""
    acc = f"  acc {record['accuracy']:.2%}" if math.isfinite(record["accuracy"]) else ""  # none: a task without
    return f"loss {record['loss']:.4f}{acc}  {record['samples_per_s']:,.0f} samples/s{eta}"  # one label a sample


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Clock:
    """Wall seconds per named section (`with clock("teacher forward"): ...`), for the end-of-run line that says
    where the time went. On a GPU each section is closed by `sync` (the device finishes its queued kernels), or an
    asynchronous kernel would be counted in whatever section next waits for it; a disabled clock costs nothing."""

    def __init__(self, sync: Any = None, enabled: bool = True) -> None:
        self.sync, self.enabled = sync, enabled
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Any:
        if not self.enabled:
            yield
            return
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        if self.enabled:
            self.totals[name] = self.totals.get(name, 0.0) + seconds


NO_CLOCK = Clock(enabled=False)


def time_breakdown(clock: Clock, total: float) -> dict[str, float]:
    """The fit's seconds by what they were spent on: the step's time without the teacher's forward is the
    student's forward, backward and optimizer step; what no section counted (logging, the bar) is `other`."""
    t = clock.totals
    teacher = t.get("teacher forward", 0.0)
    parts = {"teacher forward": teacher, "student forward/backward": max(t.get("step", 0.0) - teacher, 0.0),
             "data": t.get("data", 0.0), "evaluation": t.get("evaluation", 0.0),
             "checkpoints": t.get("checkpoints", 0.0)}  # fmt: skip
    parts["other"] = max(total - sum(parts.values()), 0.0)
    return {k: round(v, 3) for k, v in parts.items()}


def describe_breakdown(parts: dict[str, float]) -> str:
    total = sum(parts.values()) or 1.0
    return "time: " + ", ".join(f"{name} {seconds:.1f} s ({seconds / total:.0%})" for name, seconds in parts.items()
                                if seconds >= 0.05 or name != "other")  # fmt: skip


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"), console=console, disable=not enabled, transient=False,
    )  # fmt: skip
