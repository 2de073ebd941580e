"""The demo, end to end, on small stand-in data (the real run is `make demo`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tinykd.demo import shipped_teacher
from tinykd.models.checkpoint import read_meta


def test_the_shipped_teacher_is_a_tinykd_checkpoint() -> None:
    path = shipped_teacher()
    assert path.is_file(), "the teacher checkpoint must ship inside the package"
    meta = read_meta(path)
    assert meta["model"] == "resnet8x4" and meta["num_classes"] == 10 and meta["in_channels"] == 1
    assert meta["recipe"]["name"] == "fmnist-teacher"


@pytest.mark.skipif(not shipped_teacher().is_file(), reason="no shipped teacher")
def test_demo_runs_and_reports_three_models(cli, tmp_path: Path) -> None:
    proc = cli("demo", "--epochs", "1", "--out", "demo", "--set", "data.val_size=0.1",
               "--set", "measure.latency_repeats=10", check=True)  # fmt: skip
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    roles = [row["role"] for row in report["rows"]]
    assert roles == ["teacher", "teacher (onnx fp32)", "student (scratch)", "student (distilled)",
                     "student (int8 onnx)", "teacher (executorch fp32)", "student (int8 executorch)"]  # fmt: skip
    teacher, teacher_onnx, scratch, distilled, int8, teacher_pte, int8_pte = report["rows"]
    # ExecuTorch, the phones' runtime: the teacher verified against PyTorch, the int8 student timed beside it
    assert teacher_pte["format"] == "executorch fp32" and int8_pte["format"] == "executorch int8 (static)"
    assert abs(teacher_pte["test_accuracy"] - teacher["test_accuracy"]) < 0.01
    assert int8_pte["size_bytes"] < teacher_pte["size_bytes"] / 20 and (tmp_path / "demo" / "teacher.pte").is_file()
    assert report["executorch"]["faster_b1_same_runtime"] == pytest.approx(
        teacher_pte["latency_ms_p50"] / int8_pte["latency_ms_p50"])
    assert "In ExecuTorch (XNNPACK" in proc.stdout
    assert int8["size_bytes"] < distilled["size_bytes"] / 2 and int8["format"] == "onnx int8"
    assert teacher_onnx["format"] == "onnx fp32" and teacher_onnx["params"] == teacher["params"]
    assert abs(teacher_onnx["test_accuracy"] - teacher["test_accuracy"]) < 0.01  # the same model, verified export
    # the int8 student's speed-up is given against the teacher in the same runtime and against the eager teacher
    assert int8["speedup_same_runtime"] == pytest.approx(teacher_onnx["latency_ms_p50"] / int8["latency_ms_p50"])
    assert int8["speedup"] == pytest.approx(teacher["latency_ms_p50"] / int8["latency_ms_p50"])
    assert distilled["speedup_same_runtime"] == pytest.approx(distilled["speedup"])
    assert report["int8_vs_teacher"]["faster_b1_same_runtime"] == int8["speedup_same_runtime"]
    assert "in the same runtime" in proc.stdout and "Edge goal" in proc.stdout
    assert teacher["params"] >= 20 * distilled["params"] and scratch["params"] == distilled["params"]
    for row in report["rows"]:
        assert {"test_accuracy", "params", "size_bytes", "macs", "latency_ms_p50", "throughput_samples_s"} <= set(row)
    assert "Distillation gain" in proc.stdout and "student (distilled)" in proc.stdout
    assert (tmp_path / "demo" / "report.md").read_text().startswith("# tinykd demo")
    page = (tmp_path / "demo" / "report.html").read_text()  # the whole story on one self-contained page
    assert "Teacher and students on the test set" in page and "student (int8 onnx)" in page
    assert "Distillation gain" in page and page.count("Models on the test set") == 2  # distilled, scratch
    assert page.count("data:image/png;base64,") >= 6 and not re.search(r'(src|href)="(?!data:)', page)
