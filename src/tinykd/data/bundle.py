"""`DataBundle`: a recipe's datasets, split, with what the models and the run need to know about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    """Train / val / test datasets and what a model needs to know about them."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    classes: list[str]  # [] for masked-lm
    in_channels: int  # 0 for text
    image_size: int  # 0 for text
    skipped: list[str] = field(default_factory=list)  # files left out as unreadable (data.bad_images: skip)
    tokenizer: Any = None  # text: the tokenizer the datasets were tokenized with
    task: Any = None  # text: the task the data was made for (TextOptions.task; the pipeline sets it for images)
    max_length: int | None = None  # text: tokens per sequence, at most
    decoder_start_from: str | None = None  # seq2seq: the model whose decoder_start_token_id the data uses

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_text(self) -> bool:
        """Texts, tokenized (rather than images): the run folder keeps the tokenizer, reports state the length."""
        return self.tokenizer is not None

    @property
    def unit(self) -> str:
        """What the samples are called in messages."""
        return "texts" if self.is_text else "images"

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint records of its data to be read back alone: a text model's tokenizer folder (in the
        run folder), task and sequence length; nothing for images (their classes and shape are recorded anyway)."""
        if not self.is_text:
            return {}
        return {"tokenizer": "tokenizer", "task": self.task.name, "max_length": self.max_length}

    def report_fields(self, sequence_length: int) -> dict[str, Any]:
        """What a report states of the inputs it timed: the tokens per sequence for text, nothing for images."""
        return {"sequence_length": sequence_length} if self.is_text else {}

    def save_tokenizer(self, run_dir: Path) -> None:
        """Keep the tokenizer in `run_dir/tokenizer` (texts; once): the run's checkpoints name it."""
        if self.is_text and not (run_dir / "tokenizer").is_dir():
            self.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
