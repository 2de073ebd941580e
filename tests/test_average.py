"""`tinykd average`: the mean of several runs' weights, as a run folder every tinykd command reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinykd.compress.average import average_command, parse_weights
from tinykd.errors import TinykdError
from tinykd.loading import load_model
from tinykd.models import create_model
from tinykd.models.checkpoint import read_meta, read_tensors, save_model

BERT = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 32, "vocab_size": 50}  # fmt: skip


def _cnn_run(folder: Path, seed: int, name: str = "cnn_tiny") -> Path:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=1)
    for module in model.modules():  # BatchNorm statistics differ between runs, and its counter is an integer
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.num_batches_tracked.fill_(seed + 1)
    save_model(model, folder / "checkpoints" / "best.safetensors",
               {"model": name, "kwargs": {}, "num_classes": 10, "in_channels": 1})  # fmt: skip
    return folder


def _bert_run(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    kwargs = {"task": "classification", "config": BERT}
    model = create_model("hf:bert", num_classes=2, **kwargs)
    save_model(model, folder / "checkpoints" / "best.safetensors",
               {"model": "hf:bert", "kwargs": kwargs, "num_classes": 2, "in_channels": 0})  # fmt: skip
    return folder


def test_average_is_the_weighted_mean_and_a_checkpoint_tinykd_reads(tmp_path: Path) -> None:
    runs = [_cnn_run(tmp_path / f"run{i}", seed=i) for i in range(3)]
    out = tmp_path / "soup"
    summary = average_command([str(r) for r in runs], out, weights="1,1,2")
    assert summary["weights"] == [0.25, 0.25, 0.5]
    states = [read_tensors(r / "checkpoints" / "best.safetensors")[0] for r in runs]
    averaged, meta = read_tensors(out / "checkpoints" / "best.safetensors")
    assert meta["model"] == "cnn_tiny" and len(meta["averaged_from"]) == 3
    checked = 0
    for key, tensor in averaged.items():
        if tensor.is_floating_point():
            expected = 0.25 * states[0][key] + 0.25 * states[1][key] + 0.5 * states[2][key]
            torch.testing.assert_close(tensor, expected)
            checked += 1
        else:  # counters are the first run's, not a mean
            assert torch.equal(tensor, states[0][key])
    assert checked > 4
    loaded = load_model(out)  # the same path `tinykd eval/export/quantize` take
    x = torch.randn(2, 1, 28, 28)
    assert loaded.model(x).shape == (2, 10)


def test_average_of_hf_runs_also_writes_a_hugging_face_directory(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    runs = [_bert_run(tmp_path / f"run{i}", seed=i) for i in range(2)]
    out = tmp_path / "soup"
    summary = average_command(runs, out)
    assert summary["hf_model"] == str(out / "model")
    from_tinykd = load_model(out).model.eval()
    from_hf = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = from_tinykd(input_ids=ids, attention_mask=mask).logits
        b = from_hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b)
    first = load_model(runs[0]).model.eval()
    with torch.no_grad():
        assert not torch.allclose(first(input_ids=ids, attention_mask=mask).logits, a)


def test_average_refuses_what_cannot_be_averaged(tmp_path: Path) -> None:
    a, b = _cnn_run(tmp_path / "a", 0), _cnn_run(tmp_path / "b", 1)
    other = _cnn_run(tmp_path / "c", 2, name="cnn_small")
    with pytest.raises(TinykdError, match="at least two"):
        average_command([a], tmp_path / "o1")
    with pytest.raises(TinykdError, match="one architecture"):
        average_command([a, other], tmp_path / "o2")
    with pytest.raises(TinykdError, match="one per model"):
        average_command([a, b], tmp_path / "o3", weights="1")
    with pytest.raises(TinykdError, match="does not exist"):
        average_command([a, tmp_path / "missing.safetensors"], tmp_path / "o4")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(TinykdError, match="not empty"):
        average_command([a, b], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    broken = _cnn_run(tmp_path / "nan", 3)
    tensors, meta = read_tensors(broken / "checkpoints" / "best.safetensors")
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first][...] = float("nan")
    from tinykd.models.checkpoint import write_tensors

    write_tensors(tensors, broken / "checkpoints" / "best.safetensors", meta)
    with pytest.raises(TinykdError, match="not finite"):
        average_command([a, broken], tmp_path / "o5")
    assert read_meta(a / "checkpoints" / "best.safetensors")["model"] == "cnn_tiny"


@pytest.mark.parametrize("text", ["1,x", "-1,2", "0,0", "nan,1", "inf,1"])
def test_bad_weights_are_one_line(text: str) -> None:
    with pytest.raises(TinykdError, match="--weights"):
        parse_weights(text, 2)


def test_cli_average_bad_input_is_one_line(cli, tmp_path: Path) -> None:
    a = _cnn_run(tmp_path / "a", 0)
    proc = cli("average", str(a), "--out", str(tmp_path / "soup"))
    assert proc.returncode == 2
    assert "at least two" in proc.stderr and "Traceback" not in proc.stderr
    b = _cnn_run(tmp_path / "b", 1)
    proc = cli("average", str(a), str(b), "--out", str(tmp_path / "soup"), check=True)
    assert "mean of 2 models" in proc.stdout
