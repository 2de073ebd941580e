"""`tinykd average`: one model whose weights are the mean of several runs' weights (a "model soup").

Models fine-tuned from the same start (one pre-trained teacher, several seeds or learning rates) can sit in one
basin of the loss, and then their mean weights can match their ensemble at the cost of one model (Wortsman et
al., 2022, "Model soups"). Whether they do is measured, not assumed: on SST-2 here none of four soups beat the
best run it averaged (README). Models trained from different random starts do not average well (their units
are permuted): average runs that share a start.

The result is a run folder like the sources': `checkpoints/best.safetensors` (the first source's metadata, so
`tinykd eval`, `export`, `quantize` and `teacher.checkpoint` read it), and for Hugging Face models `model/` as a
normal Hugging Face directory and the run's `tokenizer/`, copied.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from tinykd.errors import TinykdError
from tinykd.models.checkpoint import read_tensors, resolve_checkpoint, run_folder_of, write_tensors


def parse_weights(text: str | None, count: int) -> list[float]:
    """`--weights 1,1,2` as floats that sum to 1; None is the uniform mean."""
    if not text:
        return [1.0 / count] * count
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise TinykdError(f"--weights takes numbers like 1,1,2 (one per model); got '{text}'") from None
    if len(values) != count:
        raise TinykdError(f"--weights gives {len(values)} numbers for {count} models; give one per model")
    if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise TinykdError(f"--weights must be non-negative numbers with a positive sum; got '{text}'")
    total = sum(values)
    return [v / total for v in values]


def average_states(states: list[dict[str, torch.Tensor]], weights: list[float],
                   names: list[str]) -> dict[str, torch.Tensor]:  # fmt: skip
    """The weighted mean of state dicts with the same keys and shapes, computed in float64 and stored in each
    tensor's own dtype. Integer tensors (counters such as BatchNorm's num_batches_tracked, position ids) are
    not averaged: they are the first model's."""
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        missing = [k for k in first if k not in state]
        extra = [k for k in state if k not in first]
        if missing or extra:
            key = (missing or extra)[0]
            raise TinykdError(f"{name} has other weights than {names[0]} ({len(missing)} missing, {len(extra)} "
                              f"extra, e.g. {key}); average models of one architecture")  # fmt: skip
        for key, tensor in first.items():
            if state[key].shape != tensor.shape:
                raise TinykdError(f"{name}: {key} is {tuple(state[key].shape)}, {names[0]} has "
                                  f"{tuple(tensor.shape)}; average models of one architecture and width")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in first.items():
        if not tensor.is_floating_point():
            out[key] = tensor.clone()
            continue
        total = torch.zeros(tensor.shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            total += weight * state[key].to(torch.float64)
        if not torch.isfinite(total).all():
            raise TinykdError(f"the mean of {key} is not finite: one of the models has inf or NaN weights")
        out[key] = total.to(tensor.dtype)
    return out


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def average_command(sources: list[str | Path], out: str | Path, weights: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:  # fmt: skip
    """Average the weights of tinykd runs (or checkpoints) of one architecture into the run folder `out`."""
    if len(sources) < 2:
        raise TinykdError(f"tinykd average needs at least two runs or checkpoints; got {len(sources)}")
    files = [resolve_checkpoint(s) for s in sources]
    for f in files:
        if f.suffix != ".safetensors":
            raise TinykdError(f"{f}: expected a tinykd checkpoint (.safetensors) or a run folder")
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise TinykdError(f"{target} is a file; --out takes a folder for the averaged run")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise TinykdError(f"{target} exists and is not empty; choose another --out or pass --overwrite")
    shares = parse_weights(weights, len(files))
    loaded = [read_tensors(f) for f in files]
    metas = [meta for _, meta in loaded]
    if not metas[0].get("model"):
        raise TinykdError(f"{files[0]} has no tinykd metadata (model name); it was not written by tinykd")
    for f, meta in zip(files[1:], metas[1:], strict=True):
        if meta.get("model") != metas[0]["model"] or meta.get("kwargs", {}) != metas[0].get("kwargs", {}):
            raise TinykdError(f"{f} is a '{meta.get('model')}', {files[0]} a '{metas[0]['model']}' (or their "
                              "kwargs differ); average models of one architecture")  # fmt: skip
    names = [str(f) for f in files]
    state = average_states([tensors for tensors, _ in loaded], shares, names)

    target.mkdir(parents=True, exist_ok=True)
    if overwrite:  # nothing of an earlier average (say, an HF directory) may outlive it and mislead
        shutil.rmtree(target / "model", ignore_errors=True)
        (target / "average.json").unlink(missing_ok=True)
    meta = {**metas[0], "averaged_from": [str(f.resolve()) for f in files], "average_weights": shares}
    (target / "checkpoints").mkdir(exist_ok=True)
    write_tensors(state, target / "checkpoints" / "best.safetensors", meta)
    first_run = run_folder_of(files[0])
    if meta.get("tokenizer"):
        _copy_tree(first_run / str(meta["tokenizer"]), target / str(meta["tokenizer"]))
    if (first_run / "recipe.yaml").is_file():
        shutil.copy2(first_run / "recipe.yaml", target / "recipe.yaml")
    hf_dir = None
    if str(meta["model"]).startswith("hf:"):
        hf_dir = _save_hf(target)
    summary = {"out": str(target), "sources": names, "weights": shares, "tensors": len(state),
               "hf_model": str(hf_dir) if hf_dir else None}  # fmt: skip
    (target / "average.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _save_hf(run: Path) -> Path:
    """The averaged checkpoint of `run` as a Hugging Face directory `run/model`, rebuilt the way every tinykd
    command rebuilds a checkpoint, so that `from_pretrained` users need no tinykd."""
    from tinykd.loading import load_model
    from tinykd.models.hf import save_hf_directory

    loaded = load_model(run / "checkpoints" / "best.safetensors")
    return save_hf_directory(loaded.model, run / "model", loaded.tokenizer())
