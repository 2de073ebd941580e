"""One Predictor for every finished model: opened from any path, evaluated and measured the same way.

A tiny CNN on scikit-learn's bundled 8x8 digits (untrained: the numbers only have to agree), a tiny BERT saved as
a Hugging Face folder, and the files exported from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinykd import create_model
from tinykd.compress.export import export_onnx, export_pt2
from tinykd.compress.onnxrt import onnx_size
from tinykd.compress.predictors import (
    PREDICTORS,
    HfPredictor,
    OnnxPredictor,
    Predictor,
    Pt2Predictor,
    TorchPredictor,
    evaluate,
    measure,
    open_predictor,
    predict_all,
    register,
)
from tinykd.compress.source import dataset_arrays
from tinykd.errors import TinykdError
from tinykd.measure import count_macs, count_params, size_on_disk, timing_input
from tinykd.models.checkpoint import save_model
from tinykd.recipes import validate_recipe

RECIPE = {
    "name": "digits-predict",
    "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
    "student": {"name": "cnn_tiny"},
    "measure": {"latency_repeats": 5, "throughput_batch": 4, "threads": 1},
    "runtime": {"threads": 1},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding an (untrained) cnn_tiny checkpoint with its metadata, and its .onnx and .pt2 files."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("predict") / "tiny"
    model = create_model("cnn_tiny", num_classes=10, in_channels=1).eval()
    meta = {"model": "cnn_tiny", "kwargs": {}, "num_classes": 10, "in_channels": 1, "image_size": 8,
            "recipe": validate_recipe(RECIPE).model_dump(mode="json")}  # fmt: skip
    save_model(model, folder / "checkpoints" / "best.safetensors", meta)
    export_onnx(model, torch.randn(1, 1, 8, 8), folder / "model.onnx", exporter="legacy", meta=meta)
    export_pt2(model, torch.randn(1, 1, 8, 8), folder / "model.pt2")
    return folder


def test_every_kind_of_path_opens(run: Path, tmp_path: Path) -> None:
    images, _ = dataset_arrays(validate_recipe(RECIPE), "test", limit=16)
    kinds = {run: TorchPredictor, run / "checkpoints" / "best.safetensors": TorchPredictor,
             run / "model.onnx": OnnxPredictor, run / "model.pt2": Pt2Predictor}  # fmt: skip
    reference = open_predictor(run).predict(images)
    for path, kind in kinds.items():
        predictor = open_predictor(path, threads=1)
        assert type(predictor) is kind
        logits = predictor.predict(images)
        assert isinstance(logits, torch.Tensor) and logits.shape == (16, 10)
        assert torch.allclose(logits, reference, atol=1e-4)
        assert predictor.size_bytes() > 0
    assert open_predictor(run).describe() == "pytorch fp32"
    assert open_predictor(run / "model.onnx").describe() == "onnx fp32"


def test_a_hugging_face_folder_opens(tmp_path: Path) -> None:
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "model")
    predictor = open_predictor(tmp_path / "model")
    assert isinstance(predictor, HfPredictor) and predictor.task().name == "classification"
    ids = torch.randint(1, 50, (2, 7))
    assert predictor.predict({"input_ids": ids, "attention_mask": torch.ones_like(ids)}).shape == (2, 3)


def test_evaluate_and_measure_agree_with_the_old_numbers(run: Path) -> None:
    images, labels = dataset_arrays(validate_recipe(RECIPE), "test")
    torch_model, onnx_model = open_predictor(run, threads=1), open_predictor(run / "model.onnx", threads=1)
    for predictor in (torch_model, onnx_model):
        logits = predict_all(predictor, images).numpy()
        old = float((logits.argmax(1) == labels).mean())  # what compress.source.accuracy computed
        scores = evaluate(predictor, (images, labels))
        assert scores["accuracy"] == pytest.approx(old, abs=1e-12) and scores["count"] == len(labels)
        batches = [(images[i : i + 50], labels[i : i + 50]) for i in range(0, len(labels), 50)]  # a loader
        assert evaluate(predictor, batches)["accuracy"] == pytest.approx(old, abs=1e-12)
    example = timing_input(images, 16)
    figures = measure(torch_model, example, repeats=5, batch=4)
    model = torch_model.model  # type: ignore[attr-defined]
    assert figures["params"] == count_params(model) and figures["size_bytes"] == size_on_disk(model)
    assert figures["macs"] == count_macs(model, torch.from_numpy(example)) and figures["threads"] == 1
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p90"] and figures["throughput_samples_s"] > 0
    onnx_figures = measure(onnx_model, example, repeats=5, batch=4)
    assert onnx_figures["params"] == figures["params"] and onnx_figures["macs"] == figures["macs"]
    assert onnx_figures["size_bytes"] == onnx_size(run / "model.onnx") and onnx_figures["threads"] == 1


def test_unknown_paths_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "model.xyz").write_text("?")
    with pytest.raises(TinykdError, match=r"no runtime reads '\.xyz' files; .* \.onnx") as info:
        open_predictor(tmp_path / "model.xyz")
    assert "\n" not in str(info.value)
    with pytest.raises(TinykdError, match="does not exist"):
        open_predictor(tmp_path / "missing.xyz")
    with pytest.raises(TinykdError, match="is not an ONNX model"):
        (tmp_path / "bad.onnx").write_text("not a model")
        open_predictor(tmp_path / "bad.onnx")


def test_a_new_runtime_is_one_class_and_one_registration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tinykd.compress.predictors.PREDICTORS", dict(PREDICTORS))

    @register(".fake")
    class Fake(Predictor):
        def __init__(self, path: Path) -> None:
            self.path, self.meta, self.label, self.name = path, {}, path.name, "fake"

        @classmethod
        def open(cls, path: Path, threads: int | None = None) -> Fake:
            return cls(path)

        def predict(self, inputs: object) -> torch.Tensor:
            return torch.zeros(len(inputs), 10)  # type: ignore[arg-type]

        def size_bytes(self) -> int:
            return self.path.stat().st_size

        def describe(self) -> str:
            return "fake int2"

    (tmp_path / "m.fake").write_bytes(b"1234")
    predictor = open_predictor(tmp_path / "m.fake")
    assert isinstance(predictor, Fake) and predictor.describe() == "fake int2"
    labels = np.zeros(6, np.int64)
    assert evaluate(predictor, (np.zeros((6, 1, 8, 8), np.float32), labels))["accuracy"] == 1.0
    assert measure(predictor, torch.zeros(1, 1, 8, 8), repeats=3, batch=2)["size_bytes"] == 4


def test_the_timing_input_is_one_sample_and_texts_the_stated_length() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert timing_input(images, 8).shape == (1, 3, 4)
    texts = {"input_ids": torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
             "token_type_ids": torch.zeros(2, 4, dtype=torch.long)}  # fmt: skip
    example = timing_input(texts, 7)
    assert example["input_ids"].tolist() == [[5, 6, 7, 5, 6, 7, 5]] and example["attention_mask"].sum() == 7
    assert example["token_type_ids"].tolist() == [[0] * 7] and isinstance(example["input_ids"], torch.Tensor)
    seq2seq = {"input_ids": np.array([[3, 4]]), "attention_mask": np.ones((1, 2)), "decoder_input_ids": np.ones((1, 1))}
    example = timing_input(seq2seq, 3)
    assert example["decoder_input_ids"].tolist() == [[3, 4, 3]] and example["decoder_attention_mask"].sum() == 3


def test_an_old_run_folder_still_reads(tmp_path: Path) -> None:
    """A report.json and metrics.jsonl written before throughput_img_s became throughput_samples_s."""
    from tinykd.cli import main
    from tinykd.report import format_table

    row = {"role": "student", "model": "cnn_tiny", "format": "pytorch fp32", "test_accuracy": 0.9, "params": 1000,
           "size_bytes": 4096, "macs": 10000, "latency_ms_p50": 0.5, "latency_ms_p90": 0.6,
           "throughput_img_s": 12345.0, "threads": 1}  # fmt: skip
    report = {"name": "old", "dataset": "digits", "loss": "ce", "epochs": 1, "best_val_accuracy": 0.9,
              "best_epoch": 1, "train_seconds": 1.0, "train_img_per_s": 777.0, "total_seconds": 2.0,
              "device": "cpu", "models": [row]}  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"event": "train", "step": 1, "loss": 1.0, "accuracy": 0.5,
                                                        "lr": 0.1, "img_per_s": 900.0}) + "\n")  # fmt: skip
    assert "12,345 samples/s" in format_table([row])
    main(["report", str(tmp_path)])
    page = (tmp_path / "report.html").read_text()
    assert "12,345 samples/s" in page and "777.0 samples/s" in page
