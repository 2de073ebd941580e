"""Experiment trackers (`runtime.log_with`): a digits distillation's scalars reach TensorBoard, read back with
TensorBoard's own event reader; a tracker that is not installed is one line naming the package. And the run's
time breakdown (teacher forward, student, data, evaluation), measured by the engine's clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tinykd import create_model
from tinykd.engine.trackers import scalars
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import save_model
from tinykd.recipes import load_recipe
from tinykd.run import run


def _recipe(tmp_path: Path, log_with: list[str]) -> dict[str, Any]:
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_model(create_model("cnn_tiny", num_classes=10, in_channels=1), teacher, {"model": "cnn_tiny"})
    return {
        "name": "tracked", "seed": 0,
        "data": {"name": "digits", "batch_size": 32, "val_size": 0.15},
        "teacher": {"name": "cnn_tiny", "checkpoint": str(teacher)},
        "student": {"name": "mlp", "kwargs": {"image_size": 8, "hidden": [32]}},
        "loss_terms": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 4.0}},
        "train": {"epochs": 2, "max_steps_per_epoch": 6, "log_every": 2},
        "runtime": {"threads": 1, "log_with": log_with}, "measure": {"enabled": False},
    }  # fmt: skip


def test_a_run_logs_its_per_term_losses_and_validation_accuracy_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(load_recipe(_recipe(tmp_path, ["tensorboard"])), tmp_path / "run", mode="distill")
    events = list((result.run_dir / "trackers").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run folder"
    reader = EventAccumulator(str(events[0].parent))
    reader.Reload()
    tags = set(reader.Tags()["scalars"])
    assert {"train/loss", "train/loss/ce", "train/loss/kd", "train/accuracy", "lr", "val/accuracy"} <= tags
    val = [e.value for e in reader.Scalars("val/accuracy")]
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    wanted = [r["val_accuracy"] for r in records if r.get("event") == "epoch"]
    assert val == pytest.approx(wanted) and len(val) == 2  # the same numbers as metrics.jsonl, one per epoch
    assert [e.step for e in reader.Scalars("train/loss/kd")] == [2, 4, 6, 8, 10, 12]

    parts = result.metrics["time_breakdown"]  # measured, and adding up to the training time
    assert set(parts) == {"teacher forward", "student forward/backward", "data", "evaluation", "checkpoints", "other"}
    assert parts["teacher forward"] > 0 and parts["student forward/backward"] > 0 and parts["evaluation"] > 0
    assert sum(parts.values()) == pytest.approx(result.metrics["train_seconds"], rel=0.05, abs=0.05)
    assert "- time: teacher forward" in (result.run_dir / "report.md").read_text()


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TinykdError) as exc:
        run(load_recipe(_recipe(tmp_path, ["wandb"])), tmp_path / "run", mode="distill")
    assert "pip install wandb" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(TinykdError, match="log_with"):
        load_recipe(_recipe(tmp_path, ["not-a-tracker"]))


def test_records_become_scalars_by_event() -> None:
    train = {"event": "train", "epoch": 1, "step": 50, "loss": 1.5, "loss/kd": 1.0, "accuracy": 0.5, "lr": 0.1,
             "samples_per_s": 900.0, "skipped": 0}  # fmt: skip
    assert scalars(train) == {"train/loss": 1.5, "train/loss/kd": 1.0, "train/accuracy": 0.5, "lr": 0.1,
                              "samples_per_s": 900.0, "train/skipped": 0.0}  # fmt: skip
    epoch = {"event": "epoch", "epoch": 1, "step": 60, "seconds": 3.0, "val_accuracy": 0.9, "val_loss": float("nan")}
    assert scalars(epoch) == {"epoch/seconds": 3.0, "val/accuracy": 0.9}  # a NaN is left out
    assert scalars({"event": "resume", "step": 10, "from": "x"}) == {}
