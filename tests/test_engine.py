"""The engine: schedules, a real (small) training run, determinism, metrics, numerical faults."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tinykd
from tinykd.engine import lr_at
from tinykd.errors import TinykdError
from tinykd.losses import LossTerm, register_loss
from tinykd.recipes.schema import ScheduleSpec

DIGITS = {
    "name": "digits-test",
    "data": {"name": "digits", "batch_size": 64, "val_size": 0.15},
    "student": {"name": "cnn_small"},
    "train": {"epochs": 4, "log_every": 5, "optimizer": {"lr": 0.05}},
    "measure": {"latency_repeats": 20, "throughput_batch": 8},
}


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "onecycle"])
def test_schedules_start_warm_and_end_where_asked(name: str) -> None:
    spec = ScheduleSpec(name=name, warmup_epochs=1, milestones=[3], min_lr_ratio=0.01)
    lrs = [lr_at(s, 400, 100, 0.1, spec) for s in range(400)]
    assert lrs[0] == pytest.approx(0.001) and lrs[99] == pytest.approx(0.1)  # linear warm-up over one epoch
    assert max(lrs) <= 0.1 + 1e-12
    final = {"constant": 0.1, "step": 0.01, "cosine": 0.001, "onecycle": 0.001}[name]
    assert lrs[-1] == pytest.approx(final, rel=0.05)


def test_onecycle_peaks_after_pct_start() -> None:
    spec = ScheduleSpec(name="onecycle", pct_start=0.3)
    lrs = [lr_at(s, 1000, 100, 1.0, spec) for s in range(1000)]
    assert lrs[0] == pytest.approx(0.04) and max(range(1000), key=lrs.__getitem__) == 300


def test_training_learns_and_writes_its_run_folder(tmp_path: Path) -> None:
    result = tinykd.run(DIGITS, out=tmp_path / "run", mode="train")
    folder = result.run_dir
    assert {p.name for p in folder.iterdir()} >= {"recipe.yaml", "metrics.jsonl", "checkpoints", "report.json",
                                                  "report.md"}  # fmt: skip
    assert (folder / "checkpoints" / "best.safetensors").is_file()
    assert (folder / "checkpoints" / "last.safetensors").is_file()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 4 and all("val_accuracy" in r for r in epochs)
    assert {"loss", "loss/ce", "accuracy", "lr", "samples_per_s", "step"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"]
    student = result.metrics["models"][0]
    assert student["test_accuracy"] > 0.85, student
    assert student["params"] == sum(p.numel() for p in tinykd.create_model("cnn_small", in_channels=1).parameters())
    assert student["size_bytes"] > 4 * student["params"] and student["macs"] > 0 and student["latency_ms_p50"] > 0
    # the checkpoint holds the student alone
    state = load_file(str(folder / "checkpoints" / "best.safetensors"))
    assert set(state) == set(tinykd.create_model("cnn_small", num_classes=10, in_channels=1).state_dict())


def test_a_finished_run_leaves_no_model_or_optimizer_alive(tmp_path: Path) -> None:
    """Accelerate keeps what it prepares; a process that trains several times (a notebook, a sweep, a
    multi-process job at exit, where DDP holds the process group) must not keep every run's models."""
    quick = {**DIGITS, "train": {"epochs": 1, "max_steps_per_epoch": 3}, "measure": {"enabled": False}}

    def alive() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer | torch.nn.Module)}

    before = alive()
    for i in range(2):
        tinykd.run(quick, out=tmp_path / str(i))
    assert not alive() - before


def test_an_mlp_is_sized_for_the_data_and_a_model_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    quick = {**DIGITS, "train": {"epochs": 1, "max_steps_per_epoch": 3}, "measure": {"enabled": False}}
    mlp = {"name": "mlp", "kwargs": {"hidden": [16]}}
    result = tinykd.run({**quick, "student": mlp}, out=tmp_path / "sized")  # 8x8 digits, mlp's default is 28
    state = load_file(str(result.run_dir / "checkpoints" / "last.safetensors"))
    assert sorted(tuple(v.shape) for v in state.values() if v.ndim == 2) == [(10, 16), (16, 64)]
    from tinykd.loading import load_model  # export, eval and compare rebuild it the same way

    assert load_model(str(result.run_dir)).model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    wrong = {"name": "mlp", "kwargs": {"hidden": [16], "image_size": 28}}
    with pytest.raises(TinykdError, match=r"the student cannot run on a batch of the data \(images of shape "
                                          r"\(\d+, 1, 8, 8\)\): mat1 and mat2"):  # fmt: skip
        tinykd.run({**quick, "student": wrong}, out=tmp_path / "wrong")


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    quick = {**DIGITS, "train": {"epochs": 1, "max_steps_per_epoch": 6}, "measure": {"enabled": False}}
    runs = [tinykd.run({**quick, "seed": seed}, out=tmp_path / str(i)) for i, seed in enumerate((3, 3, 4))]
    weights = [load_file(str(r.run_dir / "checkpoints" / "last.safetensors")) for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@register_loss("nan_after_three", override=True)
class NanAfterThree(LossTerm):
    needs_teacher = False

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, student, teacher, targets):
        self.calls += 1
        return student.logits.sum() * (math.nan if self.calls > 3 else 0.0)


def test_a_nan_loss_stops_the_run_naming_the_term(tmp_path: Path) -> None:
    bad = {**DIGITS, "loss_terms": {"ce": {}, "boom": {"type": "nan_after_three"}},
           "train": {"epochs": 1, "log_every": 2}, "measure": {"enabled": False}}  # fmt: skip
    with pytest.raises(TinykdError, match=r"loss became nan or inf at epoch 1, step 4 \(term 'boom'\)"):
        tinykd.run(bad, out=tmp_path / "nan")


def test_run_folder_is_never_overwritten_silently(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    quick = {**DIGITS, "train": {"epochs": 1, "max_steps_per_epoch": 2}, "measure": {"enabled": False}}
    with pytest.raises(TinykdError, match="already exists and is not empty"):
        tinykd.run(quick, out=folder)
    assert (folder / "precious.txt").read_text() == "keep me"
    tinykd.run(quick, out=folder, overwrite=True)
    assert not (folder / "precious.txt").exists()


def test_bad_input_never_costs_an_existing_folder_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    broken = {**DIGITS, "student": {"name": "cnn_small", "checkpoint": str(tmp_path / "missing.safetensors")}}
    with pytest.raises(TinykdError, match="does not exist"):
        tinykd.run(broken, out=folder, overwrite=True)
    assert (folder / "precious.txt").read_text() == "keep me"
    result = tinykd.run(DIGITS, out=tmp_path / "new", dry_run=True)
    assert result.metrics["dry_run"] and not (tmp_path / "new").exists()
    with pytest.raises(TinykdError, match="already exists"):
        tinykd.run(DIGITS, out=folder, dry_run=True)


def test_distillation_with_a_bf16_teacher_reports_the_fp32_teacher(tmp_path: Path) -> None:
    from tinykd.models.checkpoint import save_model

    teacher = tmp_path / "t.safetensors"
    save_model(tinykd.create_model("resnet8", num_classes=10, in_channels=1), teacher, {"model": "resnet8"})
    recipe = {**DIGITS, "teacher": {"name": "resnet8", "checkpoint": str(teacher), "precision": "bf16"},
              "loss_terms": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}},
              "train": {"epochs": 1, "max_steps_per_epoch": 3}}  # fmt: skip
    result = tinykd.run(recipe, out=tmp_path / "run", mode="distill")
    teacher_row, student_row = result.metrics["models"]
    assert teacher_row["role"] == "teacher" and teacher_row["size_bytes"] > 4 * teacher_row["params"]
    assert student_row["role"] == "student" and 0 <= student_row["test_accuracy"] <= 1
