"""What the ExecuTorch tests (tests/test_mobile.py, main environment) and the LiteRT tests (tests/litert, in
.venv-litert) share: a tiny CNN and a tiny BERT trained here, and one check of an exported file against PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinykd import create_model
from tinykd.compress.fixed_shape import read_card
from tinykd.compress.mobile import export_mobile
from tinykd.compress.predictors import TorchPredictor, open_predictor, predict_all
from tinykd.compress.source import dataset_arrays
from tinykd.loading import load_model, recipe_from_checkpoint
from tinykd.models.checkpoint import save_model
from tinykd.recipes import validate_recipe

DIGITS = {
    "name": "digits-mobile",
    "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
    "student": {"name": "cnn_small"},
    "train": {"epochs": 1},
    "runtime": {"threads": 1},
}


def digits_cnn(folder: Path, recipe_data: dict | None = None) -> Path:
    """cnn_small trained for a few epochs on scikit-learn's 8x8 digits (about 95% test accuracy), saved as a run
    saves it (a second), under `recipe_data` (DIGITS by default); the run folder."""
    from tinykd.engine import make_loader
    from tinykd.measure import torch_threads
    from tinykd.pipeline import build_data

    torch.manual_seed(0)
    recipe = validate_recipe(recipe_data or DIGITS)
    bundle = build_data(recipe, augment=False)
    model = create_model("cnn_small", num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with torch_threads(1):
        for _ in range(4):
            for images, labels in make_loader(bundle.train, 64, train=True):
                loss = nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    meta = {"model": "cnn_small", "kwargs": {}, "num_classes": 10, "in_channels": 1, "image_size": 8,
            "classes": bundle.classes, "recipe": recipe.model_dump(mode="json")}  # fmt: skip
    path = folder / "digits" / "checkpoints" / "best.safetensors"
    save_model(model.eval(), path, meta)
    return folder / "digits"


def tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT classifier trained on short sentiment-like texts with its own WordPiece."""
    from conftest import run_here
    from test_text_e2e import TINY, recipe, write_texts

    write_texts(folder / "data")
    path = recipe(folder, "bert", model={"name": "hf:bert", "kwargs": {"config": TINY}}, train={"epochs": 4})
    proc = run_here("train", str(path), "--out", "bert", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder / "bert"


def check_export(run: Path, fmt: str, precision: str, out: Path, max_drop: float = 3.0) -> dict:
    """Export `run`, then check the file again from outside: its card, its logits against PyTorch's on the test set
    (fp32 within 1e-4, int8 close in accuracy), and a smaller file in int8. Returns the export's report."""
    path, report = export_mobile(run, fmt, precision, out, calibration=64, max_drop=max_drop, threads=1)
    assert path == out and out.is_file() and report["precision"] == precision
    card = read_card(out)
    assert card["runtime"] == fmt and card["batch"] == 1 and card["outputs"][0]["name"] == "logits"
    assert card["verification"] == json.loads(json.dumps(report["verification"]))
    loaded = load_model(run)
    recipe = recipe_from_checkpoint(loaded.meta, loaded.path)
    inputs, labels = dataset_arrays(recipe, "test")
    predictor = open_predictor(out, threads=1)
    assert predictor.describe().startswith(f"{fmt} {precision}")
    got = predict_all(predictor, inputs).numpy()
    want = predict_all(TorchPredictor(loaded.model), inputs).numpy()
    assert got.shape == want.shape
    if precision == "fp32":
        assert np.abs(got - want).max() <= 1e-4
    else:
        acc_file, acc_torch = (got.argmax(1) == labels).mean(), (want.argmax(1) == labels).mean()
        assert 100 * (acc_torch - acc_file) <= max_drop
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    if isinstance(inputs, dict):
        assert card["sequence_length"] == recipe.data.max_length  # one fixed length: the recipe's
        assert [i["name"] for i in card["inputs"]] == list(inputs)
        assert all(i["shape"] == [1, recipe.data.max_length] for i in card["inputs"])
        assert (out.parent / card["tokenizer"]).is_file()  # the vocabulary travels with the file
    else:
        assert card["inputs"][0]["shape"] == [1, *inputs.shape[1:]] and "normalization" in card
    return report


def make_runs(folder: Path) -> None:
    """Both models, in one folder (a shared fixture's maker)."""
    digits_cnn(folder)
    tiny_bert(folder)
