"""Load a recipe from YAML (a file or a built-in name), apply `--set` overrides, validate.

Relative paths written in a recipe file are relative to that file, so a recipe
and its teacher checkpoint can travel together; paths given with `--set` are
relative to the current directory, as on any command line. A built-in recipe's
paths name its shipped files (the Fashion-MNIST teacher) where those exist, and
otherwise the current directory (`runs/sst2-teacher`: where the recipe that
makes it writes), never the installed package's folder.
"""

from __future__ import annotations

import copy
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import pydantic
import yaml

from tinykd.errors import TinykdError
from tinykd.recipes.safe_yaml import (
    MAX_RECIPE_BYTES,
    RecipeLimitError,
    not_regular,
    one_line,
    parse_recipe,
    parse_yaml,
    read_recipe_text,
    recipe_error,
    shorten,
    stat_mode,
)
from tinykd.recipes.schema import Recipe, section_fields

PATH_FIELDS = (("teacher", "checkpoint"), ("student", "checkpoint"), ("model", "checkpoint"), ("data", "root"),
               ("data", "train"), ("data", "test"), ("teacher", "cache"))  # fmt: skip

def builtin_recipes() -> dict[str, Path]:
    """Built-in recipes shipped inside the package: {name: path}."""
    folder = resources.files("tinykd.recipes") / "builtin"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def resolve_recipe_path(source: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in recipe.

    A directory, FIFO or device passed as the recipe gets its own message: "neither a file nor a built-in" would
    send the user looking for a typo that is not there.
    """
    path = Path(source)
    mode = stat_mode(path) if str(source) else None  # Path("") is ".", a directory: say "no such recipe"
    if mode is not None and stat.S_ISREG(mode):
        return path
    builtins = builtin_recipes()
    if str(source) in builtins:
        return builtins[str(source)]
    if mode is not None:
        raise recipe_error(path, not_regular(mode))
    raise TinykdError(
        f"recipe '{source}' is neither a file nor a built-in recipe; built-in: {', '.join(sorted(builtins))}"
    )


def load_recipe(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem becomes a one-line `TinykdError`."""
    if isinstance(source, dict):
        data, base = copy.deepcopy(source), Path.cwd()
    else:
        path = resolve_recipe_path(source)
        data = parse_recipe(path, read_recipe_text(path))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise recipe_error(path, f"must be a mapping of sections (data, student, ...), not {type(data).__name__}")
        base = path.parent
        builtin = path in builtin_recipes().values()
        _resolve_paths(data, base, Path.cwd() if builtin else None)
    for item in overrides or []:
        apply_override(data, item)
    return validate_recipe(data)


def validate_recipe(data: dict[str, Any]) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as exc:
        raise TinykdError(describe_error(exc)) from None
    check_task(recipe)
    check_loss_terms(recipe)
    return recipe


def check_task(recipe: Recipe) -> None:
    """`data.task` names a registered task (the schema, which imports nothing, cannot know them)."""
    from tinykd.tasks import TASKS

    try:
        TASKS.get(recipe.data.task)
    except TinykdError as exc:
        raise TinykdError(f"recipe key 'data.task': {exc}") from None


def check_loss_terms(recipe: Recipe) -> None:
    """Build each term once, so that an unknown term or parameter is an error before anything runs."""
    from tinykd.losses import build_loss_term

    for key, spec in recipe.loss_terms.items():
        build_loss_term(spec.type or key, spec.params())


def describe_error(exc: pydantic.ValidationError) -> str:
    """The first validation error as one line that names the key and says what would be right."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "recipe"
    if err["type"] == "extra_forbidden":
        allowed = section_fields(loc[:-1])
        return f"unknown recipe key '{where}'; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"recipe is missing '{where}'"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"recipe key '{where}': {msg} (got {shown})" if loc else f"recipe: {msg}"


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML: `0.1`, `true`, `[1, 2]`, `null`) to nested dicts."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise TinykdError(one_line(f"--set expects KEY.SUB=VALUE, e.g. train.epochs=3; got '{item}'"))
    if len(raw) > MAX_RECIPE_BYTES:
        raise TinykdError(
            one_line(f"--set {key}: the value is {len(raw)} characters long; at most {MAX_RECIPE_BYTES}")
        )
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except RecipeLimitError as exc:
        raise TinykdError(one_line(f"--set {key}: the value {exc.detail}")) from None
    except (RecursionError, MemoryError) as exc:
        raise TinykdError(one_line(f"--set {key}: the value cannot be parsed ({type(exc).__name__})")) from None
    except Exception:  # not YAML (or a YAML scalar Python cannot build): the value is the text itself, as written
        value = raw
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise TinykdError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    if tuple(parts[-2:]) in PATH_FIELDS and len(parts) == 2 and isinstance(value, str):
        value = _absolute_path(value, Path.cwd(), f"--set {key}", resolve=True)
    node[parts[-1]] = value


def _resolve_paths(data: dict[str, Any], base: Path, fallback: Path | None = None) -> None:
    """Make the recipe's relative paths absolute against `base`, or against `fallback` for a path that is not
    there (a built-in recipe's runs/..., in the current directory)."""

    def absolute(value: str, where: str) -> str:
        found = fallback is None or _exists(base, value)
        return _absolute_path(value, base if found else fallback, where)  # type: ignore[arg-type]

    for section, key in PATH_FIELDS:
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key]:
            sec[key] = absolute(sec[key], f"recipe key '{section}.{key}'")
    teachers = data.get("teachers")
    for i, sec in enumerate(teachers if isinstance(teachers, list) else []):  # each of several teachers' weights
        if isinstance(sec, dict) and isinstance(sec.get("checkpoint"), str) and sec["checkpoint"]:
            sec["checkpoint"] = absolute(sec["checkpoint"], f"recipe key 'teachers.{i}.checkpoint'")
    # Names that may be a folder or a hub id (`hf:./my-bert`, `tokenizer: ../tok`): a folder next to the recipe
    # is made absolute, anything else (`hf:bert`, `bert-base-uncased`) is left as written.
    for section, key, prefix in (("teacher", "name", "hf:"), ("student", "name", "hf:"), ("model", "name", "hf:"),
                                 ("data", "tokenizer", "")):  # fmt: skip
        sec = data.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        if isinstance(value, str) and value.startswith(prefix) and value[len(prefix):]:
            rest = value[len(prefix):]
            if rest.startswith((".", "~")) or (base / rest).is_dir():
                sec[key] = prefix + _absolute_path(rest, base, f"recipe key '{section}.{key}'")


def _exists(base: Path, value: str) -> bool:
    try:
        return (base / Path(value).expanduser()).exists()
    except (ValueError, RuntimeError, OSError):
        return False


def _absolute_path(value: str, base: Path, where: str, resolve: bool = False) -> str:
    """`value` made absolute (`~` expanded, relative to `base`, resolved if relative or if `resolve`).

    A NUL byte, an unknown `~user` or a symlink loop is a one-line error, not a traceback.
    """
    try:
        p = Path(value).expanduser()
        return str((base / p).resolve() if resolve or not p.is_absolute() else p)
    except (ValueError, RuntimeError, OSError) as exc:  # embedded NUL; no such ~user; a path the OS refuses
        raise TinykdError(one_line(f"{where}: '{shorten(value, 60)}' is not a usable path ({exc})")) from None


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, defaults included: what the run really used."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=False), sort_keys=False)
