"""The command line: whole runs end to end, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tinykd import create_model
from tinykd.models.checkpoint import save_model


def write_recipe(folder: Path, name: str = "r.yaml", **sections: object) -> Path:
    recipe = {
        "name": "cli-test",
        "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
        "student": {"name": "cnn_tiny"},
        "train": {"epochs": 2, "log_every": 5},
        "measure": {"latency_repeats": 10, "throughput_batch": 8},
    }
    for key, value in sections.items():
        if value is None:
            recipe.pop(key, None)
        else:
            recipe[key] = value
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture()
def teacher_ckpt(tmp_path: Path) -> Path:
    """An (untrained) resnet8 checkpoint for 10 classes and 1 channel, written the way tinykd writes them."""
    path = tmp_path / "teacher.safetensors"
    save_model(create_model("resnet8", num_classes=10, in_channels=1), path, {"model": "resnet8", "num_classes": 10})
    return path


def test_train_then_distill_then_eval(cli, tmp_path: Path) -> None:
    teacher = write_recipe(tmp_path, "teacher.yaml", student=None, model={"name": "resnet8"},
                           train={"epochs": 3, "log_every": 5})  # fmt: skip
    cli("train", str(teacher), "--out", "teacher", check=True)
    distill = write_recipe(
        tmp_path, "distill.yaml",
        teacher={"name": "resnet8", "checkpoint": "teacher"},  # a run folder: its best checkpoint
        loss_terms={"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4},
                    "hint": {"type": "fitnet", "weight": 1.0, "student": "stage2", "teacher": "layer2"}},
    )  # fmt: skip
    proc = cli("distill", str(distill), "--out", "student", "--set", "train.epochs=3", check=True)
    assert "0.1 * ce(label_smoothing=0.0) + 0.9 * kd(temperature=4.0) + 1 * hint(student='stage2'" in proc.stdout
    report = json.loads((tmp_path / "student" / "report.json").read_text())
    teacher_row, student_row = report["models"]
    assert teacher_row["role"] == "teacher" and student_row["model"] == "cnn_tiny"
    assert teacher_row["params"] > 10 * student_row["params"]
    assert student_row["test_accuracy"] > 0.5 and report["epochs"] == 3
    assert "| teacher | resnet8 |" in (tmp_path / "student" / "report.md").read_text()
    assert yaml.safe_load((tmp_path / "student" / "recipe.yaml").read_text())["train"]["epochs"] == 3
    proc = cli("eval", "student", "--no-measure", check=True)
    assert f"{student_row['test_accuracy']:.2%}" in proc.stdout


def test_recipes_and_help(cli) -> None:
    proc = cli("recipes", check=True)
    assert "fmnist-distill" in proc.stdout and "fmnist-teacher" in proc.stdout
    assert "distill" in cli("--help", check=True).stdout


BAD_INPUTS = {
    "unknown key": ({"train": {"epochs": 1, "lr": 0.1}}, "unknown recipe key 'train.lr'; allowed here: epochs"),
    "unknown model": ({"student": {"name": "resnet9"}}, "unknown model 'resnet9' (did you mean: resnet8"),
    "unknown dataset": ({"data": {"name": "mnist"}}, "unknown dataset 'mnist'"),
    "unknown loss": ({"loss_terms": {"hinton": {}}}, "unknown loss term 'hinton' (did you mean: fitnet?); known: at"),
    "model argument": ({"student": {"name": "cnn_tiny", "kwargs": {"depth": 3}}}, "takes no argument 'depth'"),
    "missing data": ({"data": {"name": "fashion-mnist", "root": "/nonexistent"}},
                     "Fashion-MNIST files not found; looked in /nonexistent"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path, tinykd_env: dict, case: str) -> None:
    sections, message = BAD_INPUTS[case]
    if case == "missing data":
        tinykd_env.pop("TINYKD_DATA")
        tinykd_env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    proc = cli("train", str(write_recipe(tmp_path, **sections)), "--out", "run")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    ("teacher", "terms", "message"),
    [
        ({"name": "resnet8", "kwargs": {}}, {"kd": {}}, "teacher.checkpoint is not set"),
        ({"name": "resnet14"}, {"kd": {}}, "does not fit model 'resnet14' (it was saved from 'resnet8')"),
        ({"name": "resnet8"}, {"hint": {"type": "fitnet", "student": "stage2", "teacher": "layer4"}},
         "no module 'layer4' in the teacher (CifarResNet) (did you mean: layer3, layer2, layer1"),
        ({"name": "resnet8"}, {"hint": {"type": "fitnet", "student": "stage9", "teacher": "layer3"}},
         "no module 'stage9' in the student"),
    ],
)
def test_bad_distillation_inputs(cli, tmp_path: Path, teacher_ckpt: Path, teacher: dict, terms: dict,
                                 message: str) -> None:  # fmt: skip
    if "kwargs" not in teacher:
        teacher = {**teacher, "checkpoint": str(teacher_ckpt)}
    proc = cli("distill", str(write_recipe(tmp_path, teacher=teacher, loss_terms=terms)), "--out", "run")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_mismatched_teacher_and_student_outputs(cli, tmp_path: Path) -> None:
    path = tmp_path / "t100.safetensors"
    save_model(create_model("resnet8", num_classes=100, in_channels=1), path, {"model": "resnet8"})
    recipe = write_recipe(tmp_path, loss_terms={"kd": {}},
                          teacher={"name": "resnet8", "checkpoint": str(path), "kwargs": {"num_classes": 100}})
    proc = cli("distill", str(recipe), "--out", "run")
    assert proc.returncode == 2, proc.stderr
    assert "teacher outputs shape (4, 100) but student outputs (4, 10) on the same batch" in proc.stderr
    proc = cli("distill", str(recipe), "--out", "run2", "--set", "teacher.kwargs={}")
    assert proc.returncode == 2 and "does not fit model 'resnet8'" in proc.stderr, proc.stderr


def test_distill_without_teacher_and_train_with_teacher_terms(cli, tmp_path: Path) -> None:
    proc = cli("distill", str(write_recipe(tmp_path)), "--out", "run")
    assert proc.returncode == 2 and "needs a 'teacher' section" in proc.stderr
    proc = cli("train", str(write_recipe(tmp_path, loss_terms={"kd": {}})), "--out", "run")
    assert proc.returncode == 2 and "use tinykd distill" in proc.stderr


def test_existing_run_folder_and_bad_checkpoint_for_eval(cli, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    proc = cli("train", str(write_recipe(tmp_path)), "--out", "run")
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    proc = cli("eval", "junk.safetensors")
    assert proc.returncode == 2 and "is not a readable safetensors checkpoint" in proc.stderr
    proc = cli("eval", "nothing-here")
    assert proc.returncode == 2 and "checkpoint nothing-here does not exist" in proc.stderr


@pytest.mark.parametrize(("world_size", "quick"), [("2", True), ("1", False), (None, False)])
def test_a_finished_rank_of_a_multi_process_job_skips_interpreter_teardown(
    monkeypatch: pytest.MonkeyPatch, world_size: str | None, quick: bool
) -> None:
    import os
    import sys

    import torch.distributed  # noqa: F401  (a job that ran on torch)

    from tinykd import cli

    exits: list[int] = []
    monkeypatch.setattr(cli, "main", lambda: None)
    monkeypatch.setattr(os, "_exit", exits.append)
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    assert "torch.distributed" in sys.modules
    cli.entry()
    assert exits == ([0] if quick else [])
