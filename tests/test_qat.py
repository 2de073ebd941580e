"""Quantization-aware distillation (recipe section `quantize`, torchao's QAT of linear layers) on digits.

The fake-quantized student and its converted low-bit copy compute the same; a killed QAT run resumes to the same
student bit for bit; what torchao cannot do is one line naming what it can.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from test_resume import assert_same_run, tinykd_cli
from tinykd import create_model
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import save_model
from tinykd.models.qat import convert_qat, prepare_qat, state_bytes
from tinykd.recipes import load_recipe
from tinykd.recipes.schema import QuantizeSpec
from tinykd.run import run

pytest.importorskip("torchao")


def _recipe(tmp_path: Path, **quantize: Any) -> dict[str, Any]:
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        torch.manual_seed(0)
        save_model(create_model("cnn_small", num_classes=10, in_channels=1), teacher, {"model": "cnn_small"})
    return {
        "name": "qat", "seed": 1,
        "data": {"name": "digits", "batch_size": 32, "val_size": 0.15},
        "teacher": {"name": "cnn_small", "checkpoint": str(teacher)},
        "student": {"name": "mlp", "kwargs": {"image_size": 8, "hidden": [64, 32]}},
        "loss_terms": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 4.0}},
        "quantize": quantize or {"weights": "int4", "activations": "int8", "group_size": 32},
        "train": {"epochs": 2, "max_steps_per_epoch": 7, "checkpoint_every": 3, "keep_checkpoints": 2,
                  "optimizer": {"lr": 0.05}},
        "runtime": {"threads": 1}, "measure": {"enabled": False},
    }  # fmt: skip


@pytest.mark.parametrize("spec", [
    {"weights": "int4", "activations": "int8", "granularity": "per-group", "group_size": 32},
    {"weights": "int8", "activations": "int8", "granularity": "per-channel"},
    {"weights": "int4", "activations": "none", "granularity": "per-group", "group_size": 16},
])  # fmt: skip
def test_the_converted_student_computes_what_the_fake_quantized_one_did(spec: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(64, 32))
    reference = [p.detach().clone() for p in model.parameters()]
    names = prepare_qat(model, QuantizeSpec(**spec))
    assert names == ["body.1", "body.3", "head"]
    x = torch.randn(16, 1, 8, 8)
    fake = model(x)
    assert not torch.equal(fake, torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x.flatten(1), reference[0],
        reference[1])), reference[2], reference[3])), reference[4], reference[5]))  # fmt: skip  # it does round
    converted = convert_qat(model, QuantizeSpec(**spec))
    torch.testing.assert_close(converted(x), fake, rtol=0, atol=1e-6)
    assert state_bytes(converted) < state_bytes(create_model("mlp", num_classes=10, in_channels=1, image_size=8,
                                                             hidden=(64, 32)))  # fmt: skip


def test_a_quantization_aware_distillation_reports_the_converted_student(tmp_path: Path) -> None:
    result = run(load_recipe(_recipe(tmp_path)), tmp_path / "run", mode="distill")
    rows = {r["role"]: r for r in result.metrics["models"]}
    qat = rows["student (int4 QAT)"]
    assert qat["test_accuracy"] == pytest.approx(rows["student"]["test_accuracy"])  # the same computation
    assert "int4 weights (per group of 32)" in qat["format"] and qat["size_bytes"] > 0
    assert (tmp_path / "run" / "model.qat.pt").is_file()


def test_a_killed_quantization_aware_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "qat.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path)))
    reference = tmp_path / "reference"
    assert tinykd_cli("distill", str(path), "--out", str(reference), cwd=tmp_path).returncode == 0
    out = tmp_path / "run"
    killed = tinykd_cli("distill", str(path), "--out", str(out), kill="step:8", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = tinykd_cli("distill", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


def test_what_torchao_cannot_do_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TinykdError) as exc:
        load_recipe(_recipe(tmp_path, weights="int4", activations="int4"))
    assert "activations" in str(exc.value) and "int8" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(TinykdError, match="convolution"):
        prepare_qat(create_model("cnn_tiny", num_classes=10, in_channels=1), QuantizeSpec())
    with pytest.raises(TinykdError, match="does not divide"):
        prepare_qat(create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(48,)),
                    QuantizeSpec(group_size=32))  # fmt: skip
    with pytest.raises(TinykdError, match="power of 2"):
        load_recipe(_recipe(tmp_path, weights="int4", group_size=24))
