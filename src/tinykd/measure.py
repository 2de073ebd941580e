"""Honest numbers about a model: parameters, size on disk, MACs, CPU latency and throughput.

Latency is timed one call at a time after a warm-up, with a fixed thread
count, and reported as the median (p50) and p90 of many repeats, never a
best case. Size on disk is the bytes of the fp32 safetensors file that
`tinykd` would ship, headers included.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tinykd.models.checkpoint import write_tensors
from tinykd.models.outputs import call_model

Inputs = torch.Tensor | dict[str, torch.Tensor]  # an image batch, or a Hugging Face model's keyword inputs


def first_sample(inputs: Inputs) -> Inputs:
    """The first sample of a batch, as a batch of one, on the CPU."""
    if isinstance(inputs, dict):
        return {k: v[:1].cpu() for k, v in inputs.items()}
    return inputs[:1].cpu()


def repeat_sample(inputs: Inputs, n: int) -> Inputs:
    """A batch of `n` copies of a one-sample batch (for throughput)."""
    if isinstance(inputs, dict):
        return {k: v[:1].expand(n, *v.shape[1:]).contiguous() for k, v in inputs.items()}
    return inputs[:1].expand(n, *inputs.shape[1:]).contiguous()


@dataclass
class ModelStats:
    params: int
    size_bytes: int
    macs: int
    latency_ms_p50: float
    latency_ms_p90: float
    throughput_img_s: float
    threads: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """Parameters (not buffers), each shared tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's state dict saved as safetensors (what a deployment would copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        write_tensors(model.state_dict(), path)
        return path.stat().st_size


def count_macs(model: nn.Module, example: Inputs) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter, FLOPs / 2)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call_model(model, first_sample(example))
    return counter.get_total_flops() // 2


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with a fixed number of CPU threads, then restore the previous setting."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def time_calls(fn, repeats: int, warmup: int = 20) -> list[float]:
    """Seconds per call of `fn()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_model(
    model: nn.Module, example: Inputs, repeats: int = 200, batch: int = 64, threads: int | None = None
) -> ModelStats:
    """All the figures for one model on the CPU, eager fp32, `example` being one input of batch 1 (an image
    (1, C, H, W), or a text model's `{input_ids, attention_mask}` of one sequence)."""
    model = model.eval().cpu()
    example = first_sample(example)
    big = repeat_sample(example, batch)
    with torch_threads(threads) as n_threads, torch.inference_mode():
        single = time_calls(lambda: call_model(model, example), repeats)
        batched = time_calls(lambda: call_model(model, big), max(10, repeats // 10), warmup=3)
    return ModelStats(
        params=count_params(model),
        size_bytes=size_on_disk(model),
        macs=count_macs(model, example),
        latency_ms_p50=statistics.median(single) * 1e3,
        latency_ms_p90=percentile(single, 0.9) * 1e3,
        throughput_img_s=batch / statistics.median(batched),
        threads=n_threads,
    )
