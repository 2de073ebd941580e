"""MkDocs hook: the reference pages are written from tinykd's own objects at build time, so they cannot drift.

A page holds a marker such as `<!-- generated: cli -->`; `on_page_markdown` replaces it with what the code says:
the typer app's commands and options, the recipe schema's fields, the registered loss terms, models, datasets and
tasks, the built-in recipes, and the docstrings of the names `tinykd` exports. tests/test_docs.py calls the same
functions.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def cell(text: object) -> str:
    """One markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def type_name(annotation: Any) -> str:
    """A readable type: `int`, `str | None`, `'fp32' | 'bf16'`, `list[int]`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def first_paragraph(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n\n")[0]


# ---- the command line --------------------------------------------------------------------------------------------


def cli_commands() -> dict[str, Any]:
    """{name: click command} of the `tinykd` typer app."""
    import typer.main

    from tinykd.cli import app

    return dict(typer.main.get_command(app).commands)


def option_type(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        return type_name(descriptor.annotation)
    return cell(getattr(param, "type", ""))


def cli_markdown() -> str:
    lines = ["Every command of `tinykd`, from the typer app in `tinykd.cli` (as `tinykd CMD --help` says it).", ""]
    for name, command in sorted(cli_commands().items()):
        lines += [f"## `tinykd {name}`", "", inspect.cleandoc(command.help or ""), ""]
        if not command.params:
            lines += ["No options.", ""]
            continue
        lines += ["| argument or option | type | default | what it does |", "|---|---|---|---|"]
        for param in command.params:
            names = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
            if type(param).__name__.endswith("Argument"):
                names = f"`{param.name.upper()}`" + ("" if param.required else " (optional)")
            default = "required" if param.required else ("" if param.default in (None, (), []) else param.default)
            default_text = f"`{default}`" if default not in ("", "required") else default
            lines.append(f"| {names} | {cell(option_type(param))} | {cell(default_text)} | {cell(param.help or '')} |")
        lines.append("")
    return "\n".join(lines)


# ---- the recipe schema -------------------------------------------------------------------------------------------


def constraints(field: Any) -> str:
    """`(> 0, <= 100)`, ... from pydantic's annotated-types metadata."""
    marks = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length", "pattern": "matches"}
    found = []
    for meta in field.metadata:
        for attr, sign in marks.items():
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return f"({', '.join(found)})" if found else ""


def nested_model(annotation: Any) -> tuple[type | None, str]:
    """The section class inside a field's type, and how it is held: "" (itself), "list" or "map"."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        found, how = nested_model(arg)
        if found is not None:
            return found, {list: "list", dict: "map"}.get(origin, how)  # type: ignore[call-overload]
    return None, ""


def shown(value: Any) -> str:
    """A default as a recipe would write it: sections as plain mappings."""
    if isinstance(value, dict):
        return repr({k: v.model_dump(exclude_none=True) if hasattr(v, "model_dump") else v for k, v in value.items()})
    return repr(value)


def recipe_fields() -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) of every recipe field, each section followed by its fields."""
    from pydantic_core import PydanticUndefined

    from tinykd.recipes.schema import Recipe

    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type, prefix: str) -> None:
        for key, field in model.model_fields.items():
            dotted = f"{prefix}{key}"
            sub, how = nested_model(field.annotation)
            if field.default is not PydanticUndefined:
                default = repr(field.default)
            elif field.default_factory is not None:
                default = "(its defaults)" if sub is not None and not how else shown(field.default_factory())
            else:
                default = "required"
            about = " ".join(x for x in (field.description or "", constraints(field)) if x)
            if sub is not None:
                about = about or first_paragraph(sub.__doc__)
            type_text = {"": "section", "list": "list of sections", "map": "map of NAME: section"}[how] if sub else ""
            if model is Recipe and key == "model":
                rows.append((dotted, "section", default, "the same as `student` (give one of the two)"))
                continue
            rows.append((dotted, type_text or type_name(field.annotation), default, about))
            if sub is not None:
                walk(sub, dotted + {"": ".", "list": "[].", "map": ".NAME."}[how])

    walk(Recipe, "")
    return rows


def recipe_markdown() -> str:
    from tinykd.recipes.schema import LossTermSpec, Recipe

    lines = [
        "Every field of a recipe, from the pydantic schema in `tinykd.recipes.schema`. Every section forbids "
        "unknown keys. `student` and `model` are the same section (give one). An entry of `loss_terms` is "
        "`NAME: {type: TERM, weight: W, ...}`: `type` defaults to `NAME`, and the other keys are the term's "
        "parameters (see the loss terms page). " + first_paragraph(LossTermSpec.__doc__),
        "",
        first_paragraph(Recipe.__doc__),
        "",
        "| field | type | default | what it does |",
        "|---|---|---|---|",
    ]
    for key, type_text, default, about in recipe_fields():
        default_text = f"`{default}`" if default and not default.startswith(("required", "(")) else default
        lines.append(f"| `{key}` | {cell(type_text)} | {cell(default_text)} | {cell(about)} |")
    return "\n".join(lines) + "\n"


# ---- loss terms, registries, built-in recipes -----------------------------------------------------------------------


def loss_terms() -> dict[str, type]:
    import tinykd  # noqa: F401  (registers the built-in terms)
    from tinykd.losses import LOSSES

    return {name: LOSSES.get(name) for name in LOSSES}


def losses_markdown() -> str:
    lines = ["Every registered loss term (`tinykd.LOSSES`), with its constructor's parameters: what a recipe's "
             "`loss_terms` entry may set besides `type` and `weight`.", ""]  # fmt: skip
    for name, cls in loss_terms().items():
        lines += [f"## `{name}`", "", inspect.cleandoc(cls.__doc__ or ""), ""]
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        if not params:
            lines += ["No parameters.", ""]
            continue
        lines += ["| parameter | type | default |", "|---|---|---|"]
        for p in params:
            annotation = "" if p.annotation is inspect.Parameter.empty else str(p.annotation)
            default = "required" if p.default is inspect.Parameter.empty else f"`{p.default!r}`"
            lines.append(f"| `{p.name}` | {cell(annotation)} | {cell(default)} |")
        lines.append("")
    return "\n".join(lines)


def registries() -> dict[str, list[str]]:
    import tinykd  # noqa: F401
    from tinykd.data.datasets import DATASETS
    from tinykd.models import list_models
    from tinykd.tasks import TASKS

    return {"models": list_models(), "datasets": list(DATASETS), "tasks": list(TASKS)}


def registries_markdown() -> str:
    found = registries()
    return "\n".join([
        "The names the registries hold, read from them when this page was built.",
        "",
        "## Models",
        "",
        "Besides these names, `timm:NAME` (`kwargs: {pretrained: true}` for timm's pretrained weights), "
        "`torchvision:NAME` and `hf:NAME` (a Hugging Face model type, hub id or local directory) build models "
        "from those libraries. `tinykd.register_model` adds your own.",
        "",
        ", ".join(f"`{n}`" for n in found["models"]),
        "",
        "## Datasets",
        "",
        "Besides these names, `hf:DATASET[/CONFIG]` loads a Hugging Face hub dataset (text).",
        "",
        ", ".join(f"`{n}`" for n in found["datasets"]),
        "",
        "## Tasks (`data.task`)",
        "",
        ", ".join(f"`{n}`" for n in found["tasks"]),
        "",
    ])  # fmt: skip


def builtin_recipes() -> dict[str, str]:
    """{name: the first line of its file} of every built-in recipe."""
    from tinykd.recipes import builtin_recipes as found

    return {name: path.read_text().splitlines()[0].lstrip("# ").strip() for name, path in sorted(found().items())}


def recipes_markdown() -> str:
    lines = ["Usable by name wherever a recipe file is expected (`tinykd train NAME`, `tinykd.run(\"NAME\")`); "
             "`tinykd recipes` prints the same list.", "", "| recipe | what it is |", "|---|---|"]  # fmt: skip
    lines += [f"| `{name}` | {cell(first)} |" for name, first in builtin_recipes().items()]
    return "\n".join(lines) + "\n"


# ---- the Python API ----------------------------------------------------------------------------------------------


def api_markdown() -> str:
    import tinykd

    lines = ["The names `import tinykd` exports (`tinykd.__all__`), with their docstrings.", ""]
    for name in tinykd.__all__:
        obj = getattr(tinykd, name)
        if name.startswith("__") or not callable(obj):
            about = f"`{obj!r}`." if not hasattr(obj, "list") else (
                "The registry of loss terms by name: `tinykd.LOSSES.list()`; `@tinykd.register_loss(NAME)` adds one."
            )  # fmt: skip
            lines += [f"## `tinykd.{name}`", "", about, ""]
            continue
        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = "(...)"
        kind = "class" if inspect.isclass(obj) else "def"
        lines += [f"## `tinykd.{name}`", "", "```python", f"{kind} {name}{signature}", "```", "",
                  inspect.cleandoc(obj.__doc__ or "")]  # fmt: skip
        if inspect.isclass(obj):
            methods = [(m, f) for m, f in vars(obj).items() if not m.startswith("_") and callable(f) and f.__doc__]
            if methods:
                lines += ["", "| method | what it does |", "|---|---|"]
                lines += [f"| `{m}` | {cell(first_paragraph(f.__doc__))} |" for m, f in methods]
        lines.append("")
    return "\n".join(lines)


def module_summaries() -> dict[str, str]:
    """{module file under src/tinykd: the first sentence of its docstring} for every module of the package."""
    import ast
    from pathlib import Path

    import tinykd

    root = Path(tinykd.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.relative_to(root).as_posix()] = first_paragraph(doc)
    return found


def modules_markdown() -> str:
    lines = ["| module | what it is for (its docstring) |", "|---|---|"]
    lines += [f"| `{name}` | {cell(doc)} |" for name, doc in module_summaries().items()]
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "modules": modules_markdown,
    "cli": cli_markdown,
    "recipe": recipe_markdown,
    "losses": losses_markdown,
    "registries": registries_markdown,
    "recipes": recipes_markdown,
    "api": api_markdown,
}


def expand(markdown: str) -> str:
    """The page with each marker replaced by its generated text (an unknown marker is an error)."""

    def one(match: re.Match[str]) -> str:
        if match[1] not in GENERATORS:
            raise KeyError(f"unknown generated section '{match[1]}'; known: {', '.join(GENERATORS)}")
        return GENERATORS[match[1]]()

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand(markdown)
