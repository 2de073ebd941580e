"""The teacher cache: exact (a student from an fp32 cache equals the online run bit for bit), refused when stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tinykd
from conftest import run_here as cli
from tinykd.distill.cache import TeacherCache, _logits_from_topk, batch_key
from tinykd.models.checkpoint import save_model


def _recipe(folder: Path, cache: str | None, hint: bool = True, **teacher: Any) -> Path:
    recipe = {
        "name": "cache", "seed": 2,
        "data": {"name": "digits", "batch_size": 32, "val_size": 0.15, "augment": True},
        "teacher": {"name": "cnn_small", "checkpoint": "teacher.safetensors", **teacher},
        "student": {"name": "cnn_tiny"},
        "loss_terms": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5},
                       "hint": {"type": "fitnet", "weight": 0.1, "student": "stage2", "teacher": "stage2"}},
        "train": {"epochs": 2, "max_steps_per_epoch": 6, "log_every": 3},
        # channels_last: the teacher must see its inputs as in training when a cache is filled ahead
        "runtime": {"threads": 1, "channels_last": True}, "measure": {"enabled": False},
    }  # fmt: skip
    if cache is not None:
        recipe["teacher"]["cache"] = cache
    if not hint:  # logits only: no teacher taps
        del recipe["loss_terms"]["hint"]
    path = folder / f"r-{cache or 'online'}-{len(teacher)}{'' if hint else '-nohint'}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    teacher = tinykd.create_model("cnn_small", num_classes=10, in_channels=1)
    save_model(teacher, folder / "teacher.safetensors", {"model": "cnn_small", "num_classes": 10, "in_channels": 1})
    return folder


def _student(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def _losses(run: Path) -> list[Any]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss")) for r in records if r["event"] == "train"]


def test_a_student_from_an_fp32_cache_equals_the_online_run_bit_for_bit(folder: Path) -> None:
    online = cli("distill", str(_recipe(folder, None)), "--out", "online", cwd=folder)
    assert online.returncode == 0, online.stderr
    filling = cli("distill", str(_recipe(folder, "cache32")), "--out", "fill", cwd=folder)
    assert filling.returncode == 0, filling.stderr
    assert "0 batches read, 12 computed by the teacher and added" in filling.stdout
    cached = cli("distill", str(_recipe(folder, "cache32")), "--out", "cached", cwd=folder)
    assert cached.returncode == 0, cached.stderr
    assert "12 batches read, 0 computed" in cached.stdout  # the teacher never ran in training
    want = _student(folder / "online")
    for run in ("fill", "cached"):
        got = _student(folder / run)
        assert all(torch.equal(got[k], want[k]) for k in want), run
        assert _losses(folder / run) == _losses(folder / "online")
    report = json.loads((folder / "cached" / "report.json").read_text())
    assert report["teacher_cache"]["batches_read"] == 12 and report["teacher_cache"]["batches_computed"] == 0
    shards = list((folder / "cache32").glob("shard-*.safetensors"))
    stored = load_file(str(shards[0]))
    assert {"keys", "logits", "tap.stage2"} <= set(stored) and stored["logits"].dtype == torch.float32


def test_cache_teacher_fills_ahead_and_a_stale_cache_is_refused_in_one_line(folder: Path) -> None:
    filled = cli("cache-teacher", str(_recipe(folder, "ahead")), cwd=folder)
    assert filled.returncode == 0, filled.stderr
    assert "12 computed" in filled.stdout and "MiB per epoch" in filled.stdout
    again = cli("distill", str(_recipe(folder, "ahead")), "--out", "from-ahead", cwd=folder)
    assert again.returncode == 0 and "12 batches read, 0 computed" in again.stdout, again.stderr
    if (folder / "online").is_dir():  # filled ahead by another command, still the online run's student exactly
        want, got = _student(folder / "online"), _student(folder / "from-ahead")
        assert all(torch.equal(got[k], want[k]) for k in want)
    other_seed = cli("distill", str(_recipe(folder, "ahead")), "--set", "seed=3", "--out", "x", cwd=folder)
    assert other_seed.returncode == 2 and len(other_seed.stderr.strip().splitlines()) == 1
    assert "was filled for another seed (2, this run: 3)" in other_seed.stderr
    no_aug = cli("distill", str(_recipe(folder, "ahead")), "--set", "data.augment=false", "--out", "y", cwd=folder)
    assert no_aug.returncode == 2 and "another training set" in no_aug.stderr
    bf16 = cli("distill", str(_recipe(folder, "ahead", precision="bf16")), "--out", "z", cwd=folder)
    assert bf16.returncode == 2 and "another teacher number format" in bf16.stderr
    torch.manual_seed(1)
    other = tinykd.create_model("cnn_small", num_classes=10, in_channels=1)
    save_model(other, folder / "other.safetensors", {"model": "cnn_small", "num_classes": 10, "in_channels": 1})
    other_teacher = f"teacher.checkpoint={folder / 'other.safetensors'}"
    swapped = cli("distill", str(_recipe(folder, "ahead")), "--set", other_teacher, "--out", "w", cwd=folder)
    assert swapped.returncode == 2 and "another teacher's weights" in swapped.stderr
    (folder / "junk").mkdir()
    (folder / "junk" / "a.txt").write_text("x")
    junk = cli("distill", str(_recipe(folder, "junk")), "--out", "v", cwd=folder)
    assert junk.returncode == 2 and "not empty and has no manifest.json" in junk.stderr


def test_a_cache_with_more_taps_serves_a_logits_only_run_read_only(folder: Path) -> None:
    assert cli("cache-teacher", str(_recipe(folder, "wide")), cwd=folder).returncode == 0
    shards = sorted(p.name for p in (folder / "wide").iterdir())
    logits_only = str(_recipe(folder, "wide", hint=False))
    online = cli("distill", str(_recipe(folder, None, hint=False)), "--out", "kd-online", cwd=folder)
    cached = cli("distill", logits_only, "--out", "kd-wide", cwd=folder)
    assert online.returncode == 0 and cached.returncode == 0, online.stderr + cached.stderr
    assert "12 batches read, 0 computed" in cached.stdout
    want, got = _student(folder / "kd-online"), _student(folder / "kd-wide")
    assert all(torch.equal(got[k], want[k]) for k in want)  # the extra taps change nothing
    longer = cli("distill", logits_only, "--set", "train.epochs=3", "--out", "kd-longer", cwd=folder)
    assert longer.returncode == 0, longer.stderr
    assert "12 batches read, 6 computed by the teacher not added (read-only" in longer.stdout
    assert sorted(p.name for p in (folder / "wide").iterdir()) == shards  # nothing written to it
    fill = cli("cache-teacher", logits_only, "--set", "train.epochs=3", cwd=folder)
    assert fill.returncode == 2 and len(fill.stderr.strip().splitlines()) == 1
    assert "holds more teacher taps (stage2)" in fill.stderr
    assert cli("cache-teacher", str(_recipe(folder, "narrow", hint=False)), cwd=folder).returncode == 0
    wider = cli("distill", str(_recipe(folder, "narrow")), "--out", "hint-narrow", cwd=folder)
    assert wider.returncode == 2 and "another teacher taps ([], this run: ['stage2'])" in wider.stderr


@pytest.mark.parametrize("fmt", ["fp16", "topk"])
def test_compressed_caches_train_close_to_the_online_run(folder: Path, fmt: str) -> None:
    recipe = _recipe(folder, f"cache-{fmt}", cache_format=fmt, cache_topk=3)
    first = cli("distill", str(recipe), "--out", f"{fmt}-1", cwd=folder)
    second = cli("distill", str(recipe), "--out", f"{fmt}-2", cwd=folder)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "12 batches read, 0 computed" in second.stdout
    size = sum(p.stat().st_size for p in (folder / f"cache-{fmt}").glob("shard-*"))
    full = sum(p.stat().st_size for p in (folder / "cache32").glob("shard-*"))
    assert size < full
    if (folder / "online").is_dir():  # the first step reads the exact teacher, later ones the stored values
        online, compressed = _losses(folder / "online"), _losses(folder / f"{fmt}-2")
        assert all(abs(a[1] - b[1]) < 0.5 for a, b in zip(online, compressed, strict=True))


def test_topk_logits_keep_the_top_probabilities_and_spread_the_rest() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0, 2.0]])
    p = torch.softmax(logits, -1)
    top_p, top_i = p.topk(2, -1)
    rebuilt = torch.softmax(_logits_from_topk(top_p, top_i, 5), -1)
    assert torch.allclose(rebuilt[0, [0, 4]], p[0, [0, 4]], atol=1e-6)
    rest = (1 - top_p.sum()) / 3
    assert torch.allclose(rebuilt[0, [1, 2, 3]], rest.expand(3), atol=1e-6)


def test_batch_keys_depend_on_the_indices_and_their_order() -> None:
    assert batch_key([1, 2, 3]) == batch_key(torch.tensor([1, 2, 3]))
    assert batch_key([1, 2, 3]) != batch_key([3, 2, 1]) and batch_key([1, 2]) != batch_key([1, 2, 3])
    assert TeacherCache  # the class the runs use


def test_a_run_reads_the_shards_a_filler_beside_it_writes(tmp_path: Path) -> None:
    from tinykd.data import TensorImageDataset

    torch.manual_seed(0)
    teacher = tinykd.create_model("cnn_tiny", num_classes=10, in_channels=1)
    data = TensorImageDataset(torch.randint(0, 255, (64, 1, 28, 28), dtype=torch.uint8), torch.arange(64) % 10,
                              (0.5,), (0.5,))  # fmt: skip
    reader = TeacherCache.open(tmp_path / "c", teacher, data, 0, [], 10)
    filler = TeacherCache.open(tmp_path / "c", teacher, data, 0, [], 10)  # another process, the same cache
    logits = torch.randn(8, 10)
    filler.add(batch_key(range(8)), logits, {})
    assert reader.lookup(batch_key(range(8))) is None
    filler.flush()
    assert reader.refresh() == 1 and torch.equal(reader.lookup(batch_key(range(8)))["logits"], logits)
    assert torch.equal(filler.lookup(batch_key(range(8)))["logits"], logits)  # the filler now reads its shard
    assert reader.refresh() == 0
