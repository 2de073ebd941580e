"""Runtime choices: what was asked is what runs, or a clear error; `tinykd env`; torch.compile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import tinykd
from tinykd.engine.runtime import describe_environment, resolve_device
from tinykd.errors import TinykdError

QUICK = {
    "data": {"name": "digits", "batch_size": 32},
    "student": {"name": "cnn_tiny"},
    "train": {"epochs": 1, "max_steps_per_epoch": 3},
    "measure": {"enabled": False},
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_asked_without_a_gpu_is_an_error_not_a_fallback(cli, tmp_path: Path) -> None:
    with pytest.raises(TinykdError, match="runtime.device=cuda was asked for, but no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") in ("cpu", "mps", "xla")
    proc = cli("train", "digits-quick", "--set", "runtime.device=cuda", "--out", "run")
    assert proc.returncode == 2 and "runtime.device=cuda was asked for" in proc.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written before the device is known"


def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TinykdError, match="fp16 needs a GPU"):
        tinykd.run({**QUICK, "runtime": {"device": "cpu", "precision": "fp16"}}, out=tmp_path / "r")


def test_env_lists_versions_and_choices(cli) -> None:
    rows = dict(describe_environment())
    assert rows["torch"] == torch.__version__ and "runtime.device=cpu" in rows
    assert "runs on cpu" in rows["runtime.device=cpu"]
    proc = cli("env", check=True)
    assert "accelerate" in proc.stdout and "runtime.device=auto" in proc.stdout


def test_bf16_channels_last_and_compile_train(tmp_path: Path) -> None:
    recipe = {**QUICK, "runtime": {"device": "cpu", "precision": "bf16", "channels_last": True, "compile": True}}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    result = tinykd.run(recipe, out=tmp_path / "r")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "torch.compile did not run"
    assert result.metrics["models"][0]["test_accuracy"] > 0.05
    assert "bf16" in (tmp_path / "r" / "recipe.yaml").read_text()


def test_auto_precision_takes_bf16_only_where_it_is_native(monkeypatch) -> None:
    """bf16 on an AVX2 CPU is emulated and many times slower than fp32: `auto` must not take it there."""
    from tinykd.engine.runtime import bf16_is_fast, resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not bf16_is_fast("cpu") and resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert bf16_is_fast("cpu") and resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "xla") == "bf16" and resolve_precision("fp16", "cpu") == "fp16"
    assert resolve_precision("fp32", "xla") == "fp32"


def test_deterministic_runs_set_torchs_switches_and_give_them_back(tmp_path: Path, monkeypatch) -> None:
    """On a GPU two runs differ unless atomics and cuDNN's autotuner are off; the switches are global, so a run that
    did not ask must find them as they were before."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    plain = tinykd.run({**QUICK, "runtime": {"device": "cpu"}}, out=tmp_path / "plain").metrics
    assert not torch.are_deterministic_algorithms_enabled()
    same = tinykd.run({**QUICK, "runtime": {"device": "cpu", "deterministic": True}}, out=tmp_path / "det").metrics
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert same["models"] == plain["models"], "on a CPU the switch changes no number"
    tinykd.run({**QUICK, "runtime": {"device": "cpu"}}, out=tmp_path / "after")
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
