"""Property test: no recipe, however malformed, gets a traceback.

Hypothesis mutates a valid recipe (wrong types, unknown keys, negative or huge numbers, empty lists, wrong
nesting, bad paths, deleted keys) and runs `tinykd train|distill RECIPE --dry-run` in-process. Each must
either pass the dry run (exit 0) or fail with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import examples
from tinykd.cli import main

BASE = {
    "name": "fuzz",
    "seed": 0,
    "data": {"name": "digits", "batch_size": 16, "val_size": 0.1},
    "student": {"name": "cnn_tiny"},
    "loss_terms": {"ce": {"weight": 1.0}},
    "train": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": {"name": "cosine"}},
    "runtime": {"device": "cpu"},
    "measure": {"enabled": False},
}
PATHS = [
    ("name",), ("seed",), ("data",), ("data", "name"), ("data", "batch_size"), ("data", "val_size"),
    ("data", "root"), ("data", "train_subset"), ("data", "augment"), ("data", "download"), ("data", "num_workers"),
    ("student",), ("student", "name"), ("student", "checkpoint"), ("student", "kwargs"), ("teacher",),
    ("teacher", "name"), ("teacher", "checkpoint"), ("teacher", "precision"), ("loss_terms",), ("loss_terms", "ce"),
    ("loss_terms", "ce", "weight"), ("loss_terms", "kd"), ("loss_terms", "kd", "temperature"),
    ("loss_terms", "hint"), ("loss_terms", "hint", "type"), ("loss_terms", "hint", "student"), ("train",),
    ("train", "epochs"), ("train", "optimizer"), ("train", "optimizer", "lr"), ("train", "optimizer", "name"),
    ("train", "schedule", "name"), ("train", "schedule", "milestones"), ("train", "grad_clip"),
    ("train", "log_every"), ("train", "checkpoint_every"), ("train", "keep_checkpoints"), ("train", "nonfinite"),
    ("train", "max_skipped_steps"), ("runtime",), ("runtime", "device"), ("runtime", "precision"),
    ("runtime", "threads"),
    ("measure", "latency_repeats"), ("model",), ("bogus",), ("data", "bogus"), ("train", "optimizer", "bogus"),
]  # fmt: skip
WORDS = ["", "cpu", "xla", "cuda", "kd", "fitnet", "ce", "mse", "at", "digits", "fashion-mnist", "imagefolder",
         "cifar10", "resnet8", "cnn_tiny", "timm:nope", "torchvision:resnet18", "stage2", "layer3", "/nonexistent",
         "../..", "bf16", "fp16", "onecycle", "adamw", "sgd", "~", "a.b.c", "\x00", "é", "null", "stop",
         "skip"]  # fmt: skip

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WORDS), st.text(max_size=12),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(WORDS), inner, max_size=3)),
                      max_leaves=6)  # fmt: skip
mutation = st.tuples(st.sampled_from(["set", "delete", "wrap"]), st.sampled_from(PATHS), values)


def mutate(recipe: dict, op: str, path: tuple[str, ...], value: object) -> None:
    node = recipe
    for key in path[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        return
    if op == "set":
        node[path[-1]] = value
    elif op == "delete":
        node.pop(path[-1], None)
    elif path[-1] in node:
        node[path[-1]] = [node[path[-1]]]  # wrong nesting


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])  # fmt: skip
@given(mutations=st.lists(mutation, min_size=1, max_size=3), command=st.sampled_from(["train", "distill"]))
def test_malformed_recipes_never_crash(tmp_path: Path, mutations: list, command: str) -> None:
    recipe = copy.deepcopy(BASE)
    for op, path, value in mutations:
        mutate(recipe, op, path, value)
    file = tmp_path / "recipe.yaml"
    try:
        file.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not a YAML document at all; covered by the YAML error tests
    err = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([command, str(file), "--dry-run", "--out", str(tmp_path / "run")])
            code = 0
        except SystemExit as exc:
            code = exc.code
    torch.set_num_threads(threads)
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), (code, recipe, err.getvalue())
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("tinykd: error: "), (recipe, err.getvalue())
