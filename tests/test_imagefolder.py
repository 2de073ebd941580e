"""A user's own images and a user's own teacher, end to end: the most common real use of tinykd.

A small folder of PNG and JPEG files (RGB, grayscale and RGBA; uneven class sizes) is written here, then:
train a timm teacher, distil a student, evaluate, export and quantize it, on one process and on two CPU
ranks under torchrun. A corrupt or non-image file is one line naming it before training, or, with
`data.bad_images: skip`, left out and counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tinykd.data import build_datasets, make_loader
from tinykd.errors import TinykdError

CLASSES = {"bars": (24, 6), "blobs": (16, 5), "rings": (9, 3)}  # class: (train images, test images): uneven


def draw(kind: str, rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """A learnable pattern per class (with noise and a random shift): bars, blobs or rings."""
    y, x = np.mgrid[:size, :size] + rng.integers(-2, 3, size=2)[:, None, None]
    if kind == "bars":
        base = (x // 3) % 2 * 1.0
    elif kind == "blobs":
        base = np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / 18.0)
    else:
        base = (np.abs(np.hypot(x - size / 2, y - size / 2) - 6) < 1.5) * 1.0
    return np.clip(255 * (0.8 * base + 0.2 * rng.random((size, size))), 0, 255).astype(np.uint8)


def write_image_folder(root: Path, seed: int = 0) -> Path:
    """PNG (RGB, RGBA) and JPEG (grayscale) files, a few classes of uneven sizes, in train/ and test/."""
    rng = np.random.default_rng(seed)
    for split, column in (("train", 0), ("test", 1)):
        for kind, counts in CLASSES.items():
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(counts[column]):
                grey = draw(kind, rng)
                if i % 3 == 0:
                    Image.fromarray(grey, "L").save(folder / f"{i}.jpg", quality=95)
                elif i % 3 == 1:
                    Image.fromarray(np.stack([grey, grey // 2, 255 - grey], -1), "RGB").save(folder / f"{i}.png")
                else:
                    alpha = np.full_like(grey, 255)
                    Image.fromarray(np.stack([grey, grey, grey, alpha], -1), "RGBA").save(folder / f"{i}.PNG")
    (root / "train" / "bars" / ".DS_Store").write_bytes(b"\x00\x01junk")  # what macOS leaves: ignored
    return root


def recipes(folder: Path, root: Path) -> tuple[Path, Path]:
    base = {"seed": 0, "data": {"name": "imagefolder", "root": str(root), "image_size": 16, "batch_size": 8,
                                "eval_batch_size": 16, "val_size": 0.2},
            "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}, "log_every": 2},
            "runtime": {"device": "cpu"}, "measure": {"latency_repeats": 5, "throughput_batch": 4}}  # fmt: skip
    teacher = folder / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({**base, "name": "own-teacher", "model": {"name": "timm:resnet18"}}))
    student = folder / "student.yaml"
    student.write_text(yaml.safe_dump({
        **base, "name": "own-student", "student": {"name": "cnn_tiny"},
        "teacher": {"name": "timm:resnet18", "checkpoint": str(folder / "teacher")},
        "loss_terms": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 4.0}},
    }))  # fmt: skip
    return teacher, student


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


def test_the_folder_loads_as_rgb_batches_with_uneven_classes(image_root: Path) -> None:
    bundle = build_datasets("imagefolder", root=str(image_root), val_size=0.2, image_size=16)
    assert bundle.classes == ["bars", "blobs", "rings"] and bundle.in_channels == 3
    assert len(bundle.train) + len(bundle.val) == 49 and len(bundle.test) == 14  # .DS_Store is not an image
    for dataset in (bundle.train, bundle.val, bundle.test):
        x, y = next(iter(make_loader(dataset, 5, train=dataset is bundle.train)))
        assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = torch.cat([y for _, y in make_loader(bundle.test, 16, train=False)])
    assert labels.tolist() == [0] * 6 + [1] * 5 + [2] * 3


def test_own_images_and_own_teacher_end_to_end(cli, image_root: Path, tmp_path: Path) -> None:
    teacher, student = recipes(tmp_path, image_root)
    cli("train", str(teacher), "--out", "teacher", check=True)
    proc = cli("distill", str(student), "--out", "student", check=True)
    assert "on cpu, 1 process, fp32;" in proc.stdout
    report = json.loads((tmp_path / "student" / "report.json").read_text())
    assert [row["role"] for row in report["models"]] == ["teacher", "student"]
    assert all(0 <= row["test_accuracy"] <= 1 for row in report["models"])
    epochs = [r for r in map(json.loads, (tmp_path / "student" / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "epoch"]  # fmt: skip
    assert [r["epoch"] for r in epochs] == [1, 2] and all(0 <= r["val_accuracy"] <= 1 for r in epochs)
    evaluated = cli("eval", "student", "--no-measure", check=True)
    assert "test acc" in evaluated.stdout
    cli("export", "student", check=True)
    assert (tmp_path / "student" / "model.onnx").is_file()
    quantized = cli("quantize", "student", "--calibration", "16", check=True)
    assert (tmp_path / "student" / "model.int8.onnx").is_file() and "int8 (static)" in quantized.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_own_images_on_two_cpu_ranks(image_root: Path, tmp_path: Path, tinykd_env: dict[str, str]) -> None:
    env = {**tinykd_env, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    teacher, student = recipes(tmp_path, image_root)
    for command, recipe, out in (("train", teacher, "teacher"), ("distill", student, "student")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tinykd",
               command, str(recipe), "--out", out]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "on cpu, 2 processes (GLOO), fp32;" in proc.stdout
    report = json.loads((tmp_path / "student" / "report.json").read_text())
    assert [row["role"] for row in report["models"]] == ["teacher", "student"]
    assert len([r for r in map(json.loads, (tmp_path / "student" / "metrics.jsonl").read_text().splitlines())
                if r.get("event") == "epoch"]) == 2  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content"),
    [("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200))), ("notes.txt", b"not an image\n"),
     ("cut.jpg", None)],
)
def test_an_unreadable_file_is_one_line_before_training(cli, tmp_path: Path, name: str, content: bytes | None
                                                        ) -> None:  # fmt: skip
    root = write_image_folder(tmp_path / "images")
    bad = root / "train" / "blobs" / name
    if content is None:  # a real JPEG cut in half: the header reads, the data does not
        good = next((root / "train" / "blobs").glob("*.jpg")).read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    teacher, _ = recipes(tmp_path, root)
    proc = cli("train", str(teacher), "--out", "run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinykd: error: imagefolder: ") and str(bad) in lines[0]
    assert "data.bad_images=skip" in lines[0] and not (tmp_path / "run").exists()
    if name != "broken.png":
        return  # the skip path is the same for every kind of unreadable file: trained once

    proc = cli("train", str(teacher), "--out", "run", "--set", "data.bad_images=skip", "--set", "train.epochs=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"left out 1 unreadable file(s): {bad}" in proc.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["skipped_files"]["count"] == 1 and report["skipped_files"]["files"][0].startswith(str(bad))


def test_folder_layout_errors_are_one_line(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images")
    (root / "test" / "cats").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "cats" / "0.png")
    with pytest.raises(TinykdError, match=r"has class folder\(s\) cats that train/ lacks"):
        build_datasets("imagefolder", root=str(root))
    flat = tmp_path / "flat"
    (flat / "test").mkdir(parents=True)
    (flat / "train").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "train" / "0.png")
    with pytest.raises(TinykdError, match=r"has no class folders \(1 files directly in it\)"):
        build_datasets("imagefolder", root=str(flat))
    empty = write_image_folder(tmp_path / "empty")
    for f in (empty / "train" / "rings").iterdir():
        f.unlink()
    with pytest.raises(TinykdError, match="rings hold no readable image"):
        build_datasets("imagefolder", root=str(empty))
