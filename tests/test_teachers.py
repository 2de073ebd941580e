"""Several teachers in one recipe, and born-again chains of a student distilled from its own earlier run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import run_tinykd as cli
from tinykd import Distiller, create_model
from tinykd.distill.ensemble import TeacherEnsemble
from tinykd.errors import TinykdError
from tinykd.losses import build_loss_term, kd_loss
from tinykd.models.checkpoint import save_model
from tinykd.recipes import load_recipe


def _teachers() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [create_model("cnn_tiny", num_classes=10, in_channels=1) for _ in range(2)]


def test_the_ensemble_gives_the_weighted_mean_of_its_teachers_logits() -> None:
    a, b = _teachers()
    x = torch.randn(4, 1, 28, 28)
    a.eval(), b.eval()
    ensemble = TeacherEnsemble([a, b], [1.0, 3.0])
    assert torch.allclose(ensemble(x), 0.25 * a(x) + 0.75 * b(x), atol=1e-6)
    with pytest.raises(ValueError, match="one positive weight per teacher"):
        TeacherEnsemble([a, b], [1.0, 0.0])


def test_terms_read_the_mean_or_one_teacher_and_each_teacher_keeps_its_precision() -> None:
    a, b = _teachers()
    ensemble = TeacherEnsemble([a, b]).cast([torch.bfloat16, None])
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loss_terms = {"kd_mean": build_loss_term("kd", {"temperature": 2.0}),
                  "kd_1": build_loss_term("kd", {"temperature": 2.0, "teacher": "1"}),
                  "dkd_0": build_loss_term("dkd", {"teacher": "0", "warmup": 0})}  # fmt: skip
    distiller = Distiller(ensemble, student, loss_terms, example_inputs=x)
    assert next(a.parameters()).dtype == torch.bfloat16 and next(b.parameters()).dtype == torch.float32
    assert not ensemble.training and not any(p.requires_grad for p in ensemble.parameters())
    assert not {id(p) for p in distiller.trainable_parameters()} & {id(p) for p in ensemble.parameters()}
    distiller.eval()
    logits, losses = distiller(x, y)
    with torch.no_grad():
        t_a, t_b = a(x.bfloat16()).float(), b(x)
    assert torch.allclose(losses["kd_mean"], kd_loss(logits, (t_a + t_b) / 2, 2.0), atol=1e-5)
    assert torch.allclose(losses["kd_1"], kd_loss(logits, t_b, 2.0), atol=1e-5)
    with pytest.raises(TinykdError, match="no module '7'"):
        Distiller(ensemble, student, {"kd": build_loss_term("kd", {"teacher": "7"})}, example_inputs=x)
    with pytest.raises(TinykdError, match="gives shape"):
        Distiller(ensemble, student, {"kd": build_loss_term("kd", {"teacher": "0.stage1"})}, example_inputs=x)


def test_a_recipe_takes_teacher_or_teachers_not_both(tmp_path: Path) -> None:
    base = {"data": {"name": "digits"}, "student": {"name": "cnn_tiny"}, "loss_terms": {"kd": {}}}
    one = {"name": "cnn_tiny", "checkpoint": "a.safetensors"}
    recipe = load_recipe({**base, "teachers": [one, {**one, "weight": 2.0}]})
    assert [t.weight for t in recipe.teachers] == [1.0, 2.0] and len(recipe.teacher_specs) == 2
    with pytest.raises(TinykdError, match="either 'teacher' \\(one\\) or 'teachers'"):
        load_recipe({**base, "teacher": one, "teachers": [one]})
    with pytest.raises(TinykdError, match="teachers"):
        load_recipe({**base, "teachers": []})
    with pytest.raises(TinykdError, match="weight"):
        load_recipe({**base, "teachers": [{**one, "weight": -1}]})


# --- through the command line -------------------------------------------------------------------------------------




def _recipe(**extra: Any) -> dict[str, Any]:
    return {"name": "t", "seed": 1, "data": {"name": "digits", "batch_size": 64, "val_size": 0.15},
            "student": {"name": "cnn_tiny"}, "train": {"epochs": 2, "max_steps_per_epoch": 5},
            "runtime": {"threads": 1}, "measure": {"enabled": False}, **extra}  # fmt: skip


def test_distill_from_two_teachers_through_the_cli(tmp_path: Path) -> None:
    for i, teacher in enumerate(_teachers()):
        save_model(teacher, tmp_path / f"t{i}.safetensors", {"model": "cnn_tiny", "num_classes": 10, "in_channels": 1})
    recipe = _recipe(teachers=[{"name": "cnn_tiny", "checkpoint": "t0.safetensors", "precision": "bf16"},
                               {"name": "cnn_tiny", "checkpoint": "t1.safetensors", "weight": 2.0}],
                     loss_terms={"ce": {"weight": 0.5}, "kd": {"weight": 0.5}, "kd1": {"type": "kd", "teacher": "1"}})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = cli("distill", "r.yaml", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["models"][0]["model"] == "cnn_tiny + cnn_tiny"
    assert "kd1(temperature=4.0, teacher='1')" in report["loss"]
    recipe["teachers"][1]["checkpoint"] = "missing.safetensors"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    bad = cli("distill", "bad.yaml", "--out", "bad", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing.safetensors" in bad.stderr


def test_born_again_generations_chain_and_continue(tmp_path: Path) -> None:
    first = create_model("cnn_tiny", num_classes=10, in_channels=1)
    save_model(first, tmp_path / "gen0.safetensors", {"model": "cnn_tiny", "num_classes": 10, "in_channels": 1})
    recipe = _recipe(teacher={"name": "cnn_tiny", "checkpoint": "gen0.safetensors"},
                     loss_terms={"ce": {"weight": 0.5}, "kd": {"weight": 0.5}})  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = cli("distill", "r.yaml", "--generations", "3", "--out", "ban", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "ban" / "generations.json").read_text())
    assert [r["generation"] for r in rows] == [1, 2, 3] and [r["teacher"] for r in rows] == ["given", "gen1", "gen2"]
    for k in (2, 3):  # generation k's teacher is generation k - 1's student, as tested there
        saved = yaml.safe_load((tmp_path / "ban" / f"gen{k}" / "recipe.yaml").read_text())
        assert saved["teacher"]["checkpoint"] == str(tmp_path / "ban" / f"gen{k - 1}")
        assert rows[k - 1]["teacher_test_accuracy"] == rows[k - 2]["test_accuracy"]
    assert "| 3 | gen2 |" in proc.stdout
    (tmp_path / "ban" / "gen3" / "report.json").unlink()  # as if generation 3 had been interrupted at its end
    again = cli("distill", "r.yaml", "--generations", "3", "--out", "ban", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "generation 1: finished earlier, kept" in again.stdout and "generation 3: resuming" in again.stdout
    bad = cli("distill", "r.yaml", "--generations", "0", "--out", "x", cwd=tmp_path)
    assert bad.returncode == 2 and "--generations must be >= 1" in bad.stderr
