"""report.html: one self-contained page per run that opens offline, and `tinykd report` to rebuild it or to put
several runs on one page. Checked as a file here (everything inline, every picture a PNG that decodes and is not
blank) and, where Chromium is installed, in a real headless browser."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from test_resume import tinykd_cli
from tinykd import create_model
from tinykd.models.checkpoint import save_model
from tinykd.recipes import load_recipe
from tinykd.run import run


def _recipe(tmp_path: Path) -> dict[str, Any]:
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_model(create_model("cnn_small", num_classes=10, in_channels=1), teacher, {"model": "cnn_small"})
    return {
        "name": "paged", "seed": 0,
        "data": {"name": "digits", "batch_size": 32, "val_size": 0.15},
        "teacher": {"name": "cnn_small", "checkpoint": str(teacher)},
        "student": {"name": "mlp", "kwargs": {"image_size": 8, "hidden": [32]}},
        "loss_terms": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 4.0}},
        "train": {"epochs": 2, "max_steps_per_epoch": 8, "log_every": 2},
        "runtime": {"threads": 1}, "measure": {"enabled": True, "latency_repeats": 3, "throughput_batch": 4},
    }  # fmt: skip


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("page")
    return run(load_recipe(_recipe(tmp)), tmp / "run", mode="distill").run_dir


def test_every_run_writes_a_self_contained_page(finished: Path) -> None:
    from PIL import Image

    page = (finished / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: no CDN, no file next to it
    assert "<script" not in page
    for needed in ("Models on the test set", "Training", "Per class", "Student and teacher", "Recipe",
                   "ce(label_smoothing=0.0)", "Top-1 agreement"):  # fmt: skip
        assert needed in page, needed
    images = _images(page)
    assert len(images) >= 4  # curves, per-class accuracy, confusion matrices, disagreements
    for data in images:
        image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        assert image.std() > 1  # decodes, and is not blank
    saved = np.load(finished / "predictions.npz")
    assert set(saved.files) == {"labels", "teacher", "student"} and len(saved["labels"]) == len(saved["student"])
    agree = float((saved["teacher"] == saved["student"]).mean())
    assert f"{agree:.2%}" in page  # the agreement the page states is the predictions'


def test_tinykd_report_rebuilds_one_page_for_several_runs(finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "both.html"
    done = tinykd_cli("report", str(finished), str(finished), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert page.count("Models on the test set") == 2
    bad = tinykd_cli("report", str(tmp_path / "missing"), cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "not a run folder" in bad.stderr


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed (Debian: apt install chromium)")  # fmt: skip
def test_the_page_renders_in_a_headless_browser(finished: Path, tmp_path: Path) -> None:
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "page.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400",
               "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", (finished / "report.html").as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    assert "Uncaught" not in done.stderr and "ERR_FILE_NOT_FOUND" not in done.stderr
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.std() > 5  # text and pictures, not a blank page
