"""Model specs beyond the registry, checkpoints that never run code, and the measurements."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from tinykd import create_model
from tinykd.errors import TinykdError
from tinykd.measure import count_macs, count_params, measure_model, size_on_disk
from tinykd.models.checkpoint import load_weights, read_meta, save_model


def test_timm_and_torchvision_specs() -> None:
    model = create_model("timm:resnet10t", num_classes=7, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    model = create_model("torchvision:mobilenet_v3_small", num_classes=4, in_channels=3)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    with pytest.raises(TinykdError, match="unknown timm model 'resnet_nope'"):
        create_model("timm:resnet_nope")
    with pytest.raises(TinykdError, match="takes 3 input channels"):
        create_model("torchvision:resnet18", in_channels=1)
    with pytest.raises(TinykdError, match="unknown model 'resnet7'"):
        create_model("resnet7")


def test_save_and_load_round_trip_with_metadata(tmp_path: Path) -> None:
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    path = tmp_path / "m.safetensors"
    save_model(model, path, {"model": "cnn_tiny", "num_classes": 10})
    assert not (tmp_path / "m.safetensors.tmp").exists()
    meta = read_meta(path)
    assert meta["model"] == "cnn_tiny" and meta["torch_version"] == torch.__version__ and "tinykd_version" in meta
    other = create_model("cnn_tiny", num_classes=10, in_channels=1)
    load_weights(other, path, "cnn_tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))


def test_a_checkpoint_of_another_architecture_says_so(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(create_model("cnn_tiny", in_channels=1), path, {"model": "cnn_tiny"})
    with pytest.raises(TinykdError, match=r"does not fit model 'cnn_small' \(it was saved from 'cnn_tiny'\): .* shape"):
        load_weights(create_model("cnn_small", in_channels=1), path, "cnn_small")


def test_pt_files_load_with_weights_only_and_refuse_code(tmp_path: Path) -> None:
    model = create_model("cnn_tiny", in_channels=1)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ok.pt")
    load_weights(create_model("cnn_tiny", in_channels=1), tmp_path / "ok.pt")
    torch.save(model, tmp_path / "pickled_module.pt")  # a whole pickled module: not loadable safely
    with pytest.raises(TinykdError, match="cannot load .* safely"):
        load_weights(create_model("cnn_tiny", in_channels=1), tmp_path / "pickled_module.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(TinykdError, match="cannot load .* safely"):
        load_weights(create_model("cnn_tiny", in_channels=1), tmp_path / "evil.pt")


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(create_model("cnn_tiny", in_channels=1), path, {"model": "cnn_tiny"})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TinykdError, match="not a readable safetensors checkpoint"):
        load_weights(create_model("cnn_tiny", in_channels=1), path)


def test_measurements_of_a_known_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_params(model) == 65
    assert count_macs(model, torch.randn(1, 3, 2, 2)) == 60
    assert 4 * 65 < size_on_disk(model) < 4 * 65 + 1024
    stats = measure_model(model, torch.randn(1, 3, 2, 2), repeats=20, batch=8, threads=1)
    assert stats.threads == 1 and 0 < stats.latency_ms_p50 <= stats.latency_ms_p90 and stats.throughput_samples_s > 0
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert count_macs(conv, torch.randn(1, 1, 8, 8)) == 4 * 9 * 64
