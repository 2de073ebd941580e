"""Checkpoints of a model: its weights as safetensors, and enough metadata to rebuild it.

safetensors holds tensors and strings only, so loading a stranger's file never
runs code. The metadata records the model's name and arguments, the classes,
and the tinykd and torch versions; `load_weights` says plainly when a file was
made for another architecture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from tinykd.errors import TinykdError
from tinykd.models.qat import is_pt2e, plain_state
from tinykd.version import __version__

META_KEY = "tinykd"


@dataclass
class CheckpointMeta:
    """What a tinykd checkpoint says about itself, beside its weights: enough to rebuild the model and find its data.

    Written as JSON in the safetensors header (key `tinykd`). Fields that are unset are left out of the file, so a
    checkpoint holds what it always held; keys this record does not know (an older or newer tinykd, export sizes)
    are kept in `extra` and written back as they were.
    """

    model: str  # the registered name (or `hf:...`) the model is built from
    kwargs: dict[str, Any] = field(default_factory=dict)  # its constructor's arguments
    num_classes: int | None = None
    in_channels: int | None = None
    image_size: int | None = None
    classes: list[str] | None = None  # the class names of the data, in label order
    recipe: dict[str, Any] | None = None  # the resolved recipe of the run (its data, for eval/export/compare)
    qat: str | None = None  # "pt2e": the weights come with torchao's fake quantizers
    tokenizer: str | None = None  # text: the tokenizer folder, relative to the run folder
    task: str | None = None  # text: the data's task (absent: classification)
    max_length: int | None = None  # text
    pruned: bool = False  # the architecture is narrower than its constructor's: shapes come from the weights
    prune: dict[str, Any] | None = None
    pruned_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # the order of the keys in the file, as tinykd has always written them
    _ORDER = ("model", "kwargs", "num_classes", "in_channels", "image_size", "classes", "recipe", "pruned", "prune",
              "pruned_from", "qat", "tokenizer", "task", "max_length")  # fmt: skip

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> CheckpointMeta:
        """The record of a checkpoint's metadata dict (any tinykd version's: unknown keys go to `extra`)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in meta.items() if k in known},
                   extra={k: v for k, v in meta.items() if k not in known})  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written into the file: set fields only (`pruned` only when true), then `extra`."""
        out: dict[str, Any] = {}
        for name in self._ORDER:
            value = getattr(self, name)
            if name in ("model", "kwargs", "num_classes", "in_channels", "image_size", "classes", "recipe") \
                    or (value is not None and value is not False):  # fmt: skip
                out[name] = value
        return {**out, **self.extra}


def fsync_path(path: Path) -> None:
    """Push a file's (or a folder's entries') bytes to the disk, so a crash cannot leave it half there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write tensors (on the CPU, contiguous, shared storage split) and JSON `meta` as safetensors, then fsync."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(state, str(path), metadata={META_KEY: json.dumps(meta)} if meta is not None else None)
    fsync_path(path)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and tinykd metadata ({} if none) of a safetensors file; a bad file names itself."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        return tensors, json.loads(raw) if raw else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise TinykdError(f"{path} is not a readable safetensors checkpoint: {exc}") from None


def save_model(model: nn.Module, path: Path, meta: CheckpointMeta | dict[str, Any]) -> None:
    """Write `model`'s state dict and `meta` atomically to `path`: a crash leaves the old file or the new one."""
    written = meta.as_dict() if isinstance(meta, CheckpointMeta) else meta
    versions = ("tinykd_version", "torch_version")  # of the code that writes this file, not of an older one
    info = {"tinykd_version": __version__, "torch_version": torch.__version__,
            **{k: v for k, v in written.items() if k not in versions}}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write_tensors(model.state_dict(), tmp, info)
    tmp.replace(path)


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a tinykd checkpoint ({} for a plain safetensors file)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise TinykdError(f"{path} is not a readable safetensors checkpoint: {exc}") from None
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise TinykdError(f"{path} has damaged tinykd metadata ({exc.msg} at character {exc.pos}); use another "
                          "checkpoint of the run, or retrain") from None  # fmt: skip


def run_folder_of(checkpoint: Path) -> Path:
    """`RUN/checkpoints/best.safetensors` -> `RUN`; any other file -> its folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its best checkpoint, else its last)."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoints/best.safetensors", "checkpoints/last.safetensors", "best.safetensors"):
            if (p / name).is_file():
                return p / name
        raise TinykdError(f"{p} is a folder with no checkpoints/best.safetensors or checkpoints/last.safetensors")
    if not p.is_file():
        raise TinykdError(f"checkpoint {p} does not exist")
    return p


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a PyTorch file with `weights_only=True` (no code runs)."""
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad or unsafe file
            raise TinykdError(f"cannot load {path} safely (weights_only=True): {str(exc).splitlines()[0]}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TinykdError(f"{path} does not hold a state dict of tensors")
        return state
    return read_tensors(path)[0]


def load_weights(model: nn.Module, path: str | Path, model_name: str | None = None) -> dict[str, Any]:
    """Load a checkpoint into `model` strictly; a mismatch names the file and what does not fit. Returns its meta."""
    file = resolve_checkpoint(path)
    meta = read_meta(file) if file.suffix == ".safetensors" else {}
    state = load_state(file)
    if meta.get("qat") == "pt2e" and not is_pt2e(model):  # a plain model takes the weights, not the quantizers
        state = plain_state(state, model)
    saved_name = meta.get("model")
    if meta.get("pruned") and (model_name is None or saved_name in (None, model_name)):
        shrink_to_state(model, state)  # a pruned checkpoint: narrow the freshly built model to its shapes
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        made_for = f" (it was saved from '{saved_name}')" if saved_name and saved_name != model_name else ""
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
            + (f", e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)}"
               if wrong else "")
            + (f", e.g. missing {missing[0]}" if missing and not wrong else "")
        )
        target = model_name or type(model).__name__
        raise TinykdError(f"checkpoint {file} does not fit model '{target}'{made_for}: {detail}")
    model.load_state_dict(versioned(state, model), strict=True)
    return meta


def versioned(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state` carrying the module versions of `model`'s own state dict, for `load_state_dict`.

    safetensors keeps no `_metadata`, and without it a module that migrates old checkpoints takes ours for its
    oldest format: torchao's observers then reset their `eps`, and a resumed QAT run drifts from the original."""
    from collections import OrderedDict

    out: Any = OrderedDict(state)
    out._metadata = getattr(model.state_dict(), "_metadata", None)
    return out


def shrink_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Narrow Conv2d, Linear and BatchNorm layers of `model` to the (smaller) shapes saved in `state`.

    A structurally pruned model has fewer channels than its constructor makes, and safetensors holds no code,
    so loading rebuilds the original model and shrinks it here before `load_state_dict`. Only dimensions that
    got smaller are changed; anything else is left for `load_weights` to report. Returns the shrunk modules.
    """
    shrunk = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d) and weight.ndim == 4:
            changed = _shrink_conv(module, weight)
        elif isinstance(module, nn.Linear) and weight.ndim == 2:
            changed = _shrink_linear(module, weight)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and weight.ndim == 1:
            changed = _shrink_batchnorm(module, weight.shape[0])
        else:
            continue
        if changed:
            shrunk.append(name)
    return shrunk


def _fits_inside(new: tuple[int, ...], old: tuple[int, ...]) -> bool:
    return len(new) == len(old) and all(0 < n <= o for n, o in zip(new, old, strict=True)) and new != old


def _resize(module: nn.Module, attr: str, shape: tuple[int, ...]) -> None:
    """Replace a parameter or buffer by an uninitialised one of `shape` (the checkpoint then fills it)."""
    old = getattr(module, attr, None)
    if old is None:
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, new)


def _shrink_conv(conv: nn.Conv2d, weight: torch.Tensor) -> bool:
    shape = tuple(weight.shape)
    if not _fits_inside(shape, tuple(conv.weight.shape)) or shape[2:] != tuple(conv.weight.shape[2:]):
        return False
    out_channels, in_per_group = shape[0], shape[1]
    if conv.groups > 1 and conv.groups == conv.in_channels:  # depthwise: groups follow the channels
        multiplier = conv.out_channels // conv.groups
        if out_channels % multiplier:
            return False
        conv.groups = out_channels // multiplier
    if out_channels % conv.groups:
        return False
    conv.out_channels, conv.in_channels = out_channels, in_per_group * conv.groups
    _resize(conv, "weight", shape)
    _resize(conv, "bias", (out_channels,))
    return True


def _shrink_linear(linear: nn.Linear, weight: torch.Tensor) -> bool:
    shape = tuple(weight.shape)
    if not _fits_inside(shape, tuple(linear.weight.shape)):
        return False
    linear.out_features, linear.in_features = shape
    _resize(linear, "weight", shape)
    _resize(linear, "bias", (shape[0],))
    return True


def _shrink_batchnorm(bn: nn.modules.batchnorm._BatchNorm, features: int) -> bool:
    if not 0 < features < bn.num_features:
        return False
    bn.num_features = features
    for attr in ("weight", "bias", "running_mean", "running_var"):
        _resize(bn, attr, (features,))
    return True
