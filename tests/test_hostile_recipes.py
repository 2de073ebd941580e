"""Hostile recipes: whatever the file holds, `tinykd train FILE --dry-run` prints one line and exits 2, fast.

The end-to-end cases run the real CLI in a subprocess (a traceback, a hang or a memory blow-up only shows
there) under an address-space limit, and check its exit code, its stderr, its wall time (against the
interpreter's own start-up, measured once) and its peak memory (against the start-up's). The in-process
cases check the messages and the limits of `load_recipe` and `apply_override` quickly.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import THREADS
from tinykd.errors import TinykdError
from tinykd.recipes import load_recipe
from tinykd.recipes.load import apply_override
from tinykd.recipes.safe_yaml import MAX_DEPTH, MAX_RECIPE_BYTES, MAX_VALUES, parse_yaml

ROOT = Path(__file__).resolve().parents[1]
VALID = "data:\n  name: digits\nstudent:\n  name: cnn_tiny\n"
ADDRESS_SPACE = 8 << 30  # a normal `--dry-run` maps about 4 GiB (torch's libraries); a blow-up hits this
TIME_BUDGET = 5.0  # seconds a hostile case may take beyond the interpreter's start-up
MEMORY_MARGIN = 512 << 20  # bytes of peak RSS a hostile case may use beyond the start-up's
LAUGHS = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else '"lol"'] * 10) + "]\n" for i in range(9))
# the same inside a value: without a limit, describing the wrong type of `seed` repr()s 10**9 strings
LAUGHS_SEED = VALID + "seed: [" + ", ".join(line.split(": ", 1)[1] for line in LAUGHS.splitlines()) + "]\n"
BAD_BYTE = len(VALID) + 9  # where 0xe9 sits in VALID + b"name: caf\xe9"
DEEP_BLOCK = "".join(" " * i + "a:\n" for i in range(1000)) + " " * 1000 + "x\n"  # 1-space indents, 1000 deep


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_tinykd(args: list[str], cwd: Path, timeout: float) -> Finished:
    """`python -m tinykd ARGS` with its own wall time and peak RSS (`os.wait4` reports that child's alone)."""
    env = dict(os.environ, TINYKD_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(THREADS), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "tinykd", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, preexec_fn=_limit_memory)  # fmt: skip
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                pytest.fail(f"tinykd {' '.join(a[:80] for a in args)} still running after {timeout:.0f} s")
            time.sleep(0.005)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", "replace") for f in (out, err))
    return Finished(proc.returncode, stdout, stderr, seconds, usage.ru_maxrss * 1024)


@pytest.fixture(scope="module")
def startup(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """A trivial command: the time and memory every run pays before it reads a recipe."""
    done = run_tinykd(["recipes"], tmp_path_factory.mktemp("startup"), timeout=300)
    assert done.code == 0, done.stderr
    return done


def _write(text: str | bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        path = tmp / "recipe.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return [str(path)]

    return make


def _huge_file(tmp: Path) -> list[str]:
    path = tmp / "recipe.yaml"
    path.write_text(VALID)
    os.truncate(path, 100 * 10**6)  # sparse: fast to make, 100 MB to read
    return [str(path)]


def _directory(tmp: Path) -> list[str]:
    (tmp / "recipe.yaml").mkdir()
    return [str(tmp / "recipe.yaml")]


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "recipe.yaml")  # opening it for reading would wait forever for a writer
    return [str(tmp / "recipe.yaml")]


def _deep_override(tmp: Path) -> list[str]:
    (tmp / "recipe.yaml").write_text(VALID)
    return [str(tmp / "recipe.yaml"), "--set", "data.name=" + "[" * 100_000]


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {  # name: (make the arguments, expected in stderr)
    "deep-flow-sequence": (_write("data: " + "[" * 100_000), "nests deeper than 100 levels at line 1"),
    "deep-flow-mapping": (_write("data: " + "{a: " * 10_000), "nests deeper than 100 levels at line 1"),
    "deep-block-mapping": (_write(DEEP_BLOCK), "is too big for a recipe"),
    "deep-block-sequence": (_write("data:\n" + "- " * 1000 + "x\n"), "nests deeper than 100 levels at line 2"),
    "billion-laughs": (_write(LAUGHS_SEED), f"expands to more than {MAX_VALUES} values at line 5"),
    "100-MB-file": (_huge_file, "is too big for a recipe (100000000 bytes"),
    "binary": (_write(b"\x00\x01" + random.Random(0).randbytes(4096)), "UTF-8 text file"),
    "invalid-utf8": (_write(VALID.encode() + b"name: caf\xe9\n"), f"not UTF-8 text (byte 0xe9 at offset {BAD_BYTE})"),
    "nul-bytes": (_write(VALID.encode() + bytes(16)), f"contains NUL (byte offset {len(VALID)})"),
    "directory": (_directory, "is a directory, not a YAML file"),
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "duplicate-keys": (_write(VALID + "data:\n  name: mnist\n"), "line 5: key 'data' appears twice (first at line 1)"),
    "5000-digit-seed": (_write(VALID + "seed: " + "9" * 5000 + "\n"), "integer of 5000 characters is too long"),
    "python-tag": (_write(VALID + "x: !!python/object/apply:os.system ['true']\n"), "not valid YAML at line 5"),
    "tab-indent": (_write("data:\n\tname: digits\n"), "not valid YAML at line 2: found character '\\t'"),
    "unclosed-quote": (_write(VALID + "name: 'run\n"), "not valid YAML at line 6: found unexpected end of stream"),
    "document-then-garbage": (_write("---\n]]] {{ :: ,\n"), "not valid YAML at line 2"),
    "deep-set-value": (_deep_override, "--set data.name: the value nests deeper than 100 levels"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_recipe_is_one_line_exit_2(case: str, tmp_path: Path, startup: Finished) -> None:
    make, expected = CASES[case]
    args = make(tmp_path)
    done = run_tinykd(["train", *args, "--dry-run"], tmp_path, timeout=startup.seconds + TIME_BUDGET + 30)
    lines = done.stderr.splitlines()
    assert done.code == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("tinykd: error: ") and expected in lines[0], lines[0]
    assert "recipe.yaml" in lines[0] or "--set" in expected, lines[0]
    assert done.seconds < startup.seconds + TIME_BUDGET, (done.seconds, startup.seconds)
    assert done.peak_rss < startup.peak_rss + MEMORY_MARGIN, (done.peak_rss >> 20, startup.peak_rss >> 20)


def test_valid_recipe_with_bom_passes_the_dry_run_under_the_same_limits(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    done = run_tinykd(["train", "recipe.yaml", "--dry-run"], tmp_path, timeout=300)
    assert done.code == 0, done.stderr[-3000:]
    assert "dry run" in done.stdout and "recipe, data" in done.stdout, done.stdout


# In-process: the messages, the limits, and that what is valid still loads.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: " + "[" * 100_000, r"nests deeper than 100 levels at line 1$"),
        ("data:\n" + "".join(" " * i + "a:\n" for i in range(1, 150)), r"nests deeper than 100 levels at line 100$"),
        ("a: &a " + "[" * 90 + "]" * 90 + "\nb: " + "[" * 20 + "*a" + "]" * 20, r"deeper than 100 levels .*\*a\)$"),
        (LAUGHS, rf"expands to more than {MAX_VALUES} values at line \d+ \(too many aliases\?\)$"),
        ("s: &s '" + "x" * 200_000 + "'\nl: [" + "*s, " * 10 + "]", r"expands to more than \d+ characters"),
        ("data: [" + "1, " * (MAX_VALUES + 1) + "]", r"expands to more than"),
        ("a: &a [*a]\n", r"line 1: alias \*a refers to itself \(a cycle\)$"),
        ("a: &a {b: {c: *a}}\n", r"line 1: alias \*a refers to itself"),
        (VALID + "data:\n  name: mnist\n", r"line 5: key 'data' appears twice \(first at line 1\)$"),
        ('train: {epochs: 1, "epochs": 2}', r"line 1: key 'epochs' appears twice"),
        (VALID + "seed: " + "9" * 5000, r"line 5: an integer of 5000 characters is too long \(at most 100\)$"),
        (VALID + "seed: 1" + ":1" * 100_000, r"an integer of 200001 characters is too long"),
        (VALID + "x: !!python/object/apply:os.system ['true']", r"not valid YAML at line 5: could not determine"),
        ("data:\n\tname: digits\n", r"not valid YAML at line 2: found character '\\t' that cannot start any token"),
        (VALID + "name: 'run\n", r"not valid YAML at line 6: found unexpected end of stream \(while scanning"),
        ("---\n]]] {{ :: ,\n", r"not valid YAML at line 2"),
        (VALID + "---\n" + VALID, r"not valid YAML at line 5: but found another document"),
        ("a: *nowhere\n", r"not valid YAML at line 1: found undefined alias 'nowhere'"),
        (VALID + "name: a\x01b\n", rf"contains a character YAML does not allow \(#x0001\) at position {BAD_BYTE - 2}$"),
        ("42\n", r"must be a mapping of sections \(data, student, \.\.\.\), not int$"),
        ("- data\n- student\n", r"must be a mapping of sections"),
        ("", r"^recipe is missing 'data'$"),
        ("# only a comment\n", r"^recipe is missing 'data'$"),
    ],
)
def test_load_recipe_messages(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(TinykdError, match=message) as info:
        load_recipe(path)
    assert time.perf_counter() - start < TIME_BUDGET  # a blow-up takes minutes; the machine may be shared
    assert "\n" not in str(info.value) and len(str(info.value)) <= 300
    assert str(info.value).startswith((f"recipe {path} ", "recipe is missing")), str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            VALID.encode() + b"name: caf\xe9\n",
            rf"is not UTF-8 text \(byte 0xe9 at offset {BAD_BYTE}\); a recipe is a UTF-8",
        ),
        (b"\xff\xfe\x00" + random.Random(1).randbytes(999), r"is not UTF-16 \(as its BOM says\) text|NUL|YAML"),
        (VALID.encode() + bytes(3), rf"contains NUL \(byte offset {len(VALID)}\): binary data, not a UTF-8 text file$"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), r"is not UTF-8 text \(byte 0x89 at offset 0\)"),
        (b"a" * (MAX_RECIPE_BYTES + 1), rf"is too big for a recipe \({MAX_RECIPE_BYTES + 1} bytes; at most"),
    ],
)
def test_unreadable_bytes(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "r.yaml").write_bytes(data)
    with pytest.raises(TinykdError, match=message) as info:
        load_recipe(tmp_path / "r.yaml")
    assert "\n" not in str(info.value)


def test_not_regular_files(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(TinykdError, match=r"^recipe .*dir is a directory, not a YAML file$"):
        load_recipe(tmp_path / "dir")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TinykdError, match=r"^recipe .*fifo is a FIFO, not a regular file$"):
        load_recipe(str(tmp_path / "fifo"))
    if Path("/dev/zero").exists():
        with pytest.raises(TinykdError, match=r"^recipe /dev/zero is a device, not a regular file$"):
            load_recipe("/dev/zero")
    with pytest.raises(TinykdError, match="neither a file nor a built-in recipe; built-in: .*fmnist-distill"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "big.yaml").write_text(VALID)
    os.truncate(tmp_path / "big.yaml", 100 * 10**6)
    with pytest.raises(TinykdError, match=r"is too big for a recipe \(100000000 bytes; at most \d+\)$"):
        load_recipe(tmp_path / "big.yaml")


def test_a_file_name_with_a_newline_still_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname\x1b.yaml"
    path.write_text("data: [")
    with pytest.raises(TinykdError, match="is not valid YAML") as info:
        load_recipe(path)
    assert len(str(info.value).splitlines()) == 1 and "\x1b" not in str(info.value)


def test_valid_recipes_still_load(tmp_path: Path) -> None:
    for name, data in [("plain", VALID.encode()), ("bom", b"\xef\xbb\xbf" + VALID.encode()),
                       ("utf16", VALID.encode("utf-16")), ("utf32", VALID.encode("utf-32"))]:  # fmt: skip
        (tmp_path / f"{name}.yaml").write_bytes(data)
        recipe = load_recipe(tmp_path / f"{name}.yaml")
        assert recipe.data.name == "digits" and recipe.trained.name == "cnn_tiny", name
    (tmp_path / "merge.yaml").write_text(
        "data: &d {name: digits}\nstudent: {name: cnn_tiny}\nteacher: {<<: *d, name: resnet8}\ntrain: &t {epochs: 2}\n"
    )
    recipe = load_recipe(tmp_path / "merge.yaml")
    assert recipe.teacher is not None and recipe.teacher.name == "resnet8" and recipe.train.epochs == 2
    assert load_recipe("fmnist-distill").teacher is not None  # built-in names still resolve


def test_aliases_within_the_limits_are_fine() -> None:
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert parse_yaml(f"a: {deep}") is not None
    assert len(parse_yaml("x: &x [1, 2, 3]\ny: [*x, *x, *x]")["y"]) == 3
    assert parse_yaml("a: &a 1\nb: *a\n") == {"a": 1, "b": 1}


def test_overrides_use_the_safe_loader() -> None:
    data: dict = {}
    apply_override(data, "a.b=[1, {c: 2}]")
    apply_override(data, "a.raw=[unclosed")  # not YAML: kept as written, as always
    apply_override(data, "a.tag=!!python/object/apply:os.system ['true']")
    assert data == {"a": {"b": [1, {"c": 2}], "raw": "[unclosed", "tag": "!!python/object/apply:os.system ['true']"}}
    for value, message in [("[" * 100_000, r"--set a.b: the value nests deeper than 100 levels at line 1$"),
                           ("9" * 5000, r"--set a.b: the value line 1: an integer of 5000 characters is too long"),
                           ("{x: 1, x: 2}", r"--set a.b: the value line 1: key 'x' appears twice"),
                           ("x" * (MAX_RECIPE_BYTES + 1), r"--set a.b: the value is \d+ characters long")]:  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(TinykdError, match=message):
            apply_override({}, f"a.b={value}")
        assert time.perf_counter() - start < TIME_BUDGET  # a blow-up takes minutes; the machine may be shared


def test_loader_is_the_pure_python_safe_one() -> None:
    from tinykd.recipes.safe_yaml import RecipeLoader

    assert issubclass(RecipeLoader, yaml.SafeLoader) and not issubclass(RecipeLoader, getattr(yaml, "CSafeLoader", ()))


def test_unusable_paths_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(VALID + 'teacher: {name: resnet8, checkpoint: "a\\0b"}\n')
    with pytest.raises(TinykdError, match=r"^recipe key 'teacher.checkpoint': 'a\\x00b' is not a usable path"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text(VALID)
    with pytest.raises(TinykdError, match=r"^--set data.root: '~no-such-user-tinykd/x' is not a usable path"):
        load_recipe(tmp_path / "r.yaml", ["data.root=~no-such-user-tinykd/x"])
