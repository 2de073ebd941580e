"""`tinykd shrink`: a transformer with some of its layers, as a Hugging Face directory, DistilBERT-style.

The student keeps the teacher's embeddings, the chosen layers (default every other one) and its head, copied
tensor for tensor, so that distillation starts from what the teacher knows rather than from random weights.
The result is a normal Hugging Face directory (model and tokenizer) that `from_pretrained` reads, and that a
recipe names as `student: {name: "hf:DIR"}`; `student.init_from_teacher` does the same inside a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinykd.compress.source import is_checkpoint_source, load_checkpoint_model, saved_tokenizer
from tinykd.errors import TinykdError
from tinykd.measure import count_params


def load_hf_source(source: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer or None) from a tinykd run folder or checkpoint of a Hugging Face model, or from a Hugging
    Face directory (the class its config names)."""
    path = Path(source)
    if (path / "config.json").is_file():
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(str(path))
        names = config.architectures or []
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
        model = cls.from_pretrained(str(path))
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        return model, AutoTokenizer.from_pretrained(str(path)) if has_tokenizer else None
    if not is_checkpoint_source(source):
        raise TinykdError(f"{source} is neither a Hugging Face directory (config.json) nor a tinykd run or checkpoint")
    loaded = load_checkpoint_model(source)
    folder = saved_tokenizer(loaded.meta, loaded.path)
    if folder is None:
        return loaded.model, None
    from transformers import AutoTokenizer

    return loaded.model, AutoTokenizer.from_pretrained(str(folder))


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
    teacher, tokenizer = load_hf_source(source)
    if not is_hf_model(teacher):
        raise TinykdError(f"{source} is not a Hugging Face transformer; tinykd shrink copies layers of one")
    target = Path(out) if out else Path(str(source).rstrip("/") + "-shrunk")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise TinykdError(f"{target} exists and is not empty; choose another --out or pass --overwrite")
    student = student_from_teacher(teacher, chosen)
    save_hf_directory(student, target, tokenizer)
    return {"source": str(source), "out": str(target), "layers": chosen, "params_teacher": count_params(teacher),
            "params_student": count_params(student), "tokenizer": tokenizer is not None}  # fmt: skip
