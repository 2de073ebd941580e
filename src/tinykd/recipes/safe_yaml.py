"""Reading a recipe file safely: whatever the file holds, the result is data or one line naming the file.

A recipe is a small UTF-8 YAML file. Anything else (a directory, a FIFO, a device, 100 MB, binary data, nesting
that overflows a recursive parser, "billion laughs" aliases, a key written twice, a 5000-digit integer) is
refused before it can cost time or memory, and every failure while parsing becomes a `TinykdError`.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from tinykd.errors import TinykdError

# Recipes are a few sections of a few keys; these limits are far above any real one and far below harm.
MAX_RECIPE_BYTES = 256 << 10  # a bigger "recipe" is a mistake or an attack (and pure-Python YAML parses ~0.5 MB/s)
MAX_DEPTH = 100  # nesting levels, aliases expanded: deeper documents overflow recursive code (pydantic, dumping)
MAX_VALUES = 10_000  # scalars and collections, aliases expanded: stops "billion laughs" documents
MAX_CHARS = 4 * MAX_RECIPE_BYTES  # characters of all scalars, aliases expanded: stops "billion laughs" of long strings
MAX_NUMBER_CHARS = 100  # digits of an integer: sexagesimal ints (1:2:3:...) take quadratic time to build
MAX_MESSAGE_CHARS = 300


class RecipeLimitError(yaml.YAMLError):
    """A document YAML accepts but a recipe must not be: too deep, too big, a repeated key, a self-reference.

    `detail` completes a sentence whose subject is the recipe ("recipe r.yaml " + detail).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (pure Python: the C loader can overflow the C stack on deep nesting) with limits.

    Limits are checked while the document is composed, so hostile input stops early and cheaply:
    nesting deeper than MAX_DEPTH, more than MAX_VALUES values or MAX_CHARS characters once aliases are
    expanded (the tree is built with shared references, but pydantic and the YAML dumper walk it expanded),
    aliases that refer to their own anchor (a cycle), repeated keys in a mapping (PyYAML keeps the last one
    silently), and integers longer than MAX_NUMBER_CHARS. Each node's expanded size is kept by id, so the
    cost is linear in the text, whatever the aliases.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # collections open around the node being composed
        self._values = 0  # values composed so far, aliases expanded
        self._chars = 0  # characters of scalars composed so far, aliases expanded
        self._measured: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, chars, height), expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                if id(target) not in self._measured:
                    raise RecipeLimitError(f"line {line}: alias *{event.anchor} refers to itself (a cycle)")
                values, chars, height = self._measured[id(target)]
                self._count(values, chars, line)
                if self._depth + height > MAX_DEPTH:
                    raise RecipeLimitError(
                        f"nests deeper than {MAX_DEPTH} levels at line {line} (alias *{event.anchor})"
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RecipeLimitError(f"nests deeper than {MAX_DEPTH} levels at line {line}")
        values, chars = self._values, self._chars
        node = super().compose_node(parent, index)
        self._count(1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0, line)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        height = 1 + max((self._measured[id(child)][2] for child in children), default=0)
        self._measured[id(node)] = (self._values - values, self._chars - chars, height)
        return node

    def _count(self, values: int, chars: int, line: int) -> None:
        self._values += values
        self._chars += chars
        if self._values > MAX_VALUES:
            raise RecipeLimitError(f"expands to more than {MAX_VALUES} values at line {line} (too many aliases?)")
        if self._chars > MAX_CHARS:
            raise RecipeLimitError(f"expands to more than {MAX_CHARS} characters at line {line} (too many aliases?)")

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """PyYAML's, refusing numbers too long to be a setting (and slow to build)."""
        if len(node.value) > MAX_NUMBER_CHARS:
            raise RecipeLimitError(
                f"line {node.start_mark.line + 1}: an integer of {len(node.value)} characters is too long "
                f"(at most {MAX_NUMBER_CHARS})"
            )
        return super().construct_yaml_int(node)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", RecipeLoader.construct_yaml_int)


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    """Refuse a key written twice (`train:` twice is a classic silent bug); merge keys (`<<`) may repeat.

    Keys are compared as written, with their resolved tag: `train` and `"train"` are the same key.
    """
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            first = seen[(key.tag, key.value)]
            raise RecipeLimitError(
                f"line {line}: key '{shorten(key.value, 60)}' appears twice (first at line {first})"
            )
        seen[(key.tag, key.value)] = line


def parse_yaml(text: str) -> Any:
    """One YAML document, parsed with `RecipeLoader`'s limits."""
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file, refusing what cannot be one before reading it.

    Not a regular file (a FIFO would block forever, a device never end), bigger than MAX_RECIPE_BYTES,
    not UTF-8 (a UTF-8 BOM is fine; a UTF-16/32 BOM says how to decode), or binary: one-line errors.
    """
    mode = stat_mode(path)
    if mode is None:
        raise recipe_error(path, "does not exist")
    if not stat.S_ISREG(mode):
        raise recipe_error(path, not_regular(mode))
    # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it must not wait for a writer
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise recipe_error(path, f"cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise recipe_error(path, not_regular(info.st_mode))
        if info.st_size > MAX_RECIPE_BYTES:
            raise recipe_error(path, _too_big(str(info.st_size)))
        try:
            raw = f.read(MAX_RECIPE_BYTES + 1)
        except OSError as exc:
            raise recipe_error(path, f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:  # grew since the stat, or a file whose size the system does not know
        raise recipe_error(path, _too_big(f"more than {MAX_RECIPE_BYTES}"))
    return _decode(path, raw)


BOMS = (  # UTF-32 first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)  # fmt: skip
ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16 (as its BOM says)",
                  "utf-32": "UTF-32 (as its BOM says)"}  # fmt: skip


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 (or what a BOM says); the error names the first offending byte, binary data says it is binary."""
    encoding = next((name for bom, name in BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}" if exc.start < len(raw) else "its end"
        raise recipe_error(
            path, f"is not {ENCODING_NAMES[encoding]} text ({where}); a recipe is a UTF-8 text file"
        ) from None
    if "\x00" in text:
        where = f"byte offset {raw.find(bytes(1))}" if encoding == "utf-8" else f"character {text.find(chr(0))}"
        raise recipe_error(path, f"contains NUL ({where}): binary data, not a UTF-8 text file")
    return text


def parse_recipe(path: Path, text: str) -> Any:
    """Parse with `RecipeLoader`; whatever goes wrong (YAML, limits, recursion, memory, a scalar Python cannot
    build) becomes one line naming the file, so the CLI prints it and exits 2 instead of a traceback."""
    try:
        return parse_yaml(text)
    except RecipeLimitError as exc:
        raise recipe_error(path, exc.detail) from None
    except yaml.reader.ReaderError as exc:
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise recipe_error(
            path, f"contains a character YAML does not allow ({char}) at position {exc.position}"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        cause = exc.problem or exc.context or "unknown problem"
        if exc.problem and exc.context:
            context_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            cause = f"{exc.problem} ({exc.context}{context_line})"
        raise recipe_error(path, f"is not valid YAML{where}: {cause}") from None
    except yaml.YAMLError as exc:
        raise recipe_error(path, f"is not valid YAML: {exc}") from None
    except RecursionError:
        raise recipe_error(path, "nests too deeply to parse") from None
    except MemoryError:
        raise recipe_error(path, "is too big to parse (out of memory)") from None
    except Exception as exc:  # ValueError, OverflowError, TypeError... from building a scalar
        raise recipe_error(path, f"cannot be parsed: {type(exc).__name__}: {exc}") from None


def stat_mode(path: Path) -> int | None:
    """The file's mode (symlinks followed), or None when there is nothing there."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the path
        return None
    except OSError as exc:
        raise recipe_error(path, f"cannot be read: {exc.strerror or exc}") from None


def not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory, not a YAML file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "is not a regular file"


def _too_big(size: str) -> str:
    return f"is too big for a recipe ({size} bytes; at most {MAX_RECIPE_BYTES})"


def recipe_error(path: Path, detail: str) -> TinykdError:
    return TinykdError(one_line(f"recipe {shorten(str(path), 120)} {detail}"))


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(message: str) -> str:
    """One printable line of at most MAX_MESSAGE_CHARS: whitespace collapsed, control characters escaped."""
    text = " ".join(message.split())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shorten(text, MAX_MESSAGE_CHARS)
