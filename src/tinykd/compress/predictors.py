"""One face for every finished model, whatever runs it: a `Predictor`, opened from any path by `open_predictor`.

`compare`, `profile`, `quantize`, `export`'s check, the QAT row of a run and the demo all evaluate and time models
through here, so a number means the same thing in every table: `evaluate(predictor, data)` sums the task's own
metrics over the test set, and `measure(predictor, example)` times batch 1 and a larger batch the same way for
every runtime (`measure.time_speed`).

A runtime is one class and one registration: `@register(".suffix")` on a `Predictor` subclass whose `open(path,
threads)` reads such a file. Directories are a run folder (its best checkpoint) or a Hugging Face folder
(`config.json`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.compress.onnxrt import feeds, onnx_image_shape, onnx_meta, onnx_params, onnx_size, read_onnx, session
from tinykd.data.inputs import batch_size, from_numpy, map_inputs, to_numpy
from tinykd.errors import TinykdError
from tinykd.measure import (
    count_macs,
    count_params,
    first_sample,
    repeat_sample,
    size_on_disk,
    time_speed,
    torch_threads,
)
from tinykd.models.outputs import call_model
from tinykd.tasks import Task, get_task, task_of_architecture

RUN_FOLDER, HF_FOLDER = "run folder", "Hugging Face folder"  # the registry's keys of the two kinds of directory
PREDICTORS: dict[str, type[Predictor]] = {}
# runtimes in their own module, imported (and so registered) when a file of theirs is first opened
LATER = {".pte": "tinykd.compress.executorch_rt", ".tflite": "tinykd.compress.litert_rt"}


def register(*kinds: str) -> Callable[[type[Predictor]], type[Predictor]]:
    """Register a Predictor class for file suffixes (".onnx") or the directory kinds RUN_FOLDER and HF_FOLDER."""
    def add(cls: type[Predictor]) -> type[Predictor]:
        for kind in kinds:
            PREDICTORS[kind] = cls
        return cls

    return add


class Predictor:
    """A finished model that turns a batch of inputs (torch tensors or numpy arrays: an image batch or named text
    arrays) into logits. Subclasses implement `predict`, `size_bytes` and `describe`; the timing hooks have
    defaults that fit a model called in this process."""

    meta: dict[str, Any]
    label: str  # the row's role: the run's name, the file's name
    name: str  # the architecture
    threads: int | None = None

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> Predictor:
        raise NotImplementedError

    def predict(self, inputs: Any) -> torch.Tensor:
        """Logits of one batch (a torch tensor; on the device the model runs on)."""
        raise NotImplementedError

    def size_bytes(self) -> int:
        """Bytes on disk of what a deployment would copy."""
        raise NotImplementedError

    def describe(self) -> str:
        """The format, short: "pytorch fp32", "onnx int8", ..."""
        raise NotImplementedError

    def params(self) -> int | None:
        return self.meta.get("params")

    def macs(self, example: Any) -> int | None:
        """Multiply-accumulates of one call at batch 1, when known."""
        return self.meta.get("macs")

    def task(self) -> Task:
        """The task the model was trained for (its metadata's; classification when it names none)."""
        return get_task(self.meta.get("task") or "classification")

    def image_shape(self, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) of the images the model takes, from its metadata, else `fallback`."""
        from tinykd.compress.source import input_shape_of

        return input_shape_of(self.meta) or fallback

    def call(self, inputs: Any) -> Callable[[], Any]:
        """A call of the model on `inputs`, converted once beforehand: what latency times."""
        return lambda: self.predict(inputs)

    def timing_batch(self, batch: int) -> int:
        """The batch that throughput is timed at (a file with a fixed batch size times that)."""
        return batch

    @contextlib.contextmanager
    def timing(self) -> Iterator[int]:
        """Around the timed calls: the threads pinned, no autograd; yields the thread count."""
        with torch_threads(self.threads) as n, torch.inference_mode():
            yield n


@register(RUN_FOLDER, ".safetensors", ".pt", ".pth", ".bin", ".ckpt")
class TorchPredictor(Predictor):
    """A PyTorch module in eager mode (`device`: where it runs; CPU by default, where it is timed)."""

    def __init__(self, model: nn.Module, meta: dict[str, Any] | None = None, label: str = "", fmt: str | None = None,
                 threads: int | None = None, device: Any = None, path: Path | None = None,
                 prepare: bool = True) -> None:  # fmt: skip
        self.model = model.eval().to(device or "cpu") if prepare else model  # a torch.export module has no eval()
        self.meta = meta or {}
        self.name = str(self.meta.get("model", label or type(model).__name__))
        self.label, self.fmt, self.threads, self.path = label or self.name, fmt, threads, path
        self.device = torch.device(device or "cpu")

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> TorchPredictor:
        """A tinykd checkpoint (or a run folder's best one), rebuilt from its metadata."""
        from tinykd.loading import load_model

        loaded = load_model(path)
        return cls(loaded.model, loaded.meta, loaded.label, threads=threads, path=loaded.path)

    def predict(self, inputs: Any) -> torch.Tensor:
        inputs = map_inputs(lambda v: _tensor(v).to(self.device), inputs)
        with torch.inference_mode():
            return call_model(self.model, inputs).float()

    def call(self, inputs: Any) -> Callable[[], Any]:
        inputs = from_numpy(to_numpy(inputs))
        return lambda: call_model(self.model, inputs)

    def size_bytes(self) -> int:
        """The state dict as a safetensors file (what `tinykd` ships), whatever file it was read from."""
        return size_on_disk(self.model)

    def describe(self) -> str:
        return self.fmt or ("pytorch fp32 (pruned)" if self.meta.get("pruned") else "pytorch fp32")

    def params(self) -> int:
        return count_params(self.model)

    def macs(self, example: Any) -> int:
        return count_macs(self.model, first_sample(example))


@register(HF_FOLDER)
class HfPredictor(TorchPredictor):
    """A Hugging Face `save_pretrained` folder (a text run's `model/`), its task read from the architecture."""

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> TorchPredictor:
        import json

        from tinykd.models.hf import create_hf_model

        config = json.loads((path / "config.json").read_text())
        architecture = next(iter(config.get("architectures") or ["?"]))
        found = task_of_architecture(architecture)
        if found is None:
            raise TinykdError(f"{path}: a Hugging Face model of architecture {architecture}, which no tinykd task "
                              "runs")  # fmt: skip
        labels = len(config.get("id2label") or {}) or config.get("num_labels") or 2
        task = found.name
        model = create_hf_model(str(path), num_classes=labels, task=task)
        return cls(model, {"model": f"hf:{path}", "task": task}, path.name, threads=threads, path=path)


@register(".onnx")
class OnnxPredictor(Predictor):
    """An .onnx file in ONNX Runtime on the CPU, `threads` intra-op threads (torch's count by default, so that a
    PyTorch row and an ONNX Runtime row use the same number). A file with a fixed batch size gets padded batches."""

    def __init__(self, path: Path, threads: int | None = None, label: str | None = None, fmt: str | None = None,
                 name: str | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self.meta = onnx_meta(self.path)  # also: a file that is not a model is a one-line error here
        self.threads = threads or torch.get_num_threads()
        self.label, self.fmt = label or self.path.name, fmt
        self.name = name or str(self.meta.get("model", "-"))
        self._session: Any = None

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> OnnxPredictor:
        return cls(path, threads)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = session(self.path, self.threads)  # made when first used
        return self._session

    def _fixed(self) -> int | None:
        shape = self.session.get_inputs()[0].shape
        return shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        """The session's feeds, each sample count padded to the file's fixed batch size (copies of the first)."""
        host, fixed = to_numpy(inputs), self._fixed()
        n = batch_size(host)
        if fixed and n < fixed:
            host = map_inputs(lambda a: np.concatenate([a, np.repeat(a[:1], fixed - n, axis=0)]), host)
        return feeds(self.session, host)

    def predict(self, inputs: Any) -> torch.Tensor:
        n, step = batch_size(inputs), self._fixed() or batch_size(inputs)
        outs = [self.session.run(None, self._feeds(map_inputs(lambda v, i=i: v[i : i + step], inputs)))[0]
                for i in range(0, n, step)]  # fmt: skip
        return torch.from_numpy(np.concatenate(outs)[:n])

    def call(self, inputs: Any) -> Callable[[], Any]:
        fed = self._feeds(inputs)
        return lambda: self.session.run(None, fed)

    def timing_batch(self, batch: int) -> int:
        return self._fixed() or batch

    @contextlib.contextmanager
    def timing(self) -> Iterator[int]:
        yield self.threads  # the session's own

    def size_bytes(self) -> int:
        return onnx_size(self.path)

    def describe(self) -> str:
        return self.fmt or str(self.meta.get("format", "onnx"))

    def params(self) -> int:
        return self.meta.get("params", onnx_params(read_onnx(self.path)))

    def image_shape(self, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
        return onnx_image_shape(self.path, fallback)


@register(".pt2")
class Pt2Predictor(TorchPredictor):
    """A torch.export program (`tinykd export --format pt2`), run in this process."""

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> Pt2Predictor:
        program = torch.export.load(str(path)).module()
        return cls(program, {}, path.name, "torch.export", threads=threads, path=path, prepare=False)

    def size_bytes(self) -> int:
        assert self.path is not None
        return self.path.stat().st_size


def predictor_kind(path: Path) -> str:
    """The registry's key for a path: a directory's kind, else the file's suffix."""
    if path.is_dir():
        return HF_FOLDER if (path / "config.json").is_file() and not (path / "checkpoints").is_dir() else RUN_FOLDER
    return path.suffix.lower()


def is_model_path(source: str | Path) -> bool:
    """Whether `source` names a model file or folder some predictor reads (rather than, say, a model name)."""
    p = Path(source)
    known = predictor_kind(p) in PREDICTORS or predictor_kind(p) in LATER
    return p.is_dir() or (p.is_file() and known) or p.suffix.lower() in (".onnx", *LATER)


def open_predictor(path: str | Path, threads: int | None = None) -> Predictor:
    """The Predictor for a run folder, a checkpoint, a Hugging Face folder or an exported file."""
    p = Path(path)
    kind = predictor_kind(p)
    if kind in LATER and kind not in PREDICTORS:
        import importlib

        importlib.import_module(LATER[kind])
    if kind not in PREDICTORS:
        if not p.exists():
            raise TinykdError(f"{p} does not exist")
        known = ", ".join(sorted(k for k in {*PREDICTORS, *LATER} if k.startswith(".")))
        raise TinykdError(f"{p}: no runtime reads '{kind or p.name}' files; give a run folder, a Hugging Face folder "
                          f"or a file ending in {known}")  # fmt: skip
    return PREDICTORS[kind].open(p, threads)


# --- what every tool asks of a predictor: logits, metrics, timings --------------------------------------------------


def predict_all(predictor: Predictor, inputs: Any, batch: int = 256) -> torch.Tensor:
    """Logits of every sample of `inputs`, `batch` at a time, on the host."""
    n = batch_size(inputs)
    return torch.cat([predictor.predict(map_inputs(lambda v, i=i: v[i : i + batch], inputs)).cpu()
                      for i in range(0, n, batch)])  # fmt: skip


def _tensor(values: Any) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.from_numpy(np.array(values))


def _targets(task: Task, targets: Any, device: torch.device) -> torch.Tensor:
    """Targets as the task reads them: negative ones (padding) become its ignore label."""
    targets = _tensor(targets).to(torch.long)
    return torch.where(targets < 0, task.ignore_index, targets).to(device)


def metrics_of(task: Task, logits: Any, targets: Any) -> dict[str, float]:
    """The task's metrics of logits against targets (numpy or torch); an empty set has accuracy nan."""
    logits = _tensor(logits)
    return _finished(task, task.metric_sums(logits, _targets(task, targets, logits.device)))


def _finished(task: Task, sums: torch.Tensor) -> dict[str, float]:
    result = task.metrics(sums)
    if not result["count"]:
        result["accuracy"] = float("nan")
    return result


def evaluate(predictor: Predictor, data: tuple[Any, Any] | Iterable[tuple[Any, Any]], task: Task | None = None,
             batch: int = 256) -> dict[str, float]:  # fmt: skip
    """The task's metrics (accuracy, loss, count; perplexity for generative tasks) of `predictor` on `data`: a
    loader of (inputs, targets) batches, or (inputs, targets) arrays of a whole split taken `batch` at a time."""
    task = task or predictor.task()
    if isinstance(data, tuple):
        every, labels = data
        data = ((map_inputs(lambda v, i=i: v[i : i + batch], every), labels[i : i + batch])
                for i in range(0, batch_size(every), batch))  # fmt: skip
    total: torch.Tensor | None = None
    for inputs, targets in data:
        logits = predictor.predict(inputs)
        sums = task.metric_sums(logits, _targets(task, targets, logits.device))
        total = sums if total is None else total + sums
    if total is None:
        return {"accuracy": float("nan"), "loss": float("nan"), "count": 0}
    return _finished(task, total)


def speed(predictor: Predictor, example: Any, repeats: int = 200, batch: int = 64) -> dict[str, Any]:
    """Latency at batch 1 (p50, p90 of `repeats` calls after a warm-up) and throughput at `batch` (in samples/s),
    of the first sample of `example`, with the predictor's threads."""
    one = first_sample(from_numpy(to_numpy(example)))
    n = predictor.timing_batch(batch)
    single, batched = predictor.call(one), predictor.call(repeat_sample(one, n))
    with predictor.timing() as threads:
        figures = time_speed(single, batched, n, repeats)
    return {**figures, "threads": threads}


def measure(predictor: Predictor, example: Any, repeats: int = 200, batch: int = 64) -> dict[str, Any]:
    """Parameters, size on disk, MACs (when known), latency, throughput and threads: a row's figures."""
    example = first_sample(from_numpy(to_numpy(example)))  # one input at batch 1, as torch tensors
    figures = speed(predictor, example, repeats, batch)
    return {"params": predictor.params(), "size_bytes": predictor.size_bytes(),
            "macs": predictor.macs(example), **figures}  # fmt: skip


def measure_row(predictor: Predictor, example: Any, repeats: int, batch: int) -> dict[str, Any]:
    """A table's row: role, architecture, format, the figures of `measure`, and FLOPs (2 x MACs) when known."""
    row = {"role": predictor.label, "model": predictor.name, "format": predictor.describe(),
           **measure(predictor, example, repeats, batch)}  # fmt: skip
    if row.get("macs") is not None:
        row["flops"] = 2 * int(row["macs"])
    return row

