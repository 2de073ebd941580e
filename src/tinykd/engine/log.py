"""What a run tells its user while it trains: one-line messages, `metrics.jsonl`, and the progress bar."""

from __future__ import annotations

import json
import math
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


def bar_stats(record: dict[str, Any]) -> str:
    return f"loss {record['loss']:.4f}  acc {record['accuracy']:.2%}  {record['img_per_s']:,.0f} img/s"


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"), console=console, disable=not enabled, transient=False,
    )  # fmt: skip
