"""What the phone runtimes' predictors share: a file of fixed input shapes (batch 1, one sequence length), its card
(the JSON beside it that says how to call it), and the native libraries' chatter kept off the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.compress.predictors import Predictor
from tinykd.data.inputs import batch_size, map_inputs, to_numpy
from tinykd.errors import TinykdError


def card_path(path: Path) -> Path:
    """The card beside a file: `model.int8.pte` -> `model.int8.pte.json`."""
    return path.with_name(path.name + ".json")


def read_card(path: Path) -> dict[str, Any]:
    """The card of an exported file ({} when there is none, or it is not JSON)."""
    card = card_path(Path(path))
    if not card.is_file():
        return {}
    try:
        value = json.loads(card.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


class Captured:
    """What a native library printed inside `quiet_native` (filled when the block ends)."""

    text = ""

    def last_line(self) -> str:
        """The last line printed, without a logger's `[file.cpp:12]` prefix: the reason, for a one-line error."""
        import re

        lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        return re.sub(r"^(\[[^\]]*\]\s*|[IWE]\d{4} [^\]]*\]\s*)", "", lines[-1])[:200] if lines else ""


@contextlib.contextmanager
def quiet_native() -> Iterator[Captured]:
    """Native libraries' chatter (cpuinfo, absl, progress bars), from C++ and from Python alike, kept off the
    terminal; yields a `Captured` whose text holds it once the block ends (an error message takes its last line)."""
    import sys

    captured = Captured()
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as log:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            captured.text = Path(log.name).read_text(errors="replace")
            Path(log.name).unlink(missing_ok=True)


def fixed_inputs(inputs: Any, length: int | None) -> Any:
    """Numpy inputs in the file's fixed shape: texts padded with 0 (masked) or cut to `length` tokens; a cut that
    would drop a real token is an error, not a silently different text."""
    host = to_numpy(inputs)
    if not isinstance(host, dict) or length is None:
        return host
    width = next(iter(host.values())).shape[1]
    if width > length:
        mask = host.get("attention_mask")
        if mask is not None and np.asarray(mask)[:, length:].any():
            raise TinykdError(f"a text has more than {length} tokens, the fixed length of this file; export again "
                              "with a larger data.max_length (--set data.max_length=N)")  # fmt: skip
        return {k: v[:, :length] for k, v in host.items()}
    return {k: np.pad(v, ((0, 0), (0, length - width))) for k, v in host.items()}


class FixedShapePredictor(Predictor):
    """A file with fixed input shapes (batch 1, one sequence length) run by a phone runtime in this process:
    batches go through it a sample at a time, texts padded to its length. Subclasses open the runtime and
    implement `_run` (numpy inputs of the fixed shape -> logits) and `_set_threads`."""

    path: Path
    fixed_batch: int = 1
    length: int | None = None  # a text file's sequence length
    runtime: str = ""

    def _init(self, path: Path, threads: int | None) -> None:
        self.path = Path(path)
        self.card = read_card(self.path)
        self.meta = {**self.card.get("model_meta", {}), **{k: v for k, v in self.card.items() if k != "model_meta"}}
        self.threads = threads or torch.get_num_threads()
        self.label = self.path.name if not self.path.name.startswith("model.") else \
            f"{self.path.parent.name}/{self.path.name}"  # fmt: skip
        self.name = str(self.meta.get("model", "-"))

    def _run(self, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    def _set_threads(self, threads: int) -> None:
        raise NotImplementedError

    def predict(self, inputs: Any) -> torch.Tensor:
        host = fixed_inputs(inputs, self.length)
        n, step = batch_size(host), self.fixed_batch
        outs = []
        for i in range(0, n, step):
            chunk = map_inputs(lambda v, i=i: v[i : i + step], host)
            got = batch_size(chunk)
            if got < step:  # the last chunk, padded with copies of its first sample
                chunk = map_inputs(lambda a, got=got: np.concatenate([a, np.repeat(a[:1], step - got, axis=0)]), chunk)
            outs.append(self._run(chunk)[:got])
        return torch.from_numpy(np.concatenate(outs).astype(np.float32))

    def call(self, inputs: Any) -> Callable[[], Any]:
        host = fixed_inputs(inputs, self.length)
        return lambda: self._run(host)

    def timing_batch(self, batch: int) -> int:
        return self.fixed_batch

    @contextlib.contextmanager
    def timing(self) -> Iterator[int]:
        self._set_threads(self.threads)
        yield self.threads

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def describe(self) -> str:
        return str(self.meta.get("format", self.runtime))

    def params(self) -> int | None:
        return self.meta.get("params")

    def image_shape(self, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        shape = next(iter(self.card.get("inputs", [{}])), {}).get("shape", [])
        return tuple(shape[1:]) if len(shape) == 4 else fallback  # type: ignore[return-value]
