"""ExecuTorch: a tiny CNN and a tiny BERT exported to .pte in fp32 and int8, run by ExecuTorch's own runtime and
compared with PyTorch; compare and profile read .pte files; a damaged one is one line. (LiteRT: tests/litert.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import run_here, shared_folder
from mobile_cases import check_export, make_runs
from tinykd.compress.mobile import export_mobile
from tinykd.errors import TinykdError

pytest.importorskip("executorch")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = shared_folder(tmp_path_factory, "mobile-runs", make_runs)
    return {"cnn": folder / "digits", "bert": folder / "bert"}


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict]:
    """Each model in fp32 and int8, checked against PyTorch from outside (mobile_cases.check_export)."""
    folder = tmp_path_factory.mktemp("pte")
    return {(kind, precision): check_export(runs[kind], "executorch", precision,
                                            folder / f"{kind}{'.int8' if precision == 'int8' else ''}.pte")
            for kind in runs for precision in ("fp32", "int8")}  # fmt: skip


@pytest.mark.parametrize("kind", ["cnn", "bert"])
def test_executorch_fp32_and_int8_match_pytorch(exported: dict[tuple[str, str], dict], kind: str) -> None:
    fp32, int8 = exported[kind, "fp32"], exported[kind, "int8"]
    assert int8["quantization"] == ("dynamic" if kind == "bert" else "static")
    assert int8["size_bytes"] < fp32["size_bytes"]
    if kind == "bert":  # the embedding tables are int8 too: most of a small BERT
        assert int8["size_bytes"] < 0.7 * fp32["size_bytes"]


def test_a_file_that_does_not_match_pytorch_is_removed(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "strict.pte"
    with pytest.raises(TinykdError, match=r"verification failed: executorch and PyTorch differ.*was removed"):
        export_mobile(runs["cnn"], "executorch", "fp32", out, tolerance=1e-15)
    assert not out.exists() and not (tmp_path / "strict.pte.json").exists()


def test_compare_and_profile_read_pte_files_and_a_damaged_one_is_one_line(
    runs: dict[str, Path], exported: dict[tuple[str, str], dict], tmp_path: Path
) -> None:
    out = Path(exported["cnn", "int8"]["path"])
    proc = run_here("compare", str(runs["cnn"]), str(out), "--repeats", "5", "--batch", "4", "--threads", "1",
                    "--out", str(tmp_path / "cmp"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = __import__("json").loads((tmp_path / "cmp" / "compare.json").read_text())["models"]
    assert rows[1]["format"] == "executorch int8 (static)" and rows[1]["test_accuracy"] > 0.5
    proc = run_here("profile", str(out), "--repeats", "5", "--batch", "4", cwd=tmp_path)
    assert proc.returncode == 0 and ", 1 thread" in proc.stdout and ", 2 threads" in proc.stdout, proc.stderr
    bad = tmp_path / "bad.pte"
    bad.write_bytes(out.read_bytes()[:200])
    proc = run_here("compare", str(runs["cnn"]), str(bad), "--repeats", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "ExecuTorch cannot load" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_bad_options_and_a_missing_runtime_are_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = run_here("export", str(runs["cnn"]), "--format", "executorch", "--precision", "int4", cwd=tmp_path)
    assert proc.returncode == 2 and "--precision must be fp32 or int8" in proc.stderr
    proc = run_here("export", str(runs["cnn"]), "--precision", "int8", cwd=tmp_path)
    assert proc.returncode == 2 and "is for executorch and litert" in proc.stderr
    if importlib.util.find_spec("litert_torch") is None:
        proc = run_here("export", str(runs["cnn"]), "--format", "litert", cwd=tmp_path)
        assert proc.returncode == 2 and "pip install 'tinykd[litert]'" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_quantization_aware_run_ships_the_int8_it_trained_with(tmp_path: Path) -> None:
    """A convolutional QAT run (torchao's PT2E flow, uint8 activations) exports its own scales, no calibration:
    the .pte computes what the converted QAT model computes, and its card says so."""
    import json

    import numpy as np
    import torch

    from tinykd.compress.predictors import TorchPredictor, open_predictor, predict_all
    from tinykd.compress.pt2e_export import trained_int8
    from tinykd.compress.source import dataset_arrays
    from tinykd.loading import load_model, recipe_from_checkpoint
    from tinykd.recipes import load_recipe
    from tinykd.run import run

    pytest.importorskip("torchao")
    recipe = load_recipe({"name": "qat-mobile", "seed": 0, "student": {"name": "cnn_tiny"},
                          "data": {"name": "digits", "batch_size": 32, "val_size": 0.1},
                          "quantize": {"weights": "int8"},
                          "train": {"epochs": 3, "optimizer": {"lr": 0.1}},
                          "runtime": {"threads": 1}, "measure": {"enabled": False}})  # fmt: skip
    run(recipe, tmp_path / "run", mode="train")
    calls = []
    from tinykd.compress import mobile

    original = mobile._calibration_set
    mobile._calibration_set = lambda *a: calls.append(a) or original(*a)  # type: ignore[assignment]
    try:
        path, report = export_mobile(tmp_path / "run", "executorch", "int8", tmp_path / "qat.pte", threads=1)
    finally:
        mobile._calibration_set = original  # type: ignore[assignment]
    assert report["quantization"] == "trained" and calls and calls[0][2] == "trained"
    card = json.loads((tmp_path / "qat.pte.json").read_text())
    assert card["format"] == "executorch int8 (trained)"
    assert card["verification"]["against"] == "the QAT model in PyTorch"
    loaded = load_model(tmp_path / "run")
    run_recipe = recipe_from_checkpoint(loaded.meta, loaded.path)
    images, labels = dataset_arrays(run_recipe, "test")
    qat = trained_int8(loaded, run_recipe, torch.from_numpy(images[:1]))
    want = predict_all(TorchPredictor(qat), images).numpy()
    got = predict_all(open_predictor(path, threads=1), images).numpy()
    assert (want.argmax(1) == labels).mean() > 0.8  # a model that learned, so agreement means something
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99 and np.abs(got - want).max() < 0.1
