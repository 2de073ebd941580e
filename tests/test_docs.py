"""Every example in the README and in docs/ runs, so that a renamed command, option or recipe field fails here, not
for a user who copied it.

- Each `tinykd ...` line of a shell block parses against the typer app: the command, every option and the type of
  every value. A `train` or `distill` line whose recipe the tests can load (built in, or written on the same page as
  `# NAME.yaml`) and whose data they have (Fashion-MNIST, faked; digits) also runs, in this process, with
  `--dry-run`: recipe, data, models and loss terms on one batch. `tinykd recipes` runs as written.
- Each YAML block loads as a recipe. A fragment (a section or two, as the guides show them) is laid over a minimal
  recipe first; a block whose lines are alternatives for one key is checked line by line.
- Each Python block runs as written, on its own small data.
- The generated reference pages name every command, every recipe field and every loss term, and the README stays a
  front page: at most 200 lines, the two set-up commands first, no link that breaks on PyPI.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
FILE_HEADER = re.compile(r"^# ([\w.-]+\.yaml)\b")
DATA_WE_HAVE = {"fashion-mnist", "digits"}
RUN_AS_WRITTEN = {"recipes"}


def blocks(page: Path, language: str) -> list[str]:
    """The code blocks of one language on a page, dedented."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        if match[2] == language:
            indent = len(match[1])
            found.append("\n".join(line[indent:] for line in match[3].splitlines()))
    return found


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def tinykd_lines(page: Path) -> list[list[str]]:
    """The argument lists of the `tinykd ...` commands in a page's shell blocks (torchrun's `-m tinykd` too)."""
    found = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "-m" in words and "tinykd" in words[words.index("-m") + 1 : words.index("-m") + 2]:
                words = words[words.index("-m") + 1 :]
            if words[:1] == ["tinykd"] and len(words) > 1:
                found.append(words[1:])
    return found


def page_recipe_files(page: Path) -> dict[str, str]:
    """{file name: text} of the YAML blocks that a page names as files (`# my-distill.yaml: ...`)."""
    return {m[1]: block for block in blocks(page, "yaml") if (m := FILE_HEADER.match(block))}


# ---- YAML blocks load as recipes ------------------------------------------------------------------------------------

MINIMAL = {"data": {"name": "fashion-mnist"}, "student": {"name": "cnn_compact"}}


def recipe_documents(block: str) -> list[dict[str, Any]]:
    """The recipes a YAML block shows: itself, or each line where its lines are alternatives for the same key."""
    keys = re.findall(r"^(\w+):", block, re.M)
    parts = [line for line in block.splitlines() if line.strip()] if len(keys) != len(set(keys)) else [block]
    documents = []
    for part in parts:
        data = yaml.safe_load(part)
        assert isinstance(data, dict), f"a YAML block that is not a mapping: {part[:80]}"
        if "data" not in data:  # a fragment: over a minimal recipe
            base = {k: v for k, v in MINIMAL.items() if not ("model" in data and k == "student")}
            data = {**base, **data}
        documents.append(data)
    return documents


YAML_CASES = [(page, block) for page in PAGES for block in blocks(page, "yaml")]


@pytest.mark.parametrize(("page", "block"), YAML_CASES, ids=[f"{page_id(p)}:{i}" for i, (p, _) in
                                                            enumerate(YAML_CASES)])  # fmt: skip
def test_every_yaml_block_is_a_recipe(page: Path, block: str) -> None:
    from tinykd.recipes import validate_recipe

    for document in recipe_documents(block):
        validate_recipe(document)


# ---- `tinykd ...` lines ---------------------------------------------------------------------------------------------


def parse_command(args: list[str]) -> None:
    """Parse a command line against the typer app without running it: an unknown command or option, or a value of
    the wrong type, raises click's usage error."""
    import typer.main

    from tinykd.cli import app

    commands = typer.main.get_command(app).commands
    assert args[0] in commands, f"no command 'tinykd {args[0]}'; known: {', '.join(sorted(commands))}"
    commands[args[0]].make_context(args[0], list(args[1:]))


def recipe_data_name(source: str, files: dict[str, str]) -> str | None:
    """The dataset a train/distill line's recipe reads, when the tests can load that recipe without a run."""
    from tinykd.recipes import builtin_recipes

    if source in files:
        recipe = yaml.safe_load(files[source])
        teachers = [recipe.get("teacher") or {}, *(recipe.get("teachers") or [])]
        if any(isinstance(t, dict) and t.get("checkpoint") for t in teachers):
            return None  # its teacher is a run the reader makes first
        return recipe["data"]["name"]
    if source in builtin_recipes():
        return yaml.safe_load(builtin_recipes()[source].read_text())["data"]["name"]
    return None


def dry_run_args(args: list[str], files: dict[str, str]) -> list[str] | None:
    """The line as a dry run, or None when it cannot be one here (another command, data the tests lack, a chain
    of generations, a resume)."""
    if args[0] not in ("train", "distill") or {"--resume", "--generations"} & set(args):
        return None
    positional = [a for i, a in enumerate(args[1:], 1) if not a.startswith("-") and not args[i - 1].startswith("-")]
    data = recipe_data_name(positional[0], files) if positional else None
    if data not in DATA_WE_HAVE:
        return None
    small = ["--set", "data.val_size=0.1"] if data == "fashion-mnist" else []  # the fake set has 1,200 images
    return [*args, *small, *([] if "--dry-run" in args else ["--dry-run"])]


CLI_CASES = [(page, args) for page in PAGES for args in tinykd_lines(page)]


@pytest.mark.parametrize(("page", "args"), CLI_CASES, ids=[f"{page_id(p)}:{' '.join(a)[:60]}" for p, a in
                                                          CLI_CASES])  # fmt: skip
def test_every_tinykd_line_parses_and_checks(page: Path, args: list[str], cli: Callable[..., Any],
                                             tmp_path: Path) -> None:  # fmt: skip
    parse_command(args)
    files = page_recipe_files(page)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name in files:
        if name in args:
            from tinykd.recipes import load_recipe

            load_recipe(tmp_path / name)
    line = dry_run_args(args, files) or (list(args) if args[0] in RUN_AS_WRITTEN else None)
    if line is not None:
        cli(*line, check=True)


def test_the_docs_show_the_first_checks() -> None:
    """The lines a newcomer needs are on the pages at all (and so are run above)."""
    lines = {" ".join(args) for page in PAGES for args in tinykd_lines(page)}
    assert any(line.startswith("train digits-quick") for line in lines)
    assert any("--dry-run" in line for line in lines)
    assert {line.split()[0] for line in lines} >= {"train", "distill", "eval", "export", "quantize", "demo"}


# ---- Python blocks run ----------------------------------------------------------------------------------------------

PYTHON_CASES = sorted({block for page in PAGES for block in blocks(page, "python")})


@pytest.mark.parametrize("block", PYTHON_CASES, ids=[f"python-{i}" for i in range(len(PYTHON_CASES))])
def test_every_python_block_runs(block: str, fake_fmnist: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import torch

    from tinykd.models.registry import MODELS

    monkeypatch.setenv("TINYKD_DATA", str(fake_fmnist))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # a block's register_model stays in the block
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(block, "<docs python block>", "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(threads)


# ---- the generated reference, and the README as a front page --------------------------------------------------------


def reference_hook() -> Any:
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_generated_from_the_code() -> None:
    from tinykd.recipes.schema import Recipe

    hook = reference_hook()
    cli_page = hook.cli_markdown()
    for name, command in hook.cli_commands().items():
        assert f"## `tinykd {name}`" in cli_page
        for param in command.params:
            assert all(f"`{opt}`" in cli_page for opt in param.opts if opt.startswith("-")), (name, param.opts)
    fields = {key for key, *_ in hook.recipe_fields()}
    assert set(Recipe.model_fields) <= fields
    assert {"train.grad_clip", "data.eval_batch_size", "data.augment", "data.text_pair_column",
            "data.mlm_probability", "teacher.precision", "runtime.device"} <= fields  # fmt: skip
    losses_page = hook.losses_markdown()
    assert all(f"## `{name}`" in losses_page for name in hook.loss_terms())
    assert "digits-quick" in hook.recipes_markdown() and "resnet8x4" in hook.registries_markdown()
    assert "## `tinykd.register_model`" in hook.api_markdown()
    marked = {m[1] for page in PAGES for m in hook.MARKER.finditer(page.read_text())}
    assert marked == set(hook.GENERATORS), "a generator no page uses, or a page marker with no generator"
    with pytest.raises(KeyError):
        hook.expand("<!-- generated: nothing -->")


def test_the_readme_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = blocks(ROOT / "README.md", "bash")[0].splitlines()
    assert [line.split()[:2] for line in first_block[:2]] == [["make", "demo"], ["make", "test"]]
    assert "pip install" in text and (ROOT / "LICENSE").is_file()
    relative = [link for link in re.findall(r"\]\(([^)]+)\)", text) if not link.startswith(("https://", "http://"))]
    assert relative == [], f"links that break on PyPI, where the README is the package's page: {relative}"


def test_every_benchmark_table_is_stamped() -> None:
    """A measured table says when (date and commit), with which torch and on which hardware."""
    unstamped = []
    for page in sorted((ROOT / "docs").glob("benchmarks*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines[1:], 1):
            if line.strip().startswith("|---") and not lines[i - 2].strip().startswith("|"):
                before = [x for x in lines[max(0, i - 4) : i - 1] if x.strip()]
                if not any("**Recorded**" in x and "torch" in x.lower() for x in before):
                    unstamped.append(f"{page.name}:{i}: {lines[i - 1][:60]}")
    assert unstamped == []
