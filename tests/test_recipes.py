"""Recipes: strict schema, one-line errors, overrides, built-ins, paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tinykd.errors import TinykdError
from tinykd.recipes import builtin_recipes, load_recipe

BASE = {"data": {"name": "digits"}, "student": {"name": "cnn_tiny"}}


def recipe(**sections: object) -> dict:
    return {**BASE, **sections}


def test_defaults_and_alias() -> None:
    r = load_recipe(recipe())
    assert r.trained.name == "cnn_tiny" and r.train.optimizer.name == "sgd" and list(r.loss_terms) == ["ce"]
    r = load_recipe({"data": {"name": "digits"}, "model": {"name": "cnn_small"}})
    assert r.trained.name == "cnn_small"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (recipe(trian={}), r"unknown recipe key 'trian'; allowed here: name, seed, data, teacher, teachers, student"),
        (recipe(train={"epocs": 3}), r"unknown recipe key 'train.epocs'; allowed here: epochs, optimizer"),
        (recipe(train={"epochs": -1}), r"recipe key 'train.epochs': Input should be greater than 0 \(got -1\)"),
        (recipe(train={"optimizer": {"name": "adam"}}), r"'train.optimizer.name': Input should be 'sgd' or 'adamw'"),
        (recipe(runtime={"device": "gpu"}), r"'runtime.device'"),
        ({"student": {"name": "x"}}, r"recipe is missing 'data'"),
        ({"data": {"name": "digits"}}, r"missing 'student' \(or 'model'\)"),
        (recipe(loss_terms={"kd": {"weight": 1, "temp": 2}}), r"loss term 'kd' has no parameter 'temp'"),
        (recipe(loss_terms={"soft": {"type": "kdd"}}), r"unknown loss term 'kdd' \(did you mean: kd, rkd, dkd\?\)"),
        (recipe(loss_terms={}), r"loss_terms is empty"),
        (recipe(loss_terms={"ce": {"weight": -1}}), r"'loss_terms.ce.weight'"),
    ],
)
def test_bad_recipes_are_one_line_errors(data: dict, message: str) -> None:
    with pytest.raises(TinykdError, match=message) as info:
        load_recipe(data)
    assert "\n" not in str(info.value)


def test_overrides_are_typed_and_nested() -> None:
    r = load_recipe(recipe(), ["train.epochs=7", "train.optimizer.lr=0.05", "runtime.channels_last=true",
                               "loss_terms.ce.label_smoothing=0.1"])  # fmt: skip
    assert r.train.epochs == 7 and r.train.optimizer.lr == 0.05 and r.runtime.channels_last
    assert r.loss_terms["ce"].params() == {"label_smoothing": 0.1}
    with pytest.raises(TinykdError, match="--set expects KEY.SUB=VALUE"):
        load_recipe(recipe(), ["train.epochs"])
    with pytest.raises(TinykdError, match="unknown recipe key 'train.epoch'"):
        load_recipe(recipe(), ["train.epoch=3"])
    with pytest.raises(TinykdError, match="is a value, not a section"):
        load_recipe(recipe(), ["data.name.x=1"])


def test_builtin_recipes_validate() -> None:
    found = builtin_recipes()
    assert {"fmnist-teacher", "fmnist-student", "fmnist-distill"} <= set(found)
    for name in found:
        load_recipe(name)


@pytest.mark.parametrize(("name", "limit"), [("fmnist-best-100k", 100_000), ("fmnist-best-10k", 10_000)])
def test_the_size_class_recipes_distil_a_student_of_their_class_from_the_shipped_teacher(name: str, limit: int) -> None:
    from tinykd.models.registry import create_model

    r = load_recipe(name)
    student = create_model(r.student.name, 10, 1, **r.student.kwargs)
    params = sum(p.numel() for p in student.parameters())
    assert limit // 2 < params < limit, params  # the class's size, not a much smaller model
    assert Path(r.teacher.checkpoint) == Path(load_recipe("fmnist-distill").teacher.checkpoint)
    assert r.teacher.precision == "fp32" and set(r.loss_terms) == {"ce", "kd"} and r.train.epochs == 30


def test_paths_in_a_file_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(teacher={"name": "resnet8", "checkpoint": "t.safetensors"})))
    r = load_recipe(path)
    assert Path(r.teacher.checkpoint) == tmp_path / "sub" / "t.safetensors"


def test_a_builtin_recipe_finds_its_shipped_files_and_the_users_runs(tmp_path: Path, monkeypatch) -> None:
    """The shipped teacher lies beside the built-in recipes; `runs/sst2-teacher` is the user's, in the current
    directory (where `tinykd train sst2-teacher --out runs/sst2-teacher` wrote it), not in the installed package."""
    monkeypatch.chdir(tmp_path)
    shipped = Path(load_recipe("fmnist-distill").teacher.checkpoint)
    assert shipped.is_file() and shipped.parent.parent == builtin_recipes()["fmnist-distill"].parent
    assert Path(load_recipe("sst2-distill").teacher.checkpoint) == tmp_path / "runs" / "sst2-teacher"


def test_unreadable_recipes(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(TinykdError, match="not valid YAML at line"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(TinykdError, match="must be a mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(TinykdError, match="neither a file nor a built-in recipe; built-in: .*fmnist-distill"):
        load_recipe("no-such-recipe")
