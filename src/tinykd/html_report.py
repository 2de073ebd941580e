"""`report.html`: one self-contained page per run (or several runs) that opens offline.

Everything is inline: the pictures are PNGs drawn with matplotlib and embedded as data URIs, the style is a
short <style> block, there is no script and no link to fetch. The page shows the recipe and loss formula, the
run's environment, curves from `metrics.jsonl` (total and per-term losses, train and validation accuracy,
learning rate, throughput), the models table of `report.md`, and for classification the per-class accuracy of
teacher and student, both confusion matrices, how often they agree, and test images where they disagree
(`predictions.npz` and `disagreements.png`, written by the run).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from tinykd.errors import TinykdError
from tinykd.report import _cell, _columns, current_keys, ratio

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f3f3f3; } td.num { text-align: right; } img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.lead { font-size: 1.05em; background: #eef5ff; padding: 0.7em 1em; border-left: 4px solid #4a7fd6; }
"""


def _png(fig: Any) -> str:
    """A matplotlib figure as an <img> with a data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _figure(width: float = 10, height: float = 3.2, cols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, cols, i + 1) for i in range(cols)]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (a damaged line is skipped)."""
    path = run_dir / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def curves(records: list[dict[str, Any]]) -> str:
    """Losses (total and per term), accuracy (train, validation), learning rate and throughput against steps."""
    train = [current_keys(r) for r in records if r.get("event") == "train"]
    epochs = [r for r in records if r.get("event") == "epoch" and "val_accuracy" in r]
    if not train:
        return "<p>No training records in metrics.jsonl.</p>"
    steps = [r["step"] for r in train]
    terms = sorted({k for r in train for k in r if k.startswith("loss/")})
    fig, (loss, acc, lr, speed) = _figure(12, 3.0, 4)
    loss.plot(steps, [r["loss"] for r in train], label="total", color="k")
    for term in terms:
        loss.plot(steps, [r.get(term, np.nan) for r in train], label=term[5:])
    loss.set_yscale("log")
    loss.set_title("loss (weighted terms)")
    loss.legend(fontsize=7)
    acc.plot(steps, [100 * r["accuracy"] for r in train], label="train")
    if epochs:
        acc.plot([r["step"] for r in epochs], [100 * r["val_accuracy"] for r in epochs], "o-", label="validation")
    acc.set_title("accuracy (%)")
    acc.legend(fontsize=7)
    lr.plot(steps, [r.get("lr", np.nan) for r in train])
    lr.set_title("learning rate")
    speed.plot(steps, [r.get("samples_per_s", np.nan) for r in train])
    speed.set_title("throughput (samples/s)")
    for ax in (loss, acc, lr, speed):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def models_table(rows: list[dict[str, Any]]) -> str:
    rows = [current_keys(r) for r in rows]
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(header)}</th>" for _, header, _ in columns)
    body = []
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            numeric = key not in ("role", "model", "format")
            cells.append(f"<td{' class=num' if numeric else ''}>{html.escape(_cell(row, key, fmt))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def classification(run_dir: Path, classes: list[str] | None) -> str:
    """Per-class accuracy, confusion matrices and agreement of teacher and student, from predictions.npz."""
    path = run_dir / "predictions.npz"
    if not path.is_file():
        return ""
    with np.load(path) as saved:
        labels, predictions = saved["labels"], {k: saved[k] for k in saved.files if k != "labels"}
    n = int(max(labels.max(initial=0), *(p.max(initial=0) for p in predictions.values()))) + 1
    names = list(classes or [])[:n] or [str(i) for i in range(n)]
    names += [str(i) for i in range(len(names), n)]
    parts = ["<h2>Per class</h2>"]
    fig, (ax,) = _figure(10, 3.2)
    width = 0.8 / max(len(predictions), 1)
    for i, (role, pred) in enumerate(predictions.items()):
        per_class = [100 * float((pred[labels == c] == c).mean()) if (labels == c).any() else np.nan for c in range(n)]
        ax.bar(np.arange(n) + i * width, per_class, width, label=role)
    ax.set_xticks(np.arange(n) + width * (len(predictions) - 1) / 2, names, rotation=30, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, min(ax.get_ylim()[0], 100) - 5), 100)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    parts.append(_png(fig))
    fig, axes = _figure(5.2 * len(predictions), 4.6, len(predictions))
    for ax, (role, pred) in zip(axes, predictions.items(), strict=True):
        matrix = np.zeros((n, n), dtype=np.int64)
        np.add.at(matrix, (labels, pred), 1)
        ax.imshow(matrix, cmap="Blues")
        for (r, c), value in np.ndenumerate(matrix):
            if value:
                ax.text(c, r, str(value), ha="center", va="center", fontsize=6,
                        color="white" if value > matrix.max() / 2 else "black")  # fmt: skip
        ax.set_title(f"{role}: confusion (rows: true class)")
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    fig.tight_layout()
    parts.append(_png(fig))
    if "teacher" in predictions and "student" in predictions:
        teacher, student = predictions["teacher"] == labels, predictions["student"] == labels
        agree = float((predictions["teacher"] == predictions["student"]).mean())
        parts.append(
            f"<h2>Student and teacher</h2><p>Top-1 agreement: <b>{agree:.2%}</b> of {len(labels):,} test samples. "
            f"Both right {int((teacher & student).sum()):,}; only the teacher right {int((teacher & ~student).sum()):,}"
            f"; only the student right {int((~teacher & student).sum()):,}; both wrong "
            f"{int((~teacher & ~student).sum()):,}.</p>"
        )  # fmt: skip
    grid = run_dir / "disagreements.png"
    if grid.is_file():
        data = base64.b64encode(grid.read_bytes()).decode("ascii")
        parts.append("<p>Test images where they disagree (true class, teacher's and student's predictions):</p>"
                     f'<img alt="disagreements" src="data:image/png;base64,{data}">')  # fmt: skip
    return "\n".join(parts)


def run_section(run_dir: Path) -> str:
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise TinykdError(f"{run_dir} has no report.json: give a finished run folder")
    try:
        report = current_keys(json.loads(report_path.read_text()))
    except json.JSONDecodeError as exc:
        raise TinykdError(f"{report_path} is not valid JSON ({exc.msg})") from None
    recipe = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").is_file() else ""
    rows = report.get("models", [])
    by_role = {r.get("role"): r for r in rows}
    lead = ""
    student, teacher = by_role.get("student"), by_role.get("teacher")
    if student and teacher and student.get("test_accuracy") is not None:
        lead = (f"The student reaches <b>{student['test_accuracy']:.2%}</b> test accuracy against the teacher's "
                f"{teacher['test_accuracy']:.2%}")  # fmt: skip
        fewer, faster = ratio(teacher, student, "params"), ratio(teacher, student, "latency_ms_p50")
        if fewer:
            lead += f", with {fewer:.1f}x fewer parameters"
        if faster:
            lead += f" and {faster:.1f}x faster at batch 1"
        lead = f'<p class="lead">{lead}.</p>'
    env = [f"device: {report.get('device', '?')}", f"epochs: {report.get('epochs')}",
           f"training: {report.get('train_seconds')} s ({report.get('train_samples_per_s')} samples/s)",
           f"whole run: {report.get('total_seconds')} s"]  # fmt: skip
    where = report.get("environment") or {}
    if where:
        env.insert(0, f"run on: {where.get('run')} ({where.get('machine')}, {where.get('cpus')} CPUs)")
        env.append("versions: " + ", ".join(f"{k} {v}" for k, v in where.get("versions", {}).items()))
    if report.get("time_breakdown"):
        from tinykd.engine.log import describe_breakdown

        env.append(describe_breakdown(report["time_breakdown"]))
    classes = report.get("classes")  # the run writes them for classification
    return "\n".join([
        f"<h1>{html.escape(str(report.get('name', run_dir.name)))} <small>({html.escape(str(run_dir))})</small></h1>",
        lead,
        f"<p><b>Loss</b> = <code>{html.escape(str(report.get('loss', '')))}</code> on "
        f"{html.escape(str(report.get('dataset', '')))}; best validation accuracy "
        f"{report.get('best_val_accuracy', float('nan')):.2%} at epoch {report.get('best_epoch')}.</p>",
        "<h2>Models on the test set</h2>", models_table(rows),
        "<h2>Training</h2>", curves(read_metrics(run_dir)),
        classification(run_dir, classes),
        "<h2>Environment</h2><ul>" + "".join(f"<li>{html.escape(e)}</li>" for e in env) + "</ul>",
        f"<h2>Recipe</h2><pre>{html.escape(recipe)}</pre>",
    ])  # fmt: skip


def pareto(rows: list[dict[str, Any]]) -> str:
    """compare's accuracy-against-latency plot (marker shape by fp32/PTQ/QAT/pruned), inline."""
    import tempfile

    from tinykd.compress.compare import plot_accuracy_latency

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pareto.png"
        if not plot_accuracy_latency(rows, path):
            return ""
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="accuracy against latency" src="data:image/png;base64,{data}">'


def write_story_page(out: str | Path, title: str, story: str, rows: list[dict[str, Any]],
                     run_dirs: list[Path]) -> Path:  # fmt: skip
    """The demo's one page: the whole story (teacher, scratch, distilled, int8) in one table and one plot, then
    each run's own section."""
    sections = [f"<h1>{html.escape(title)}</h1>", f'<p class="lead">{html.escape(story)}</p>',
                "<h2>Teacher and students on the test set</h2>", models_table(rows), pareto(rows)]  # fmt: skip
    sections += [run_section(d) for d in run_dirs]
    return _write_page(Path(out), title, "<hr>".join(sections))


def _write_page(out: Path, title: str, body: str) -> Path:
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def write_html_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """One page for one run (default: RUN/report.html) or for several (give `out`)."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise TinykdError("give at least one run folder")
    for d in dirs:
        if not d.is_dir():
            raise TinykdError(f"{d} is not a run folder")
    if out is None:
        if len(dirs) > 1:
            raise TinykdError("several runs go into one page: give --out PAGE.html")
        out = dirs[0] / "report.html"
    sections = [run_section(d) for d in dirs]
    return _write_page(Path(out), "tinykd: " + ", ".join(d.name for d in dirs), "<hr>".join(sections))
