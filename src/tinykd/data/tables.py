"""Text tables: csv, tsv, jsonl/json or parquet files and hub datasets read with Hugging Face `datasets`, and
their columns checked (every mistake is one line naming the file and the column, before any training)."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tinykd.errors import TinykdError, close_matches

TEXT_COLUMNS = ("text", "sentence", "content", "review")
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# --- reading tables ----------------------------------------------------------------------------------------------


def offline() -> bool:
    """`TINYKD_OFFLINE` or Hugging Face's own offline switches: nothing may be fetched from the network."""
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no", "off")
               for v in ("TINYKD_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))  # fmt: skip


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


def read_labels(table: Any, column: str, source: str) -> np.ndarray:
    """A column of integer class labels >= 0 as int64; every other content is an error naming a row."""
    import pyarrow as pa

    if column not in table.column_names:
        near = close_matches(column, table.column_names)
        raise TinykdError(f"{source} has no label column '{column}' (data.label_column){near}; columns: "
                          f"{_columns(table)}")  # fmt: skip
    values = table.data.column(column)
    if values.null_count:
        row = next(i for i, v in enumerate(values.to_pylist()) if v is None)
        raise TinykdError(f"{source}: column '{column}' has no label in row {row + 1}; every sample needs one")
    if pa.types.is_integer(values.type):
        labels = values.to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_floating(values.type):
        floats = values.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(floats != np.round(floats))
        if len(bad):
            row = int(bad[0])
            raise TinykdError(f"{source}: column '{column}' holds the label {float(floats[row]):g} in row {row + 1}; "
                              "labels must be integers 0, 1, ...: one per class")  # fmt: skip
        labels = floats.astype(np.int64)
    else:
        example = next((v for v in values.to_pylist() if v is not None), None)
        kind = "text" if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else values.type
        raise TinykdError(f"{source}: column '{column}' holds {kind} labels (e.g. {example!r}), not integers; "
                          "labels must be integers 0, 1, ...: map each class name to its number")  # fmt: skip
    if len(labels) and labels.min() < 0:
        row = int(np.argmax(labels < 0))
        raise TinykdError(f"{source}: column '{column}' holds the negative label {labels[row]} in row {row + 1}; "
                          "labels must be integers 0, 1, ...: one per class")  # fmt: skip
    return labels
