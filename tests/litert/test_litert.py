"""LiteRT (run in .venv-litert, see the Makefile): a tiny CNN and a tiny BERT exported to .tflite in fp32 and int8,
run by LiteRT's interpreter and compared with PyTorch; a damaged .tflite is one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's helpers and mobile_cases

from conftest import run_here, shared_folder
from mobile_cases import check_export, make_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = shared_folder(tmp_path_factory, "mobile-runs", make_runs)
    return {"cnn": folder / "digits", "bert": folder / "bert"}


@pytest.mark.parametrize("kind", ["cnn", "bert"])
def test_litert_fp32_and_int8_match_pytorch(runs: dict[str, Path], kind: str, tmp_path: Path) -> None:
    fp32 = check_export(runs[kind], "litert", "fp32", tmp_path / "m.tflite")
    int8 = check_export(runs[kind], "litert", "int8", tmp_path / "m.int8.tflite")
    assert int8["size_bytes"] < fp32["size_bytes"]


def test_a_damaged_tflite_is_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" + b"\0" * 100)
    proc = run_here("profile", str(bad), "--repeats", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "LiteRT cannot load" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
