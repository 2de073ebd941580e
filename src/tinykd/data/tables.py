"""Text tables: csv, tsv, jsonl/json or parquet files and hub datasets read with Hugging Face `datasets`, and
their columns checked (every mistake is one line naming the file and the column, before any training)."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tinykd.errors import TinykdError, close_matches
from tinykd.hub import offline

TEXT_COLUMNS = ("text", "sentence", "content", "review")
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# --- reading tables ----------------------------------------------------------------------------------------------



@contextmanager
def quiet_datasets() -> Iterator[None]:
    """`datasets` draws a progress bar per split it generates; a run's output has no use for them."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def read_table(path: str | Path) -> Any:
    """A csv, tsv, jsonl/json or parquet file as a `datasets.Dataset`, in memory.

    tsv is read with no quote processing: SST-2's sentences hold quote characters that are text, not quoting.
    The parse goes through a throw-away cache folder, so a file edited in place is never served from a stale cache.
    """
    import datasets

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TinykdError(f"{path}: unknown file type '{path.suffix}'; text files must end in "
                          f"{', '.join(FORMATS)}")  # fmt: skip
    if not path.is_file():
        raise TinykdError(f"{path} does not exist; give an existing {path.suffix} file")
    if path.stat().st_size == 0:
        raise TinykdError(f"{path} is empty; it needs a header (or fields) and at least one row")
    options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix.lower() == ".tsv" else {}
    if kind == "csv":
        check_fields(path, options)
    with tempfile.TemporaryDirectory(prefix="tinykd-") as cache, quiet_datasets():
        try:
            loaded = datasets.load_dataset(kind, data_files=str(path), keep_in_memory=True, cache_dir=cache,
                                           split="train", **options)  # fmt: skip
        except Exception as exc:  # any parse error of any backend: the user's file, one line
            cause = exc.__cause__ or exc
            if "corresponds to no data" in str(exc):
                raise TinykdError(f"{path} has no rows; it needs at least one sample") from None
            raise TinykdError(f"{path} could not be read as {path.suffix.lstrip('.')}: "
                              f"{type(cause).__name__}: {first_line(cause)}") from None  # fmt: skip
    if len(loaded) == 0:
        raise TinykdError(f"{path} has no rows; it needs at least one sample")
    return loaded


def check_fields(path: Path, options: dict[str, Any]) -> None:
    """Every row of a csv or tsv file has as many fields as its header. The parser would not say so: a first row
    with one field more makes the header's first name an index and shifts every column by one (the texts read
    as labels), and a later one stops it with a C error."""
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f, **options)
        header = next(rows, [])
        for number, row in enumerate(rows, start=1):
            if row and len(row) != len(header):
                quote = "" if options else "; a text that holds a comma must be in double quotes"
                raise TinykdError(f"{path}: row {number} (line {rows.line_num}) has {len(row)} fields but the header "
                                  f"has {len(header)} ({', '.join(header)}){quote}")  # fmt: skip


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def hf_cached(name: str) -> bool:
    """Whether `datasets` holds the hub dataset `name` in its cache (the folder its offline fallback reads)."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    folder = Path(config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(p.is_dir() for p in folder.glob("*/*/*"))


def load_hf(spec: str, download: bool, label_column: str,
            needs_labels: bool) -> tuple[Any, Any, list[str] | None, str, str]:  # fmt: skip
    """`DATASET[/CONFIG]` or `OWNER/DATASET/CONFIG` from the hub: (train, test, class names or None, train's name,
    test's name).

    Fetched only with `download` (or when already cached); offline, a name that is not cached is an error. The
    test split is `test` unless the task `needs_labels` and its labels are all missing or negative (GLUE hides
    them), then `validation`.
    """
    import datasets

    parts = spec.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise TinykdError(f"data.name 'hf:{spec}' must be hf:DATASET, hf:DATASET/CONFIG or hf:OWNER/DATASET/CONFIG "
                          "(CONFIG 'default' for a dataset without configurations)")  # fmt: skip
    name, config = ("/".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (spec, None)
    if not hf_cached(name):
        if offline():
            raise TinykdError(f"hub dataset '{name}' is not in the Hugging Face datasets cache and TINYKD_OFFLINE or "
                              "HF_HUB_OFFLINE is set; load it once online, or use data.name: text with "
                              "files")  # fmt: skip
        if not download:
            raise TinykdError(f"hub dataset '{name}' is not in the Hugging Face datasets cache; set data.download=true "
                              "to fetch it, or use data.name: text with files")  # fmt: skip
    with quiet_datasets():
        try:
            loaded = datasets.load_dataset(name, config)
        except Exception as exc:  # a wrong name, config or connection: one line
            raise TinykdError(f"could not load hub dataset 'hf:{spec}': {type(exc).__name__}: "
                              f"{first_line(exc)}") from None  # fmt: skip
    splits = list(loaded)
    if "train" not in loaded:
        raise TinykdError(f"hub dataset 'hf:{spec}' has no train split (splits: {', '.join(splits)})")
    train = loaded["train"]
    test_name = next((s for s in ("test", "validation") if s in loaded), None)
    if test_name == "test" and "validation" in loaded and needs_labels \
            and not _has_labels(loaded["test"], label_column):  # fmt: skip
        test_name = "validation"  # GLUE hides its test labels (-1)
    if test_name is None:
        raise TinykdError(f"hub dataset 'hf:{spec}' has no test or validation split (splits: {', '.join(splits)})")
    feature = train.features.get(label_column)
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return train, loaded[test_name], names, f"hf:{spec} (train)", f"hf:{spec} ({test_name})"


def _has_labels(table: Any, column: str) -> bool:
    """Whether a split has any real label in `column`: not absent, not all missing, not all negative."""
    if column not in table.column_names:
        return False
    return any(isinstance(v, int | float) and v >= 0 for v in table.data.column(column).to_pylist())


# --- checking columns --------------------------------------------------------------------------------------------


def _columns(table: Any) -> str:
    return ", ".join(table.column_names) or "none"


def text_column(table: Any, wanted: str | None, source: str, setting: str = "data.text_column") -> str:
    """The text column: the one asked for, else the first of TEXT_COLUMNS that the table has."""
    if wanted is not None:
        if wanted not in table.column_names:
            raise TinykdError(f"{source} has no column '{wanted}' ({setting})"
                              f"{close_matches(wanted, table.column_names)}; columns: {_columns(table)}")  # fmt: skip
        return wanted
    found = next((c for c in TEXT_COLUMNS if c in table.column_names), None)
    if found is None:
        raise TinykdError(f"{source} has no text column (looked for {', '.join(TEXT_COLUMNS)}); columns: "
                          f"{_columns(table)}; set {setting}")  # fmt: skip
    return found


def read_texts(table: Any, column: str, source: str, setting: str = "data.text_column") -> list[str]:
    """A column of strings; a missing value is an empty text, a column of anything else is an error."""
    import pyarrow as pa

    if column not in table.column_names:
        raise TinykdError(f"{source} has no column '{column}' ({setting}); columns: {_columns(table)}")
    values = table.data.column(column)
    if pa.types.is_null(values.type) or values.null_count == len(values):  # csv reads a column of blanks as numbers
        return [""] * len(table)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise TinykdError(f"{source}: column '{column}' holds {values.type}, not text; set {setting} to the column "
                          f"of texts (columns: {_columns(table)})")  # fmt: skip
    return [v or "" for v in values.to_pylist()]


def read_labels(table: Any, column: str, source: str) -> np.ndarray | list[str]:
    """A column of class labels: integers >= 0 (as int64), or class names (a list of str, given ids by
    `label_ids`); every other content is an error naming a row."""
    import pyarrow as pa

    if column not in table.column_names:
        near = close_matches(column, table.column_names)
        raise TinykdError(f"{source} has no label column '{column}' (data.label_column){near}; columns: "
                          f"{_columns(table)}")  # fmt: skip
    values = table.data.column(column)
    if values.null_count:
        row = next(i for i, v in enumerate(values.to_pylist()) if v is None)
        raise TinykdError(f"{source}: column '{column}' has no label in row {row + 1}; every sample needs one")
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        names = [str(v).strip() for v in values.to_pylist()]
        if "" in names:
            raise TinykdError(f"{source}: column '{column}' has an empty label in row {names.index('') + 1}; every "
                              "sample needs one")  # fmt: skip
        return names
    if pa.types.is_integer(values.type):
        labels = values.to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_floating(values.type):
        floats = values.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(floats != np.round(floats))
        if len(bad):
            row = int(bad[0])
            raise TinykdError(f"{source}: column '{column}' holds the label {float(floats[row]):g} in row {row + 1}; "
                              "labels must be class ids 0, 1, ... or class names")  # fmt: skip
        labels = floats.astype(np.int64)
    else:
        example = next((v for v in values.to_pylist() if v is not None), None)
        raise TinykdError(f"{source}: column '{column}' holds {values.type} labels (e.g. {example!r}); labels must "
                          "be class ids 0, 1, ... or class names")  # fmt: skip
    if len(labels) and labels.min() < 0:
        row = int(np.argmax(labels < 0))
        raise TinykdError(f"{source}: column '{column}' holds the negative label {labels[row]} in row {row + 1}; "
                          "labels must be class ids 0, 1, ... or class names")  # fmt: skip
    return labels


def label_ids(labels: dict[str, np.ndarray | list[str]], names: list[str] | None,
              column: str) -> tuple[dict[str, np.ndarray], list[str] | None]:  # fmt: skip
    """Class names turned into ids, as `datasets`' ClassLabel does: in the order of `names` (data.label_names)
    when given, else sorted; ids pass through. Returns the ids per file, and the class names (None: ids only)."""
    named = {source: isinstance(values, list) for source, values in labels.items()}
    if not any(named.values()):
        return labels, names  # type: ignore[return-value]
    if not all(named.values()):
        ids, text = next(s for s, n in named.items() if not n), next(s for s, n in named.items() if n)
        raise TinykdError(f"column '{column}' holds class ids in {ids} but class names in {text}; write the labels "
                          "of both files the same way")  # fmt: skip
    first = next(iter(labels))
    given = "data.label_names" if names else f"the classes of {first}"
    names = list(names) if names else sorted(set(labels[first]))  # type: ignore[arg-type]
    index = {name: i for i, name in enumerate(names)}
    ids = {}
    for source, values in labels.items():
        unknown = next((row for row, v in enumerate(values) if v not in index), None)
        if unknown is not None:
            raise TinykdError(f"{source}: column '{column}' holds the class '{values[unknown]}' in row {unknown + 1}, "
                              f"which is not one of {given} ({', '.join(names)})")  # fmt: skip
        ids[source] = np.array([index[v] for v in values], dtype=np.int64)
    return ids, names
