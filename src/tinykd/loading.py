"""Every kind of model file tinykd writes, read back by one function, `load_model(source)`, and the recipe that
made it by another, `recipe_from_checkpoint`.

- a run folder (its best checkpoint, else its last) or a `.safetensors` checkpoint with tinykd's metadata: the
  model rebuilt from that metadata (a registered name, or a Hugging Face architecture saved as its config),
  a pruned one narrowed to its saved shapes, a quantization-aware (PT2E) one as its plain fp32 model;
- a Hugging Face directory (`save_pretrained`: config.json beside the weights): the class its config names, or
  the Auto class of a given task; with its tokenizer when one was saved beside it.

The evaluation, edge and shrink commands all open models here, so a model is rebuilt the same way everywhere.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError
from tinykd.models.checkpoint import load_weights, read_meta, resolve_checkpoint, run_folder_of
from tinykd.recipes import Recipe

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass
class Loaded:
    """A trained model read from a file, in eval mode on the CPU, with what the file said about it."""

    model: nn.Module
    meta: dict[str, Any]  # a tinykd checkpoint's metadata ({} for a Hugging Face directory)
    path: Path  # the checkpoint file, or the Hugging Face directory
    tokenizer_dir: Path | None = None  # the tokenizer saved with it (a text run's, a directory's own), if any

    @property
    def name(self) -> str:
        return str(self.meta.get("model") or f"hf:{self.path}")

    @property
    def label(self) -> str:
        return checkpoint_label(self.path)

    def tokenizer(self) -> Any:
        """The tokenizer saved with the model (None without one): read only when asked for."""
        if self.tokenizer_dir is None:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.tokenizer_dir))


def checkpoint_label(path: Path) -> str:
    """`runs/kd/checkpoints/best.safetensors` is `kd`; any other file is its stem."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem


def is_hf_directory(source: str | Path) -> bool:
    """A Hugging Face model directory: a config.json (written by save_pretrained)."""
    return (Path(source) / "config.json").is_file()


def is_checkpoint_source(source: str | Path) -> bool:
    """A run folder or a checkpoint file (as opposed to a recipe, an .onnx file or a model name)."""
    p = Path(source)
    return p.is_dir() or (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)


def load_model(source: str | Path, task: str | None = None, purpose: str = "loaded") -> Loaded:
    """The model at `source` (a run folder, a tinykd checkpoint, or a Hugging Face directory), in eval mode.

    `task` (a registered task name) picks the Auto class of a Hugging Face directory; without it, the class its
    config names. Every problem with the file is one line naming it (`purpose`: what the caller does with it).
    """
    if is_hf_directory(source):
        return _load_hf_directory(Path(source), task, purpose)
    from tinykd.models import create_model
    from tinykd.models.registry import sized_for

    path = resolve_checkpoint(source)
    if path.suffix != ".safetensors":
        raise TinykdError(f"{path}: expected a tinykd checkpoint (.safetensors with metadata) or a run folder")
    meta = read_meta(path)
    if "model" not in meta:
        raise TinykdError(f"{path} has no tinykd metadata (model name); it was not written by tinykd")
    num_classes, in_channels = meta.get("num_classes"), meta.get("in_channels")
    if (num_classes is None or in_channels is None) and "recipe" in meta:
        from tinykd.pipeline import build_data

        bundle = build_data(recipe_from_checkpoint(meta, path), augment=False)
        num_classes, in_channels = bundle.num_classes, bundle.in_channels
    if num_classes is None or in_channels is None:
        raise TinykdError(f"{path}: its metadata gives neither num_classes and in_channels nor a recipe")
    kwargs = sized_for(meta["model"], meta.get("kwargs", {}), meta.get("image_size"))
    model = create_model(meta["model"], num_classes=num_classes, in_channels=in_channels, **kwargs)
    load_weights(model, path, meta["model"])
    return Loaded(model.eval(), meta, path, saved_tokenizer(meta, path))


def hf_config(folder: Path) -> Any:
    """The config of a `save_pretrained` directory; a missing or broken one is one line."""
    import transformers

    if not is_hf_directory(folder):
        raise TinykdError(f"{folder} is not a Hugging Face model folder (no config.json; write one with "
                          "save_pretrained)")  # fmt: skip
    try:
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises several types for a broken config
        raise TinykdError(f"{folder}/config.json cannot be read as a model config: {_first_line(exc)}") from None


def _load_hf_directory(folder: Path, task: str | None, purpose: str) -> Loaded:
    """A `save_pretrained` directory as the class its config names (or `task`'s Auto class), fp32, on the CPU."""
    import transformers

    from tinykd.models.hf import quiet_transformers

    config = hf_config(folder)
    if task is not None:
        from tinykd.tasks import get_task

        auto = getattr(transformers, get_task(task).hf_auto_class or "AutoModel")
        if type(config) not in auto._model_mapping:
            raise TinykdError(f"model type '{getattr(config, 'model_type', '?')}' cannot be {purpose} as {task}: "
                              f"transformers has no {auto.__name__} for it")  # fmt: skip
        cls = auto
    else:
        names = config.architectures or []
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
    as_saved = {} if task is None else {"dtype": torch.float32}  # a task's model is run and exported here: fp32
    try:
        with warnings.catch_warnings(), quiet_transformers():  # no progress bar over a few tensors
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(folder, local_files_only=True, **as_saved)
    except Exception as exc:  # missing, damaged or mismatched weights, unknown classes, ...
        raise TinykdError(f"{folder} cannot be loaded as a {task or 'Hugging Face'} model: {_first_line(exc)}") \
            from None  # fmt: skip
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return Loaded(model.eval().cpu(), {}, folder, folder if has_tokenizer else None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def saved_tokenizer(meta: dict[str, Any], where: Path | str) -> Path | None:
    """The tokenizer folder a text checkpoint names (relative to its run folder), when it is there."""
    if not meta.get("tokenizer") or not str(where).endswith(".safetensors"):
        return None
    folder = run_folder_of(Path(where)) / str(meta["tokenizer"])
    return folder if folder.is_dir() else None


def recipe_from_checkpoint(meta: dict[str, Any], where: Path | str, overrides: list[str] | None = None,
                           edit: Callable[[dict[str, Any]], None] | None = None) -> Recipe:  # fmt: skip
    """The validated recipe stored in a checkpoint's (or an .onnx file's) metadata, with the run's own tokenizer,
    changed by `edit` (a function of the recipe's dict) and then by `--set` overrides."""
    from tinykd.recipes import validate_recipe
    from tinykd.recipes.load import apply_override

    if "recipe" not in meta:
        raise TinykdError(f"{where} has no tinykd recipe in its metadata, so its dataset is unknown; "
                          "pass --recipe RECIPE to name the data")  # fmt: skip
    data = json.loads(json.dumps(meta["recipe"]))
    tokenizer = saved_tokenizer(meta, where)
    if tokenizer is not None and isinstance(data.get("data"), dict) and not data["data"].get("tokenizer"):
        data["data"]["tokenizer"] = str(tokenizer)  # the text was tokenized with the run's own tokenizer
    if edit is not None:
        edit(data)
    for item in overrides or []:
        apply_override(data, item)
    return validate_recipe(data)


def load_any_recipe(source: str | Path, overrides: list[str] | None = None) -> Recipe:
    """A recipe given as a YAML file or a built-in name, or the recipe inside a checkpoint or run folder."""
    from tinykd.recipes import load_recipe

    if is_checkpoint_source(source):
        path = resolve_checkpoint(source)
        return recipe_from_checkpoint(read_meta(path), path, overrides)
    return load_recipe(str(source), overrides)
