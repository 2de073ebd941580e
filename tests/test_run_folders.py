"""Run folders written by earlier versions of tinykd keep reading, and a checkpoint's metadata is a typed record
that writes back what it read.

`fixtures/run-before-tasks` is a real run folder (a digits KD run: cnn_small teacher, 1,210-parameter mlp student,
one epoch) written by tinykd before the Task contract, the Predictor and the sample-based speed names
(`train_img_per_s`, `throughput_img_s`) existed; it is copied, never written in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tinykd.models.checkpoint import CheckpointMeta, read_meta, save_model

OLD_RUN = Path(__file__).parent / "fixtures" / "run-before-tasks"


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(OLD_RUN, tmp_path / "old-run"))


def test_an_old_run_folder_is_reported_evaluated_and_compared(old_run: Path) -> None:
    from tinykd.compress.compare import compare_models
    from tinykd.evaluate import evaluate_checkpoint
    from tinykd.html_report import write_html_report

    page = write_html_report([str(old_run)])
    assert Path(page).is_file() and "old-digits-kd" in Path(page).read_text()
    saved = json.loads((old_run / "report.json").read_text())
    student = next(r for r in saved["models"] if r["role"] == "student")
    row = evaluate_checkpoint(str(old_run), measure=False)
    assert row["test_accuracy"] == pytest.approx(student["test_accuracy"], abs=1e-9)  # the same weights, same data
    rows, _ = compare_models([str(old_run)], repeats=3, batch=4)
    assert rows[0]["test_accuracy"] == pytest.approx(student["test_accuracy"], abs=1e-9)


def test_checkpoint_metadata_is_a_record_that_writes_back_what_it_read(tmp_path: Path) -> None:
    old = read_meta(OLD_RUN / "checkpoints" / "best.safetensors")
    meta = CheckpointMeta.from_dict(old)
    assert meta.model == "mlp" and meta.num_classes == 10 and meta.recipe["name"] == "old-digits-kd"
    assert not meta.pruned and meta.qat is None
    rewritten = tmp_path / "again.safetensors"
    save_model(torch.nn.Linear(2, 2), rewritten, meta)
    again = read_meta(rewritten)
    assert list(again) == list(old)  # the same keys in the same order
    versions = ("tinykd_version", "torch_version")  # of the code that wrote the file
    assert {k: v for k, v in again.items() if k not in versions} == {k: v for k, v in old.items() if k not in versions}
    future = CheckpointMeta.from_dict({**old, "something_new": [1, 2]})  # a newer tinykd's key is kept
    assert future.as_dict()["something_new"] == [1, 2]
    pruned = CheckpointMeta(model="resnet8", num_classes=10, pruned=True, prune={"ratio": 0.5})
    assert pruned.as_dict()["pruned"] is True and "qat" not in pruned.as_dict()
