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
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tinykd.data.inputs import from_numpy, is_token_inputs, map_inputs, to_numpy
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import write_tensors
from tinykd.models.outputs import call_model

Inputs = torch.Tensor | dict[str, torch.Tensor]  # an image batch, or a Hugging Face model's keyword inputs


def first_sample(inputs: Inputs) -> Inputs:
    """The first sample of a batch, as a batch of one, on the CPU."""
    return map_inputs(lambda v: v[:1].cpu(), inputs)


def repeat_sample(inputs: Inputs, n: int) -> Inputs:
    """A batch of `n` copies of a one-sample batch (for throughput)."""
    return map_inputs(lambda v: v[:1].expand(n, *v.shape[1:]).contiguous(), inputs)


def timing_input(inputs: Any, sequence_length: int) -> Any:
    """What latency is timed on, for every tool and the run's report: the first sample at batch 1, and for text
    the first text made exactly `sequence_length` tokens long (its attended tokens repeated, all attended; any
    token types 0, any decoder sequence the same tokens), since a text model's latency depends on the length.

    `inputs` is a batch of torch tensors or of numpy arrays; the example comes back in the same kind."""
    if not is_token_inputs(inputs):
        return map_inputs(lambda v: v[:1], inputs)
    host = to_numpy(inputs)
    ids = np.asarray(host["input_ids"][0])
    if "attention_mask" in host:
        ids = ids[np.asarray(host["attention_mask"][0]).astype(bool)]
    ids = np.resize(ids, sequence_length)[None].astype(np.int64)
    ones = np.ones_like(ids)
    example = {"input_ids": ids, "attention_mask": ones}
    if "token_type_ids" in host:
        example["token_type_ids"] = np.zeros_like(ids)
    if "decoder_input_ids" in host:  # an encoder-decoder: a decoder sequence of the same length
        example.update(decoder_input_ids=ids.copy(), decoder_attention_mask=ones.copy())
    torch_in = isinstance(next(iter(inputs.values())), torch.Tensor)
    return from_numpy(example) if torch_in else example


@dataclass
class ModelStats:
    params: int
    size_bytes: int
    macs: int
    latency_ms_p50: float
    latency_ms_p90: float
    throughput_samples_s: float
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
    speed = measure_speed(model, example, repeats, batch, threads)
    return ModelStats(params=count_params(model), size_bytes=size_on_disk(model),
                      macs=count_macs(model, first_sample(example)), **speed)  # fmt: skip


def time_speed(single: Callable[[], Any], batched: Callable[[], Any], batch: int, repeats: int) -> dict[str, float]:
    """Latency of `single()` (batch 1: p50 and p90 of `repeats` timed calls after a warm-up) and throughput of
    `batched()` (`batch` samples a call): the one timing every runtime's figures come from."""
    one = time_calls(single, repeats)
    many = time_calls(batched, max(10, repeats // 10), warmup=3)
    return {"latency_ms_p50": statistics.median(one) * 1e3, "latency_ms_p90": percentile(one, 0.9) * 1e3,
            "throughput_samples_s": batch / statistics.median(many)}  # fmt: skip


def measure_speed(model: nn.Module, example: Inputs, repeats: int = 200, batch: int = 64,
                  threads: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Latency at batch 1 (p50, p90) and throughput at `batch`, eager, on the CPU: for any model that runs,
    torchao's low-bit ones included."""
    model = model.eval().cpu()
    example = first_sample(example)
    big = repeat_sample(example, batch)
    with torch_threads(threads) as n_threads, torch.inference_mode():
        speed = time_speed(lambda: call_model(model, example), lambda: call_model(model, big), batch, repeats)
    return {**speed, "threads": n_threads}


# --- generation: PyTorch's generate, timed at batch 1 with the KV cache ---------------------------------------------

Prompts = Sequence[Sequence[int]] | np.ndarray | torch.Tensor


def prompt_rows(prompts: Prompts) -> list[list[int]]:
    """Prompts as lists of ints: one prompt (a list or 1-D array), several (lists), or a 2-D array or tensor."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.cpu().numpy()
    if isinstance(prompts, np.ndarray):
        prompts = prompts.reshape(1, -1).tolist() if prompts.ndim == 1 else prompts.tolist()
    elif len(prompts) and isinstance(prompts[0], int | np.integer):
        prompts = [prompts]  # type: ignore[list-item]
    out = [[int(t) for t in p] for p in prompts]
    if not out or any(len(p) == 0 for p in out):
        raise TinykdError("every prompt needs at least one token")
    return out


def pad_prompts(prompts: list[list[int]], pad: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) of prompts padded to one length: on the left for a decoder, which generates after the
    last token, on the right for an encoder, whose position embeddings must start at the first token."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):
        where = slice(width - len(p), width) if left else slice(0, len(p))
        ids[i, where], mask[i, where] = p, 1
    return ids, mask


@contextlib.contextmanager
def plain_greedy(model: nn.Module, eos_token_id: int | None) -> Iterator[None]:
    """Make `model.generate` plain greedy decoding: the model's own generation_config may add logits processors
    (forced BOS/EOS, no_repeat_ngram_size, repetition penalty, min_length, ...) and generate() fills every option
    left unset from it, so it is swapped for one with the special tokens only while generating."""
    from transformers import GenerationConfig

    saved = model.generation_config
    pad = saved.pad_token_id if saved.pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    start = getattr(saved, "decoder_start_token_id", None)
    model.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, eos_token_id=eos_token_id,
                                               pad_token_id=pad, decoder_start_token_id=start)  # fmt: skip
    try:
        yield
    finally:
        model.generation_config = saved


def torch_greedy_generate(model: nn.Module, input_ids: Prompts, max_new_tokens: int,
                          eos_token_id: int | None = None) -> list[list[int]]:  # fmt: skip
    """`model.generate(do_sample=False, num_beams=1, use_cache=True)` on prompts padded as `OrtGenerator` pads
    them: the new tokens of each, ending at `eos_token_id` like `ort_greedy_generate`, to compare token for token."""
    rows = prompt_rows(input_ids)
    with plain_greedy(model, eos_token_id):
        pad = model.generation_config.pad_token_id
        ids, mask = pad_prompts(rows, pad, left=not model.config.is_encoder_decoder)
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            device = next(model.parameters()).device  # the model's device (a GPU in a training run's report)
            out = model.generate(input_ids=torch.from_numpy(ids).to(device),
                                 attention_mask=torch.from_numpy(mask).to(device),
                                 max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, num_beams=1,
                                 use_cache=True)  # fmt: skip
    skip = 1 if model.config.is_encoder_decoder else ids.shape[1]  # the decoder start token, or the prompt
    new = []
    for row in out[:, skip:].cpu().tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        new.append(row)
    return new


def generation_speed(
    generate_fn: Callable[[Sequence[int], int], Sequence[int]], prompt_ids: Sequence[int], new_tokens: int,
    repeats: int = 5, warmup: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Batch-1 generation speed with the KV cache, medians over `repeats` calls of `generate_fn(prompt, n)`.

    First-token latency is the prompt step alone (`n` = 1). `tokens_per_s` counts the new tokens over the whole
    call, prompt step included; `decode_tokens_per_s` the tokens after the first over the time after it."""
    if new_tokens < 1 or repeats < 1:
        raise TinykdError("new_tokens and repeats must be at least 1")
    prompt = [int(t) for t in prompt_ids]
    produced = len(generate_fn(prompt, new_tokens))
    if produced < 1:
        raise TinykdError("the generator produced no tokens")
    first = statistics.median(time_calls(lambda: generate_fn(prompt, 1), repeats, warmup))
    total = statistics.median(time_calls(lambda: generate_fn(prompt, new_tokens), repeats, warmup))
    decode = (produced - 1) / (total - first) if produced > 1 and total > first else None
    return {"prompt_tokens": len(prompt), "new_tokens": produced, "repeats": repeats,
            "first_token_ms": first * 1e3, "total_ms": total * 1e3, "tokens_per_s": produced / total,
            "decode_tokens_per_s": decode}  # fmt: skip


def generation_speed_row(model: nn.Module, prompt: Sequence[int], new_tokens: int = 32, threads: int | None = None,
                         repeats: int = 5) -> dict[str, float]:  # fmt: skip
    """A report's generation columns: new tokens per second at batch 1 with the KV cache (transformers'
    generate, greedy, never stopping early) and the first-token latency, in `threads` threads."""
    was_training = model.training
    model.eval()

    def fn(ids: Sequence[int], n: int) -> list[int]:
        with torch_threads(threads):
            return torch_greedy_generate(model, [list(ids)], n, None)[0]

    try:
        stats = generation_speed(fn, prompt, new_tokens, repeats)
    finally:
        model.train(was_training)
    return {"gen_tokens_per_s": stats["tokens_per_s"], "first_token_ms": stats["first_token_ms"]}
