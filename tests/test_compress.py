"""Shipping to the edge: export (verified), int8 quantization, structured pruning, profile and compare.

Everything runs on scikit-learn's bundled 8x8 digits with tiny models trained here in a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tinykd import create_model
from tinykd.compress.compare import compare_models
from tinykd.compress.export import compare_outputs, export_checkpoint, export_onnx
from tinykd.compress.onnxrt import onnx_meta, onnx_size, read_onnx
from tinykd.compress.profile import profile_model
from tinykd.compress.prune import prune_command, prune_model
from tinykd.compress.quantize import quantize_for_demo, quantize_model, quantize_torch_dynamic
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import load_weights, read_meta, save_model, shrink_to_state
from tinykd.recipes import validate_recipe

RECIPE = {
    "name": "digits-compress",
    "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
    "student": {"name": "cnn_small"},
    "train": {"epochs": 1, "log_every": 5, "optimizer": {"lr": 0.01}},
    "measure": {"latency_repeats": 5, "throughput_batch": 4, "threads": 1},
    "runtime": {"threads": 1},
}
FAST = {"repeats": 5, "batch": 4, "threads": 1}


def checkpoint_meta(name: str, recipe: dict | None = None) -> dict:
    data = validate_recipe({**(recipe or RECIPE), "student": {"name": name}}).model_dump(mode="json")
    return {"model": name, "kwargs": {}, "num_classes": 10, "in_channels": 1, "image_size": 8,
            "classes": [str(i) for i in range(10)], "recipe": data}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn_small trained for a few epochs on digits (about 95% test accuracy), saved the way a run saves it."""
    from mobile_cases import digits_cnn

    return digits_cnn(tmp_path_factory.mktemp("run"), RECIPE) / "checkpoints" / "best.safetensors"


def test_pruned_checkpoints_load_by_shrinking_the_rebuilt_model(tmp_path: Path) -> None:
    model = create_model("resnet8", num_classes=10, in_channels=1)  # residual blocks: coupled channels
    example = torch.randn(1, 1, 8, 8)
    report = prune_model(model, example, ratio=0.5, target="params", steps=20)
    assert report["reached"] and report["params_after"] <= 0.5 * report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    path = tmp_path / "pruned.safetensors"
    save_model(model, path, {"model": "resnet8", "num_classes": 10, "pruned": True})
    fresh = create_model("resnet8", num_classes=10, in_channels=1)
    load_weights(fresh, path, "resnet8")
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(fresh.eval()(x), model.eval()(x), atol=1e-6)
    with pytest.raises(TinykdError, match=r"does not fit model 'resnet14' \(it was saved from 'resnet8'\)"):
        load_weights(create_model("resnet14", num_classes=10, in_channels=1), path, "resnet14")


def test_shrink_handles_depthwise_convolutions_and_batchnorm() -> None:
    big = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8), nn.Linear(8, 4))
    small = nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5), nn.Conv2d(5, 5, 3, groups=5), nn.Linear(5, 4))
    shrunk = shrink_to_state(big, small.state_dict())
    assert shrunk == ["0", "1", "2", "3"]
    assert big[2].groups == 5 and big[2].in_channels == 5 and big[1].num_features == 5 and big[3].in_features == 5
    big.load_state_dict(small.state_dict())


def test_prune_targets_macs_and_refuses_ratios_outside_0_1() -> None:
    model = create_model("cnn_small", num_classes=10, in_channels=1)
    report = prune_model(model, torch.randn(1, 1, 8, 8), ratio=0.3, target="macs")
    assert report["macs_after"] <= 0.7 * report["macs_before"] and report["removed"] < 0.45
    assert model.head.out_features == 10  # the classifier keeps its classes
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(TinykdError, match="between 0 and 1"):
            prune_model(model, torch.randn(1, 1, 8, 8), ratio=bad)


def test_prune_then_recover_in_one_run_and_eval_the_pruned_checkpoint(trained: Path, tmp_path: Path) -> None:
    from tinykd.evaluate import evaluate_checkpoint

    result = prune_command(trained.parent.parent, ratio=0.5, out=tmp_path / "pruned")
    stages = {row["role"]: row for row in result.metrics["models"]}
    before, pruned, recovered = stages["before pruning"], stages["pruned"], stages["pruned + recovered"]
    assert pruned["params"] <= 0.5 * before["params"] and pruned["macs"] < before["macs"]
    assert recovered["test_accuracy"] > pruned["test_accuracy"] - 0.02 and recovered["test_accuracy"] > 0.7
    meta = read_meta(tmp_path / "pruned" / "checkpoints" / "best.safetensors")
    assert meta["pruned"] is True and meta["prune"]["ratio"] == 0.5
    row = evaluate_checkpoint(str(tmp_path / "pruned"), measure=False)  # `tinykd eval` on a pruned checkpoint
    assert row["test_accuracy"] == pytest.approx(recovered["test_accuracy"])
    assert "| pruned + recovered |" in (tmp_path / "pruned" / "report.md").read_text()


def test_a_recipe_can_carry_a_prune_section() -> None:
    recipe = validate_recipe({**RECIPE, "prune": {"ratio": 0.25, "target": "macs"}})
    assert recipe.prune.ratio == 0.25 and recipe.prune.target == "macs"
    with pytest.raises(TinykdError, match="prune.ratio"):
        validate_recipe({**RECIPE, "prune": {"ratio": 1.5}})


def test_export_onnx_is_verified_self_contained_and_has_a_dynamic_batch(trained: Path, tmp_path: Path) -> None:
    path, report = export_checkpoint(trained, "onnx", tmp_path / "m.onnx", exporter="legacy")
    assert report["exporter"] == "legacy" and report["opset"] >= 13
    verify = report["verification"]
    assert verify["max_abs_diff"] < 1e-4 and verify["top1_agreement"] == 1.0 and verify["images"] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inline: one file to copy
    meta = onnx_meta(path)
    assert meta["model"] == "cnn_small" and meta["recipe"]["data"]["name"] == "digits" and meta["params"] > 0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        assert sess.run(None, {"input": np.zeros((n, 1, 8, 8), np.float32)})[0].shape == (n, 10)
    with pytest.raises(TinykdError, match="already exists"):
        export_checkpoint(trained, "onnx", path, exporter="legacy")


def test_dynamo_export_and_pt2(trained: Path, tmp_path: Path) -> None:
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    report = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "d.onnx", exporter="auto")
    assert report["exporter"] in ("dynamo", "legacy") and report["size_bytes"] == onnx_size(tmp_path / "d.onnx")
    if report["exporter"] == "dynamo":
        assert not list(tmp_path.glob("*.data"))  # the dynamo exporter's external data was folded in
    path, report = export_checkpoint(trained, "pt2", tmp_path / "m.pt2")
    assert path.is_file() and report["verification"]["max_abs_diff"] < 1e-4


def test_a_failed_verification_is_an_error_and_removes_the_file(trained: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(TinykdError, match=r"differ by up to 0.5 .*tolerance 0.001"):
        compare_outputs(np.zeros((4, 3)), np.full((4, 3), 0.5), np.zeros(4, int), 1e-3, "onnxruntime")
    from tinykd.compress.predictors import OnnxPredictor

    monkeypatch.setattr(OnnxPredictor, "predict", lambda self, images: torch.zeros(len(images), 10))
    with pytest.raises(TinykdError, match="verification failed: .* was removed"):
        export_checkpoint(trained, "onnx", tmp_path / "bad.onnx", exporter="legacy")
    assert not (tmp_path / "bad.onnx").exists()


def test_static_int8_is_smaller_and_keeps_accuracy(trained: Path, tmp_path: Path) -> None:
    path, report = quantize_model(trained, "static", calibration=128, out=tmp_path / "q.onnx", exporter="legacy",
                                  **FAST)  # fmt: skip
    assert report["accuracy_before"] > 0.8 and report["accuracy_drop_points"] <= 2.0
    assert report["size_after"] * 2.2 < report["size_before"] and report["calibration_images"] == 128
    ops = {n.op_type for n in read_onnx(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    meta = onnx_meta(path)
    assert meta["format"] == "onnx int8" and meta["recipe"]["data"]["name"] == "digits"
    before, after = report["rows"]
    assert after["latency_ms_p50"] > 0 and after["throughput_samples_s"] > 0 and before["size_ratio"] == 1.0
    # an .onnx file (with tinykd metadata) can be quantized too; dynamic mode quantizes the Gemm only
    _, dyn = quantize_model(tmp_path / "q.onnx", "dynamic", out=tmp_path / "d.onnx", **FAST)
    assert dyn["quantized_nodes"] >= 1 and dyn["accuracy_drop_points"] <= 5.0


def test_torch_dynamic_int8_on_a_linear_model(trained: Path, tmp_path: Path) -> None:
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(256, 128)).eval()
    quantized, info = quantize_torch_dynamic(model)
    from tinykd.compress.quantize import torch_save_size

    assert torch_save_size(model) > 3 * torch_save_size(quantized) and info["linear_layers"] == 3
    x = torch.randn(16, 1, 8, 8)
    assert (model(x).argmax(1) == quantized(x).argmax(1)).float().mean() >= 0.9
    with pytest.raises(TinykdError, match="nn.Linear"):
        quantize_torch_dynamic(nn.Sequential(nn.Conv2d(1, 4, 3)))
    path, report = quantize_model(trained, "torch-dynamic", out=tmp_path / "q.pt", **FAST)  # the CNN's head only
    assert report["accuracy_drop_points"] <= 2.0 and [r["format"] for r in report["rows"]] == ["pytorch fp32",
                                                                                              "pytorch int8"]
    assert set(torch.load(path, weights_only=True)) >= {"head._packed_params._packed_params"}


def test_bad_inputs_are_one_line_errors(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("text.onnx", "empty.onnx"):
        with pytest.raises(TinykdError, match="is not an ONNX model"):
            quantize_model(tmp_path / name)
        with pytest.raises(TinykdError, match="is not an ONNX model"):
            profile_model(tmp_path / name)
    np.save(tmp_path / "calib.npy", np.zeros((10, 1, 28, 28), np.float32))
    with pytest.raises(TinykdError, match=r"calibration images have shape \(10, 1, 28, 28\) .* takes \(N, 1, 8, 8\)"):
        quantize_model(trained, calibration_data=tmp_path / "calib.npy", out=tmp_path / "c.onnx", exporter="legacy")
    other = tmp_path / "other.safetensors"  # says cnn_small, holds cnn_tiny's weights
    save_model(create_model("cnn_tiny", num_classes=10, in_channels=1), other, checkpoint_meta("cnn_small"))
    with pytest.raises(TinykdError, match="does not fit model 'cnn_small'"):
        export_checkpoint(other, out=tmp_path / "o.onnx")
    with pytest.raises(TinykdError, match="between 0 and 1"):
        prune_command(trained, ratio=1.5)
    with pytest.raises(TinykdError, match="--mode"):
        quantize_model(trained, "int3")


def test_profile_pytorch_and_onnxruntime_rows(tmp_path: Path) -> None:
    rows, _ = profile_model("cnn_tiny", exporter="legacy", image_size=8, **FAST)
    torch_row, ort_row = rows
    assert torch_row["format"] == "pytorch fp32" and ort_row["format"] == "onnx fp32 (ort)"
    assert torch_row["params"] == ort_row["params"] and torch_row["flops"] == 2 * torch_row["macs"] > 0
    for row in rows:
        assert row["latency_ms_p90"] >= row["latency_ms_p50"] > 0 and row["threads"] == 1
    # an .onnx file with external data: its size counts the data file
    model = onnx.load(export_onnx(create_model("cnn_tiny", in_channels=1), torch.randn(1, 1, 8, 8),
                                  tmp_path / "a.onnx", exporter="legacy")["path"])  # fmt: skip
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)  # fmt: skip
    (one,), _ = profile_model(tmp_path / "ext.onnx", **FAST)
    assert one["size_bytes"] == (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size


def test_compare_writes_a_table_json_and_a_plot(trained: Path, tmp_path: Path) -> None:
    onnx_path, _ = export_checkpoint(trained, "onnx", tmp_path / "model.onnx", exporter="legacy")
    int8_path, _ = quantize_model(onnx_path, "static", calibration=64, out=tmp_path / "model.int8.onnx", **FAST)
    rows, _ = compare_models([str(trained.parent.parent), str(onnx_path), str(int8_path), "cnn_tiny"],
                             out=tmp_path / "cmp", repeats=5, batch=4, threads=1)  # fmt: skip
    assert [r["format"] for r in rows] == ["pytorch fp32", "onnx fp32", "onnx int8", "pytorch fp32"]
    assert rows[0]["role"] == "digits" and rows[0]["speedup"] == 1.0 and rows[2]["size_ratio"] > 2
    assert abs(rows[1]["test_accuracy"] - rows[0]["test_accuracy"]) < 1e-9 and "test_accuracy" not in rows[3]
    assert rows[3]["macs"] < rows[0]["macs"]  # the bare name got the 8x8 input of the others
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(saved["models"]) == 4 and saved["reference"] == "digits"
    assert "| onnx int8 |" in (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_the_demo_row_and_the_cli(trained: Path, tmp_path: Path, capsys) -> None:
    from tinykd.cli import main

    row = quantize_for_demo(trained, tmp_path / "student.int8.onnx", calibration=64, exporter="legacy")
    assert row["role"] == "student (int8 onnx)" and row["format"] == "onnx int8"
    assert {"test_accuracy", "params", "size_bytes", "macs", "latency_ms_p50", "throughput_samples_s"} <= set(row)
    main(["export", str(trained), "--exporter", "legacy", "--out", str(tmp_path / "cli.onnx")])
    assert "verified on" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(trained), "--ratio", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tinykd: error: the pruning ratio must be between 0 and 1") and err.count("\n") == 1
