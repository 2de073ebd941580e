"""Tables of models side by side, for the terminal (rich) and for report.md."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = [  # (key, header, format)
    ("role", "model", "{}"),
    ("model", "architecture", "{}"),
    ("format", "format", "{}"),
    ("test_accuracy", "test acc", "{:.2%}"),
    ("test_perplexity", "test ppl", "{:.2f}"),
    ("test_exact_match", "exact match", "{:.2%}"),
    ("test_rouge_l", "ROUGE-L", "{:.2%}"),
    ("test_map", "mAP@[.5:.95]", "{:.2%}"),
    ("test_map_50", "mAP@.5", "{:.2%}"),
    ("params", "params", "{:,}"),
    ("size_bytes", "size", "size"),
    ("macs", "MACs", "macs"),
    ("latency_ms_p50", "latency b1 p50", "{:.3f} ms"),
    ("throughput_samples_s", "throughput b64", "{:,.0f} samples/s"),
    ("gen_tokens_per_s", "generation b1", "{:,.0f} tok/s"),
    ("first_token_ms", "first token", "{:.2f} ms"),
    ("greedy_agreement", "greedy = PyTorch", "{:.1%}"),
    ("compression", "fewer params", "{:.1f}x"),
    ("size_ratio", "smaller file", "{:.1f}x"),
    ("speedup", "speed-up b1", "{:.1f}x"),
    ("speedup_same_runtime", "speed-up b1, same runtime", "{:.1f}x"),
]


# keys that reports written by older versions use, and their names now: readers accept both
RENAMED = {"throughput_img_s": "throughput_samples_s", "train_img_per_s": "train_samples_per_s",
           "img_per_s": "samples_per_s"}  # fmt: skip


def current_keys(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with the keys of an older report renamed to today's (a run folder written before the rename still
    reads); a key already under its new name wins."""
    return {RENAMED.get(k, k) if RENAMED.get(k, k) not in row else k: v for k, v in row.items()}


def ratio(reference: dict[str, Any], row: dict[str, Any], key: str) -> float | None:
    """reference[key] / row[key]: how many times smaller (fewer params, smaller file) or faster (latency) `row` is
    than `reference`; None when either was not measured."""
    return reference[key] / row[key] if reference.get(key) and row.get(key) else None


def add_ratios(rows: list[dict[str, Any]], reference: dict[str, Any], names: dict[str, str]) -> None:
    """Set each row's ratios against `reference`: `names` maps a ratio's name to the key it divides
    ("compression": "params", "size_ratio": "size_bytes", "speedup": "latency_ms_p50")."""
    for row in rows:
        for name, key in names.items():
            row[name] = ratio(reference, row, key)


RATIOS = {"compression": "params", "size_ratio": "size_bytes", "speedup": "latency_ms_p50"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if fmt == "size":
        return human_bytes(value)
    if fmt == "macs":
        return human_count(value)
    return fmt.format(value)


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(c[0] in r for r in rows)]


def rows_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows (only the columns that some row has)."""
    rows = [current_keys(r) for r in rows]
    cols = _columns(rows)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |" for r in rows]
    return "\n".join(lines)


def report_markdown(title: str, facts: list[str], rows: list[dict[str, Any]]) -> str:
    """A run's report.md: its name, a list of facts, and the table of the models it tested."""
    return "\n".join([f"# {title}", "", *(f"- {fact}" for fact in facts), "", rows_markdown(rows), ""])


def format_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """The rows as a rich table rendered to plain text (so it can be printed, logged or tested)."""
    table = Table(title=title or None)
    rows = [current_keys(r) for r in rows]
    cols = _columns(rows)
    for _, header, fmt in cols:
        table.add_column(header, justify="left" if fmt == "{}" else "right")
    for r in rows:
        table.add_row(*(_cell(r, k, f) for k, _, f in cols))
    console = Console(width=220, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()
