"""Hugging Face transformers by name (`hf:NAME_OR_DIR`), and a student started from its teacher's layers.

`hf:` resolves a local directory (weights loaded), a model type such as `bert` (built from its config, no
weights, no network) or a hub id (loaded from the cache when downloads are off). `student_from_teacher` is
DistilBERT's initialisation (Sanh et al. 2019): the teacher with every other transformer layer, copied tensor
for tensor. transformers is imported inside the functions: it is slow to import, and vision-only use of
tinykd never needs it.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from tinykd.errors import TinykdError, close_matches

# task name -> (the transformers Auto class, whether it takes num_labels): filled by `tinykd.tasks` as each task is
# registered (models sit below tasks and never name one), and read as the `task` argument of `create_hf_model`,
# the keyword that tinykd checkpoints of Hugging Face models save in their kwargs.
HF_TASKS: dict[str, tuple[str, bool]] = {}


def register_hf_task(name: str, auto_class: str, labelled: bool) -> None:
    """Let `create_hf_model(task=name)` build `auto_class` models (`labelled`: a classifier head of num_classes)."""
    HF_TASKS[name] = (auto_class, labelled)

# model_type -> the transformer stacks: (config key of the layer count, module path under `model.base_model`).
# An encoder-decoder lists two stacks, e.g. "bart": (("encoder_layers", "encoder.layers"), ("decoder_layers", ...)).
LAYER_STACKS: dict[str, tuple[tuple[str, str], ...]] = {
    "bert": (("num_hidden_layers", "encoder.layer"),),
    "roberta": (("num_hidden_layers", "encoder.layer"),),
    "xlm-roberta": (("num_hidden_layers", "encoder.layer"),),
    "electra": (("num_hidden_layers", "encoder.layer"),),
    "distilbert": (("n_layers", "transformer.layer"),),
    "gpt2": (("n_layer", "h"),),
    "llama": (("num_hidden_layers", "layers"),),
    "qwen2": (("num_hidden_layers", "layers"),),
    "mistral": (("num_hidden_layers", "layers"),),
    "bart": (("encoder_layers", "encoder.layers"), ("decoder_layers", "decoder.layers")),
    "mbart": (("encoder_layers", "encoder.layers"), ("decoder_layers", "decoder.layers")),
    "marian": (("encoder_layers", "encoder.layers"), ("decoder_layers", "decoder.layers")),
}

# Config keys that name a saved file's origin or that `AutoConfig.for_model` sets itself (`num_labels` comes
# from `num_classes`, which the checkpoint records already), so a rebuilt config stays exact and JSON-able.
_NOT_REBUILT = ("model_type", "architectures", "transformers_version", "_name_or_path", "id2label", "label2id",
                "num_labels", "torch_dtype", "dtype", "_commit_hash", "auto_map")  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _looks_like_path(name: str) -> bool:
    """`./x`, `/x`, `~/x`, `a/b/c`, or `a/b` whose `a` is a local folder: never a hub id (`org/model`)."""
    return (
        name.startswith((".", "/", "~")) or name.count("/") > 1 or ("/" in name and Path(name.split("/")[0]).is_dir())
    )


def create_hf_model(name: str, num_classes: int | None = None, task: str = "classification",
                    config: dict | None = None, vocab_size: int | None = None, pad_token_id: int | None = None,
                    attn_implementation: str | None = None, revision: str | None = None,
                    token_ids: dict[str, int] | None = None) -> nn.Module:  # fmt: skip
    """The model `hf:<name>` for `task`: a local directory, a transformers model type, or a hub id.

    `token_ids` (bos_token_id, eos_token_id, decoder_start_token_id: the tokenizer's) go into a config built
    here, so that generate() starts and stops on tokens the tokenizer has; a saved model keeps its own."""
    if task not in HF_TASKS:
        raise TinykdError(f"unknown task '{task}' for hf:{name}; tasks: {', '.join(HF_TASKS)}")
    auto_class, labelled = HF_TASKS[task]
    if labelled and (num_classes is None or num_classes < 1):
        raise TinykdError(f"hf:{name} as a classifier needs num_classes >= 1, got {num_classes}")
    import transformers

    auto = getattr(transformers, auto_class)
    extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    labels = {"num_labels": num_classes} if labelled else {}
    overrides = dict(config or {})
    if "num_labels" in overrides and labels and overrides["num_labels"] != num_classes:
        raise TinykdError(f"hf:{name}: config num_labels={overrides['num_labels']} but the data has {num_classes} "
                          "classes; drop num_labels from the config")  # fmt: skip
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise TinykdError(f"hf:{name} is a directory without config.json; give a save_pretrained directory")
            base = transformers.AutoConfig.from_pretrained(path)
            if overrides:  # a new architecture from the saved one: no weights
                base.update({**labels, **overrides})
                return _from_config(auto, base, vocab_size, pad_token_id, extra, name, task, keep=overrides,
                                    token_ids=token_ids)  # fmt: skip
            _check_vocab(name, base, vocab_size)
            if labels and _has_classifier(base) and base.num_labels != num_classes:
                warnings.warn(f"hf:{name} was saved with {base.num_labels} labels; a new {num_classes}-label head "
                              "is initialised", stacklevel=2)  # fmt: skip
                extra["ignore_mismatched_sizes"] = True
            if base.pad_token_id is None and pad_token_id is not None:
                extra["pad_token_id"] = pad_token_id
            if labels and base.num_labels == num_classes:
                labels = {}  # keep the saved label names
            return _load_pretrained(auto, path, name, **labels, **extra)
        if name in transformers.CONFIG_MAPPING:
            base = transformers.AutoConfig.for_model(name, **{**labels, **overrides})
            return _from_config(auto, base, vocab_size, pad_token_id, extra, name, task, keep=overrides,
                                token_ids=token_ids)  # fmt: skip
        if path.exists():
            raise TinykdError(f"hf:{name} is a file; give the directory that holds its config.json")
        if _looks_like_path(name):
            raise TinykdError(f"hf:{name}: directory {path} does not exist")
        if overrides:
            raise TinykdError(
                f"hf:{name} is not a transformers model type{close_matches(name, transformers.CONFIG_MAPPING)}"
                "; config overrides need a model type (bert, gpt2, ...) or a local directory"
            )
        return _from_hub(auto, name, revision, labels, pad_token_id, extra)
    except (OSError, ValueError, ImportError, TypeError) as exc:
        raise TinykdError(f"hf:{name} ({task}) could not be built: {_first_line(exc)}") from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and its multi-line load report off: tinykd prints one line of its own."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_pretrained(auto: Any, source: Any, name: str, **kwargs: Any) -> nn.Module:
    """`from_pretrained`, saying in one line which weights were new (a fresh head) and which were left unused."""
    try:
        with quiet_transformers():
            model, info = auto.from_pretrained(source, output_loading_info=True, **kwargs)
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise TinykdError(f"hf:{name}: {_damaged_file(source, kwargs.get('revision'))} is damaged "
                          f"({_first_line(exc)}): download or save it again") from None  # fmt: skip
    new, unused = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    resized = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or [])
    parts = [f"{len(new)} new tensors ({_short(new)})" if new else "",
             f"{len(resized)} re-initialised for a new shape ({_short(resized)})" if resized else "",
             f"{len(unused)} saved tensors unused ({_short(unused)})" if unused else ""]  # fmt: skip
    if any(parts):
        print(f"tinykd: hf:{name}: weights loaded; " + "; ".join(p for p in parts if p), flush=True)
    return model


def _damaged_file(source: Any, revision: str | None) -> str:
    """The first `.safetensors` file of a model directory or cached hub id whose header does not read (a
    truncated download, most often); the folder's pattern when none can be named."""
    from safetensors import safe_open

    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(source), "config.json", revision=revision)
        folder = Path(cached).parent if isinstance(cached, str) else folder
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception:
            return str(path)
    return str(folder / "*.safetensors")


def _short(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def _from_config(auto: Any, base: Any, vocab_size: int | None, pad_token_id: int | None, extra: dict[str, Any],
                 name: str, task: str, keep: dict | None = None,
                 token_ids: dict[str, int] | None = None) -> nn.Module:  # fmt: skip
    """A fresh model of `base`'s architecture; the tokenizer's vocab size and pad id (and, for generation, its
    begin, end and decoder-start tokens) unless the config sets them."""
    keep = keep or {}
    if vocab_size is not None and "vocab_size" not in keep:
        base.vocab_size = vocab_size
    if pad_token_id is not None and "pad_token_id" not in keep:
        base.pad_token_id = pad_token_id
    for key, value in (token_ids or {}).items():
        if key not in keep and value is not None:
            setattr(base, key, value)
            if key == "eos_token_id" and "forced_eos_token_id" not in keep and \
                    getattr(base, "forced_eos_token_id", None) is not None:  # fmt: skip
                base.forced_eos_token_id = value  # BART's config forces its own </s> id
    try:
        return auto.from_config(base, **extra)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise TinykdError(f"hf:{name} ({base.model_type}) has no '{task}' model in transformers") from None
        raise


def _from_hub(auto: Any, name: str, revision: str | None, labels: dict[str, Any], pad_token_id: int | None,
              extra: dict[str, Any]) -> nn.Module:  # fmt: skip
    """A hub id: from the hub cache with no network call when it is there (tinykd.hub), else downloaded."""
    from tinykd.hub import offline, source_kwargs

    local = source_kwargs(name, f"hf:{name}", revision)
    kwargs = {**labels, **extra, **local, **({"revision": revision} if revision else {})}
    try:
        model = _load_pretrained(auto, name, name, **kwargs)
    except OSError as exc:
        if local and offline():
            raise TinykdError(f"hf:{name} is not in the local Hugging Face cache and downloads are off "
                              "(TINYKD_OFFLINE or HF_HUB_OFFLINE); download it once with network access, or give a "
                              "local directory (hf:/path/to/model)") from None  # fmt: skip
        raise TinykdError(f"hf:{name} could not be loaded from the hub: {_first_line(exc)}") from None
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def _check_vocab(name: str, config: Any, vocab_size: int | None) -> None:
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise TinykdError(f"hf:{name} embeds {config.vocab_size} tokens but the tokenizer has {vocab_size}; "
                          "use the tokenizer saved with the model")  # fmt: skip


def _has_classifier(config: Any) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


def is_hf_model(model: nn.Module) -> bool:
    """A transformers `PreTrainedModel` (without importing transformers when nothing has)."""
    if sys.modules.get("transformers") is None:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def hf_checkpoint_spec(model: nn.Module, task: str) -> tuple[str, dict]:
    """(name, kwargs) that rebuild this architecture with create_model, no weights and no network:
    ("hf:<model_type>", {"task": task, "config": <config dict that AutoConfig.for_model accepts>}).

    The config is the full `to_dict()`, not the diff against defaults, so a newer transformers with other
    defaults rebuilds the same architecture; the keys that name an origin or are set by `create_model` go.
    """
    if not is_hf_model(model):
        raise TinykdError(f"{type(model).__name__} is not a Hugging Face model; only hf: models have a config spec")
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_REBUILT}
    return f"hf:{model.config.model_type}", {"task": task, "config": config}


def _stacks(model: nn.Module) -> tuple[tuple[str, str], ...]:
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not is_hf_model(model) or model_type not in LAYER_STACKS:
        raise TinykdError(f"cannot start a student from a '{model_type}' teacher: its layer stacks are unknown; "
                          f"known: {', '.join(LAYER_STACKS)}")  # fmt: skip
    return LAYER_STACKS[model_type]


def _kept_layers(layers: list[int] | str | None, count: int) -> list[int]:
    if layers is None or layers == "every-other":
        return list(range(0, count, 2))
    if isinstance(layers, str):
        raise TinykdError(f"layers '{layers}' is unknown; give 'every-other' or a list of layer indices")
    kept = list(layers)
    in_range = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in kept)
    if not kept or not in_range or kept != sorted(set(kept)):
        raise TinykdError(f"layers {kept} must be distinct teacher layer indices in 0..{count - 1}, "
                          "in increasing order, at least one")  # fmt: skip
    return kept


def student_from_teacher(teacher: nn.Module, layers: list[int] | str | None = None) -> nn.Module:
    """A copy of `teacher` that keeps only the transformer layers listed (default "every-other": 0, 2, 4, ...),
    with the embeddings, the kept layers (renumbered 0..k-1) and the head copied tensor for tensor."""
    stacks = _stacks(teacher)
    base_model: nn.Module = teacher.base_model  # type: ignore[assignment]
    names = {id(m): n for n, m in teacher.named_modules()}
    config = copy.deepcopy(teacher.config)
    renames: dict[str, str] = {}  # "prefix.<teacher index>." -> "prefix.<student index>."
    dropped: list[str] = []
    for count_key, path in stacks:
        count = getattr(config, count_key)
        kept = _kept_layers(layers, count)
        prefix = names[id(base_model.get_submodule(path))]
        renames.update({f"{prefix}.{old}.": f"{prefix}.{new}." for new, old in enumerate(kept)})
        dropped += [f"{prefix}.{i}." for i in range(count) if i not in kept]
        setattr(config, count_key, len(kept))
        if len(getattr(config, "layer_types", None) or []) == count:  # per-layer settings shrink with the stack
            config.layer_types = [config.layer_types[i] for i in kept]
    state = {}
    for key, tensor in teacher.state_dict().items():
        if any(key.startswith(d) for d in dropped):
            continue
        old = next((r for r in renames if key.startswith(r)), None)
        state[renames[old] + key[len(old) :] if old else key] = tensor
    student = type(teacher)(config).to(device=teacher.device, dtype=teacher.dtype)
    student.load_state_dict(state, strict=True)
    return student


def _cpu_state_dict(model: nn.Module) -> dict[str, Any] | None:
    """The weights on the CPU, tied ones still one tensor; None (the model's own) when they are there already.
    safetensors reads storage pointers, which tensors on an XLA device do not have."""
    state = model.state_dict(keep_vars=True)
    if all(v.device.type == "cpu" for v in state.values()):
        return None
    copies: dict[int, Any] = {}
    for v in state.values():
        if id(v) not in copies:
            copies[id(v)] = v.detach().cpu()
    return {k: copies[id(v)] for k, v in state.items()}


def save_hf_directory(model: nn.Module, path: str | Path, tokenizer: Any | None = None,
                      classes: list[str] | None = None) -> Path:  # fmt: skip
    """`save_pretrained` of the model (safetensors) and of the tokenizer if given: a normal Hugging Face
    directory that `AutoModel...from_pretrained` and `AutoTokenizer.from_pretrained` read back. A classifier's
    `classes` become its config's id2label and label2id (what a transformers pipeline prints)."""
    if not is_hf_model(model):
        raise TinykdError(f"{type(model).__name__} is not a Hugging Face model; save it as a tinykd checkpoint")
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    if classes and classifier and model.config.num_labels == len(classes):
        model.config.id2label = dict(enumerate(classes))
        model.config.label2id = {name: i for i, name in enumerate(classes)}
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise TinykdError(f"{out} is a file; give a directory to save the Hugging Face model in")
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():  # a run's log has no use for a bar over one file
        model.save_pretrained(out, state_dict=_cpu_state_dict(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_masked_lm(spec: str, tokenizer: Any) -> tuple[nn.Module, str]:
    """The masked LM named by `data.text_augment.model` and its name; its vocabulary must be the data's."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"  # a tinykd run folder: its Hugging Face directory
    name = str(path) if path.is_dir() else spec
    if path.is_dir() and (path / "config.json").is_file():
        kinds = json.loads((path / "config.json").read_text()).get("architectures") or []
        if kinds and not any(k.endswith(("ForMaskedLM", "ForPreTraining")) for k in kinds):
            raise TinykdError(f"data.text_augment.model {spec} is a {', '.join(kinds)}, not a masked LM; give one "
                              "trained with data.task: masked-lm (e.g. the teacher's pre-training run)")  # fmt: skip
    own = _own_tokenizer(path) if path.is_dir() else None
    if own is not None and own.get_vocab() != tokenizer.get_vocab():
        raise TinykdError(f"data.text_augment.model {spec} has its own tokenizer, not the data's ({len(own)} vs "
                          f"{len(tokenizer)} tokens); its guesses must be tokens of the data's tokenizer: give a "
                          "masked LM trained with it (e.g. the teacher's masked-LM pre-training run)")  # fmt: skip
    model = create_hf_model(name, task="masked-lm", vocab_size=len(tokenizer))
    return model, name


def load_embedding_model(spec: str, tokenizer: Any) -> tuple[nn.Module, str]:
    """The model named by `data.text_augment.model` with `candidates: embeddings` (any model whose input embeddings
    cover the data's tokenizer: a Hugging Face directory, a tinykd text run folder, a hub id), as its config's own
    class so that no weight goes unused, and its name."""
    import transformers

    from tinykd.hub import source_kwargs

    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"  # a tinykd run folder: its Hugging Face directory
    name = str(path) if path.is_dir() else spec
    source = path if path.is_dir() else spec
    extra = {} if path.is_dir() else source_kwargs(spec, "data.text_augment.model")
    with quiet_transformers():
        config = transformers.AutoConfig.from_pretrained(source, **extra)
    kind = next(iter(config.architectures or []), None)
    auto = getattr(transformers, kind, None) if kind else None
    model = _load_pretrained(auto or transformers.AutoModel, source, name, **extra).eval()
    table = model.get_input_embeddings()
    if table is None or table.weight.shape[0] < len(tokenizer):
        rows = "none" if table is None else f"{table.weight.shape[0]} rows"
        raise TinykdError(f"data.text_augment.model {spec} has no input embeddings for the data's "
                          f"{len(tokenizer)} tokens ({rows}); give a model that uses the data's tokenizer, such as "
                          "the teacher")  # fmt: skip
    return model, name


def _own_tokenizer(path: Path) -> Any:
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
