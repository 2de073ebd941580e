"""tinykd's layers point one way: no import cycle anywhere in `src/tinykd`, read from the source itself.

Every `import` and `from ... import` statement counts, at module level and inside functions (a lazy import
still runs, only later). Two graphs are checked: modules, and the top-level parts of the package (`recipes`,
`losses`, `engine`, `run`, ...), so that a cycle through two different modules of two parts is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# What the lower layers must never import: the recipe, the loss terms, the models and the distiller know
# nothing of training, running or compressing.
LOWER = ("tinykd.recipes", "tinykd.losses", "tinykd.models", "tinykd.distill")
UPPER = ("tinykd.compress", "tinykd.run", "tinykd.engine")


def module_names(src: Path = SRC) -> dict[str, Path]:
    """{dotted name: file} for every module of the package (a package is its `__init__.py`)."""
    found = {}
    for path in sorted((src / "tinykd").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The tinykd modules that `name` imports anywhere in its file (`from a import b` is `a.b` if b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {m for m in found if m.split(".")[0] == "tinykd"} - {name}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = module_names(src)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    unknown = {(a, b) for a, targets in graph.items() for b in targets if b not in modules}
    assert not unknown, f"imports of tinykd modules that do not exist: {sorted(unknown)}"
    return graph


def part(module: str) -> str:
    """`tinykd.engine.faults` -> `tinykd.engine`; `tinykd.run` -> `tinykd.run`; `tinykd` -> `tinykd`."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node, or a node importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for a, targets in graph.items():
        parts.setdefault(part(a), set()).update(part(b) for b in targets if part(b) != part(a))
    return parts


def test_no_module_imports_another_in_a_circle() -> None:
    assert cycles(import_graph()) == []


def test_no_part_of_the_package_imports_another_in_a_circle() -> None:
    assert cycles(part_graph(import_graph())) == []


def test_lower_layers_never_import_training_running_or_compression() -> None:
    graph = import_graph()
    bad = sorted((a, b) for a, targets in graph.items() for b in targets
                 if a.startswith(LOWER) and b.startswith(UPPER))  # fmt: skip
    assert bad == []


def test_the_recipe_schema_imports_nothing_of_tinykd_but_errors() -> None:
    assert import_graph()["tinykd.recipes.schema"] <= {"tinykd.errors"}


def test_nothing_inside_imports_the_package_facade() -> None:
    """`tinykd/__init__.py` re-exports the public API; a module importing it would import everything above it."""
    graph = import_graph()
    assert sorted(a for a, targets in graph.items() if "tinykd" in targets and a != "tinykd.__main__") == []


# --- the checker itself must find what it is for ------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "tinykd" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"__init__.py": "", "a.py": "import tinykd.b\n", "b.py": "def f():\n    from tinykd import a\n"},
         [["tinykd.a", "tinykd.b"]]),
        ({"__init__.py": "", "p/__init__.py": "", "p/x.py": "from tinykd.q.y import Y\n", "q/__init__.py": "",
          "q/y.py": "Y = 1\n", "q/z.py": "from tinykd.p import x\n"}, []),
        ({"__init__.py": "", "p/__init__.py": "", "p/x.py": "from . import y\n", "p/y.py": "from .x import X\n"},
         [["tinykd.p.x", "tinykd.p.y"]]),
    ],
)
def test_the_checker_finds_module_cycles(tmp_path: Path, files: dict[str, str], expected: list[list[str]]) -> None:
    assert cycles(import_graph(_tree(tmp_path, files))) == expected


def test_the_checker_finds_cycles_between_parts(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"__init__.py": "", "p/__init__.py": "", "p/x.py": "from tinykd.q.y import Y\n",
                           "q/__init__.py": "", "q/y.py": "Y = 1\n", "q/z.py": "from tinykd.p import x\n"})  # fmt: skip
    assert cycles(import_graph(src)) == []
    assert cycles(part_graph(import_graph(src))) == [["tinykd.p", "tinykd.q"]]


# --- the design page (docs/design.md) stays true ------------------------------------------------------------------

DESIGN = SRC.parent / "docs" / "design.md"
BASE = {"tinykd.errors", "tinykd.version"}


def _design_block(marker: str) -> list[list[str]]:
    text = DESIGN.read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
    return [line.split() for line in block.strip().strip("`").strip().splitlines() if line.strip()]


def _name(short: str) -> str:
    return "tinykd" if short == "tinykd" else f"tinykd.{short}"


def test_every_import_goes_down_the_layers_of_the_design_page() -> None:
    layers: dict[str, int] = {}
    for words in _design_block("layers"):
        assert words[0] == "layer", words
        for short in words[2:]:
            if not short.replace("_", "").isalnum():
                break  # the description starts
            layers[_name(short)] = int(words[1])
    parts = part_graph(import_graph())
    assert sorted(set(parts) - set(layers)) == [], "a part of the package is missing from the design page's layer table"
    upward = sorted((a, b) for a, targets in parts.items() for b in targets if layers[b] >= layers[a])
    assert upward == [], "imports that do not go down the design page's layers"


def test_the_design_page_lists_who_imports_whom() -> None:
    listed = {_name(words[0]): {_name(w) for w in words[2:]} for words in _design_block("imports")}
    actual = {a: targets - BASE for a, targets in part_graph(import_graph()).items()
              if targets - BASE and a not in ("tinykd", "tinykd.__main__")}  # fmt: skip
    assert listed == actual


# --- what a task means lives in tinykd/tasks ----------------------------------------------------------------------

TASK_NAMES = {"classification", "masked-lm", "causal-lm", "seq2seq"}
TASK_LISTS = {"GENERATIVE_TASKS", "TOKEN_TASKS"}
# Modules that may still compare a task's name, each with the reason (none today).
NAMES_ALLOWED: set[str] = set()


def task_name_checks(path: Path) -> list[str]:
    """`line: code` of each comparison with a task's name (==, !=, in, not in; a tuple or set of names counts) and
    each use of a list of task names (GENERATIVE_TASKS, TOKEN_TASKS) in one file."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            values = [e for o in operands for e in (o.elts if isinstance(o, ast.Tuple | ast.List | ast.Set) else [o])]
            if any(isinstance(v, ast.Constant) and v.value in TASK_NAMES for v in values):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        names = [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else \
            [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []  # fmt: skip
        if TASK_LISTS & set(names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_outside_tasks_compares_a_task_name() -> None:
    """Code outside `tinykd/tasks` asks a task what it is (`task.generative`, `task.per_token`, ...): a new task is
    then one file in `tasks/`, not an edit of every module that once listed the four."""
    found = {name: task_name_checks(path) for name, path in module_names().items()
             if not name.startswith("tinykd.tasks") and name not in NAMES_ALLOWED}  # fmt: skip
    assert {name: checks for name, checks in found.items() if checks} == {}


def test_the_task_name_checker_finds_comparisons_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text('from tinykd.data.text import GENERATIVE_TASKS\nif task == "seq2seq" or t in ("causal-lm", "x"):\n'
                    '    pass\nok = task.generative and name != "auto"\n')  # fmt: skip
    assert [line.split(":")[0] for line in task_name_checks(path)] == ["1", "2", "2"]
