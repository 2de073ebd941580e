"""Experiment trackers (`runtime.log_with`): TensorBoard, Weights & Biases, MLflow, ... through Accelerate's tracker
classes, fed the same scalars as `metrics.jsonl`, from the main process only.

Why Accelerate's classes and not `Accelerator(log_with=...)`: tinykd keeps one Accelerator per process and device
configuration across runs, while trackers belong to one run folder; the classes are the same either way.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from tinykd.errors import TinykdError

# tracker name -> (module that must import, what to pip install)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
}


def check_trackers(names: list[str]) -> None:
    """One line, before any training, for a tracker that is asked for but not installed."""
    for name in names:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise TinykdError(f"runtime.log_with: {name} is not installed: pip install {package} (or "
                              "'tinykd[trackers]' for TensorBoard)")  # fmt: skip


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as tracker scalars: training records under `train/` (`train/loss/kd`), the epoch's
    validation as `val/accuracy` and `val/loss`, the learning rate and throughput as they are."""
    event = record.get("event")
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("event", "epoch", "step") or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        if event == "train":
            name = key if key in ("lr", "samples_per_s") else f"train/{key}"
        elif event == "epoch" and key.startswith("val_"):
            name = f"val/{key[4:]}"
        elif event == "epoch":
            name = f"epoch/{key}"
        else:
            continue
        out[name] = float(value)
    return out


class Trackers:
    """The run's trackers: opened once per fit (after a resume, TensorBoard drops the events past the checkpoint)."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict[str, Any] | None = None,
                 resume_step: int = 0) -> None:  # fmt: skip
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        check_trackers(names)
        self.trackers = []
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            kwargs: dict[str, Any] = {}
            if getattr(cls, "requires_logging_directory", False):
                kwargs["logging_dir"] = str(run_dir / "trackers")
            if name == "tensorboard" and resume_step:
                kwargs["purge_step"] = resume_step + 1  # the steps after the checkpoint are made again
            tracker = cls(run_name, **kwargs)
            tracker.start()
            if config and resume_step == 0:
                try:
                    tracker.store_init_configuration(config)
                except (TypeError, ValueError):  # a tracker that refuses nested values: the recipe is in the run folder
                    pass
            self.trackers.append(tracker)

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values and "step" in record:
            for tracker in self.trackers:
                tracker.log(values, step=int(record["step"]))

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as `train.optimizer.lr: 0.1`: what trackers take as hyperparameters (lists as text)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return out
