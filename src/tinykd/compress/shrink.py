"""`tinykd shrink`: a transformer with some of its layers, as a Hugging Face directory, DistilBERT-style, and
with its vocabulary cut to the tokens a corpus uses (TextPruner's vocabulary pruning).

The student keeps the teacher's embeddings, the chosen layers (default every other one) and its head, copied
tensor for tensor, so that distillation starts from what the teacher knows rather than from random weights.
With `vocabulary` (a csv, tsv, jsonl or parquet file of texts), only the embedding rows of the tokens those texts
use are kept, and the tokenizer written beside the model has only those tokens: it tokenizes the corpus as the
teacher's did. With widths (`--hidden-size`, `--intermediate-size`, `--heads`,
`--positions`), the student is also narrower, its tensors selected from the teacher's (weight selection,
`models/narrow.py`), for students too small to keep the teacher's width. The result is a normal Hugging Face
directory (model and tokenizer) that `from_pretrained` reads,
and that a recipe names as `student: {name: "hf:DIR"}` (or `teacher:`); `student.init_from_teacher` does the
layer part inside a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinykd.errors import TinykdError
from tinykd.loading import is_checkpoint_source, is_hf_directory, load_model
from tinykd.measure import count_params


def shrink_command(source: str | Path, layers: str = "every-other", out: str | Path | None = None,
                   overwrite: bool = False, vocabulary: str | Path | None = None, text_column: str | None = None,
                   min_count: int = 1, widths: dict[str, int | None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write a student that keeps `layers` ("every-other", "all" or "0,2,4") of the teacher at `source` into `out`,
    (with `vocabulary`, a file of texts) only the tokens those texts use, `min_count` times at least, and (with
    `widths`: hidden_size, intermediate_size, heads, positions) narrower, by weight selection (models/narrow.py)."""
    from tinykd.models.hf import is_hf_model, save_hf_directory, student_from_teacher

    chosen: Any = layers
    if min_count < 1:
        raise TinykdError(f"--min-count must be 1 or more, not {min_count}")
    if layers not in ("every-other", "all"):
        try:
            chosen = [int(part) for part in layers.split(",") if part.strip()]
        except ValueError:
            raise TinykdError(f"--layers takes every-other or layer numbers like 0,2,4; got '{layers}'") from None
    if not (is_hf_directory(source) or is_checkpoint_source(source)):
        raise TinykdError(f"{source} is neither a Hugging Face directory (config.json) nor a tinykd run or checkpoint")
    loaded = load_model(source)
    teacher, tokenizer = loaded.model, loaded.tokenizer()
    if not is_hf_model(teacher):
        raise TinykdError(f"{source} is not a Hugging Face transformer; tinykd shrink copies layers of one")
    target = Path(out) if out else Path(str(source).rstrip("/") + "-shrunk")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise TinykdError(f"{target} exists and is not empty; choose another --out or pass --overwrite")
    student = teacher if chosen == "all" else student_from_teacher(teacher, chosen)
    report: dict[str, Any] = {}
    if vocabulary is not None:
        student, tokenizer, report = _pruned(student, tokenizer, Path(vocabulary), text_column, min_count)
    widths = {k: v for k, v in (widths or {}).items() if v is not None}
    if widths:
        from tinykd.models.narrow import narrower

        if any(v < 1 for v in widths.values()):
            raise TinykdError(f"widths must be 1 or more: {widths}")
        student = narrower(student, **widths)
        report["widths"] = widths
    save_hf_directory(student, target, tokenizer)
    return {"source": str(source), "out": str(target), "layers": chosen, "params_teacher": count_params(teacher),
            "params_student": count_params(student), "tokenizer": tokenizer is not None, **report}  # fmt: skip


def _pruned(model: Any, tokenizer: Any, texts_file: Path, column: str | None, min_count: int) -> tuple[Any, Any, dict]:
    """`model` and `tokenizer` with the vocabulary of the texts in `texts_file`."""
    from tinykd.data.tables import read_table, read_texts, text_column
    from tinykd.models.vocab import prune_vocabulary, used_tokens

    if tokenizer is None:
        raise TinykdError("--vocabulary prunes the tokenizer with the model; none was found beside the model")
    table = read_table(texts_file)
    texts = read_texts(table, text_column(table, column, str(texts_file), "--text-column"), str(texts_file),
                       "--text-column")  # fmt: skip
    keep = used_tokens(tokenizer, texts, min_count)
    before = len(tokenizer)
    model, tokenizer = prune_vocabulary(model, tokenizer, keep)
    return model, tokenizer, {"vocabulary": {"texts": str(texts_file), "rows": len(texts), "tokens_before": before,
                                             "tokens_after": len(keep), "min_count": min_count}}  # fmt: skip
