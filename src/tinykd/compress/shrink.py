"""`tinykd shrink`: a transformer with some of its layers, as a Hugging Face directory, DistilBERT-style.

The student keeps the teacher's embeddings, the chosen layers (default every other one) and its head, copied
tensor for tensor, so that distillation starts from what the teacher knows rather than from random weights.
The result is a normal Hugging Face directory (model and tokenizer) that `from_pretrained` reads, and that a
recipe names as `student: {name: "hf:DIR"}`; `student.init_from_teacher` does the same inside a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinykd.errors import TinykdError
from tinykd.loading import is_checkpoint_source, is_hf_directory, load_model
from tinykd.measure import count_params


def shrink_command(source: str | Path, layers: str = "every-other", out: str | Path | None = None,
                   overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Write a student that keeps `layers` ("every-other" or "0,2,4") of the teacher at `source` into `out`."""
    from tinykd.models.hf import is_hf_model, save_hf_directory, student_from_teacher

    chosen: Any = layers
    if layers != "every-other":
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
    student = student_from_teacher(teacher, chosen)
    save_hf_directory(student, target, tokenizer)
    return {"source": str(source), "out": str(target), "layers": chosen, "params_teacher": count_params(teacher),
            "params_student": count_params(student), "tokenizer": tokenizer is not None}  # fmt: skip
