"""A run's pieces built from its recipe: the data, the models, the loss terms and the distiller.

`run`, the compression tools, `tinykd eval` and the demo all build through here, so that a model or a
dataset is made the same way everywhere. Nothing here trains, and nothing here knows of devices.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tinykd.data import DataBundle, WithIndex, build_datasets, make_loader
from tinykd.data.datasets import check_text_settings, is_text_dataset
from tinykd.data.text import TextOptions
from tinykd.data.text_augment import TextAugmentOptions
from tinykd.distill import Distiller
from tinykd.distill.cache import CachedBatches, TeacherCache, weights_digest
from tinykd.distill.ensemble import TeacherEnsemble
from tinykd.errors import TinykdError
from tinykd.hub import is_hub_id
from tinykd.losses import LOSSES, LossTerm, build_loss_term
from tinykd.models import create_model
from tinykd.models.checkpoint import load_weights, read_meta, resolve_checkpoint, run_folder_of
from tinykd.models.hf import load_embedding_model, load_masked_lm
from tinykd.models.qat import is_pt2e
from tinykd.models.registry import sized_for
from tinykd.recipes import Recipe
from tinykd.recipes.schema import ModelSpec
from tinykd.tasks import get_task

TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_data(recipe: Recipe, augment: bool | None = None, static_shapes: bool = False) -> DataBundle:
    """The recipe's datasets and its seeded validation split.

    Text is tokenized here with the tokenizer `text_tokenizer` finds (or one trained on the training texts);
    `static_shapes` pads every text batch to `data.max_length` (XLA compiles one shape).
    """
    d = recipe.data
    task = get_task(d.task)
    augment = d.augment if augment is None else augment
    text = None
    check_text_settings(d.name, text_augment=d.text_augment, label_names=d.label_names)
    if is_text_dataset(d.name):
        text = TextOptions(train=d.train, test=d.test, text_column=d.text_column, text_pair_column=d.text_pair_column,
                           label_column=d.label_column, label_names=d.label_names, task=task, max_length=d.max_length,
                           tokenizer=text_tokenizer(recipe), vocab_size=d.vocab_size, lowercase=d.lowercase,
                           mlm_probability=d.mlm_probability, static_shapes=static_shapes,
                           source_column=d.source_column, target_column=d.target_column,
                           packing=d.packing, augment=text_augment(recipe) if augment else None)  # fmt: skip
    bundle = build_datasets(d.name, d.root, d.download, augment, d.val_size, d.train_subset, recipe.seed,
                            d.image_size, d.bad_images, text=text)  # fmt: skip
    bundle.task = task  # images too: the engine, the distiller and the report call it
    return bundle


def text_augment(recipe: Recipe) -> TextAugmentOptions | None:
    """`data.text_augment` as the data builders take it (None: no word swaps), with the loader of the model that
    proposes the swaps (a masked LM, or any model for its input embeddings)."""
    spec = recipe.data.text_augment
    if spec is None:
        return None
    loader = embedding_model if spec.candidates == "embeddings" else masked_lm
    return TextAugmentOptions(**spec.model_dump(), masked_lm=partial(loader, spec.model))


def masked_lm(spec: str, tokenizer: Any) -> tuple[nn.Module, str, str]:
    """The masked LM that proposes TinyBERT's word swaps, its name, and a digest of its weights."""
    model, name = load_masked_lm(spec, tokenizer)
    return model, name, weights_digest(model)


def embedding_model(spec: str, tokenizer: Any) -> tuple[nn.Module, str, str]:
    """The model whose input embeddings propose word swaps (candidates: embeddings): any model with the data's
    vocabulary, such as the teacher; its name and a digest of its weights."""
    model, name = load_embedding_model(spec, tokenizer)
    return model, name, weights_digest(model)


def text_tokenizer(recipe: Recipe) -> str | None:
    """Where a text run's tokenizer comes from: `data.tokenizer`, else the teacher's (its run folder, Hugging Face
    directory or hub id), else the student's; None when there is none (one is then trained on the training texts)."""
    if recipe.data.tokenizer:
        return recipe.data.tokenizer
    for spec in (*recipe.teacher_specs, recipe.trained):
        if spec.checkpoint:
            found = checkpoint_tokenizer(spec.checkpoint)
            if found is not None:
                return str(found)
        if spec.name.startswith("hf:") and (_has_tokenizer(Path(spec.name[3:])) or is_hub_id(spec.name[3:])):
            return spec.name[3:]  # a Hugging Face directory, or a hub id (its tokenizer comes with it)
    return None


def checkpoint_tokenizer(checkpoint: str | Path) -> Path | None:
    """The tokenizer saved with a text run: its run folder's `tokenizer/` (named in the checkpoint's metadata)."""
    file = resolve_checkpoint(checkpoint)
    meta = read_meta(file) if file.suffix == ".safetensors" else {}
    if not meta.get("tokenizer"):
        return None
    folder = run_folder_of(file) / meta["tokenizer"]
    if not _has_tokenizer(folder):
        raise TinykdError(f"checkpoint {file} was trained with the tokenizer in {folder}, which is missing; "
                          "set data.tokenizer to a tokenizer folder")  # fmt: skip
    return folder


def _has_tokenizer(folder: Path) -> bool:
    try:
        return folder.is_dir() and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    except OSError:
        return False


def build_model(spec: ModelSpec, data: DataBundle, role: str) -> nn.Module:
    """Create a model for the data's classes and channels (kwargs may override them); load its checkpoint.

    A Hugging Face model (`hf:`) gets the task and, when built from a config alone, the tokenizer's vocabulary
    size and pad id; restored from a tinykd checkpoint, it is rebuilt from the architecture saved there.
    """
    name, kwargs = spec.name, {"num_classes": data.num_classes, "in_channels": data.in_channels, **spec.kwargs}
    if name.startswith("hf:"):
        kwargs.setdefault("task", data.task.name)  # the saved kwarg models read (an Auto class per task name)
        if data.tokenizer is not None:
            kwargs.setdefault("vocab_size", len(data.tokenizer))
            kwargs.setdefault("pad_token_id", data.tokenizer.pad_token_id)
            _check_same_tokenizer(name, data, role)
            if data.task.generative:
                kwargs.setdefault("token_ids", generation_token_ids(data))
        if spec.checkpoint:
            file = resolve_checkpoint(spec.checkpoint)
            saved = read_meta(file) if file.suffix == ".safetensors" else {}
            if str(saved.get("model", "")).startswith("hf:"):
                name = saved["model"]
                kwargs = {**kwargs, **saved.get("kwargs", {})}
    model = create_model(name, **sized_for(name, kwargs, data.image_size))
    if spec.checkpoint:
        load_weights(model, spec.checkpoint, name)
    if data.task.text_to_text:
        _align_decoder_start(model, data, role)
    return model


def _text_datasets(data: DataBundle) -> list[Any]:
    """The tokenized datasets under the bundle's splits (the validation split shares the training one)."""
    found = []
    for split in (data.train, data.val, data.test):
        while split is not None and not hasattr(split, "decoder_start_id") and hasattr(split, "dataset"):
            split = split.dataset
        if split is not None and hasattr(split, "decoder_start_id") and split not in found:
            found.append(split)
    return found


def generation_token_ids(data: DataBundle) -> dict[str, int]:
    """The tokenizer's begin, end and decoder-start ids, for a generative model built from a config here."""
    tok = data.tokenizer
    ids = {"bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
           "eos_token_id": tok.eos_token_id}  # fmt: skip
    datasets = _text_datasets(data)
    if data.task.text_to_text and datasets:
        ids["decoder_start_token_id"] = datasets[0].decoder_start_id
    return {k: v for k, v in ids.items() if v is not None}


def _align_decoder_start(model: nn.Module, data: DataBundle, role: str) -> None:
    """The decoder's first input is the model's `decoder_start_token_id` (as in its generate()): the data
    takes it from the first model that has one; a second model that disagrees is one line."""
    config = getattr(model, "config", None)
    start = getattr(config, "decoder_start_token_id", None)
    datasets = _text_datasets(data)
    if start is None or not datasets:
        return
    current = datasets[0].decoder_start_id
    if data.decoder_start_from is not None and start != current:
        raise TinykdError(f"the {role} starts its decoder with token {start}, the {data.decoder_start_from} with "
                          f"{current}: teacher and student must share decoder_start_token_id (set it in the "
                          "config)")  # fmt: skip
    for dataset in datasets:
        dataset.decoder_start_id = int(start)
    data.decoder_start_from = role


def _check_same_tokenizer(name: str, data: DataBundle, role: str) -> None:
    """A saved Hugging Face model with a tokenizer of its own must use the data's (the teacher's) vocabulary:
    the same ids must mean the same tokens, or the distillation compares unrelated distributions."""
    folder = Path(name[3:]).expanduser()
    if not _has_tokenizer(folder):
        return
    from tinykd.data.tokenizers import load_tokenizer

    own = load_tokenizer(str(folder))
    if own.get_vocab() != data.tokenizer.get_vocab():
        raise TinykdError(f"the {role} hf:{folder} has its own tokenizer ({len(own)} tokens) that differs from the "
                          f"data's ({len(data.tokenizer)} tokens, the teacher's or data.tokenizer): teacher and "
                          "student must share one; set data.tokenizer to the one both were trained with")  # fmt: skip


def build_loss_terms(recipe: Recipe) -> dict[str, tuple[LossTerm, float]]:
    """The recipe's loss terms, built, with their weights: what a `Distiller` takes."""
    return {key: (build_loss_term(s.type or key, s.params()), s.weight) for key, s in recipe.loss_terms.items()}


def needs_teacher(recipe: Recipe) -> bool:
    """Whether any loss term reads the teacher's outputs."""
    return any(LOSSES.get(s.type or k).needs_teacher for k, s in recipe.loss_terms.items())


def build_teacher(recipe: Recipe, data: DataBundle, for_init: bool = False) -> nn.Module | None:
    """The frozen teacher with its trained weights (with `teachers:`, a `TeacherEnsemble` of them), or None when
    no loss term uses it (and, with `for_init`, no student starts from its layers)."""
    specs = recipe.teacher_specs
    if not specs or not (needs_teacher(recipe) or (for_init and recipe.trained.init_from_teacher)):
        return None
    models = []
    for i, spec in enumerate(specs):
        where = "teacher" if recipe.teachers is None else f"teachers[{i}]"
        if not (spec.checkpoint or spec.kwargs.get("pretrained") or _named_weights(spec)):
            raise TinykdError(f"{where}.checkpoint is not set: a teacher needs trained weights (tinykd train "
                              "makes them)")  # fmt: skip
        models.append(build_model(spec, data, where))
    if recipe.teachers is None:
        return models[0]
    return TeacherEnsemble(models, [t.weight for t in recipe.teachers])


def build_student(recipe: Recipe, data: DataBundle, teacher: nn.Module | None) -> nn.Module:
    """The model to train: built by name, or, with `init_from_teacher`, a copy of the teacher that keeps some of
    its layers (DistilBERT's student starts from every other layer of BERT); with a `quantize` section,
    fake-quantized for quantization-aware training (`models/qat.py`: linear layers in place, a convolutional
    student as a graph prepared by torchao's PT2E flow)."""
    layers = recipe.trained.init_from_teacher
    if layers is None:
        student = build_model(recipe.trained, data, "student")
    else:
        from tinykd.models.hf import student_from_teacher

        if teacher is None:
            raise TinykdError("student.init_from_teacher needs the teacher's weights (teacher.checkpoint)")
        student = student_from_teacher(teacher, layers)
        if recipe.trained.checkpoint:  # resuming or continuing: the student's own weights win
            load_weights(student, recipe.trained.checkpoint)
    if recipe.quantize is not None:
        from tinykd.models.qat import prepare_qat

        student = prepare_qat(student, recipe.quantize, probe_batch(data))
    return student


def plain_student(recipe: Recipe, data: DataBundle, graph: nn.Module) -> nn.Module:
    """The student's own architecture with the weights of its PT2E quantization-aware graph, without the fake
    quantizers: the fp32 model that `tinykd export` and `quantize` read from the run's checkpoints."""
    from tinykd.models.qat import plain_state

    plain = build_model(recipe.trained, data, "student")
    plain.load_state_dict(plain_state(graph.state_dict(), plain), strict=True)
    return plain.eval()


def _named_weights(spec: ModelSpec) -> bool:
    """An `hf:` name that brings weights: a directory or a hub id, not a bare model type built from a config."""
    if not spec.name.startswith("hf:") or "config" in spec.kwargs:
        return False
    from transformers import CONFIG_MAPPING

    rest = spec.name[3:]
    return Path(rest).is_dir() or rest not in CONFIG_MAPPING


def probe_batch(data: DataBundle) -> Any:
    """The first few training inputs, unaugmented: they check the models and size the adapters."""
    inputs, _ = next(iter(make_loader(data.train, 4, train=False)))
    return inputs


def build_distiller(recipe: Recipe, student: nn.Module, teacher: nn.Module | None, probe_inputs: Any,
                    teacher_precision: str | list[str] | None = None,
                    num_samples: int | None = None) -> Distiller:  # fmt: skip
    """Student, teacher (in `teacher_precision`: `teacher.precision` with `auto` resolved for the device; one
    per teacher with `teachers:`) and weighted loss terms, checked on the probe batch; `num_samples`, the
    training set's size, for terms that keep a memory per sample (then train on `training_set(...)`)."""
    specs = recipe.teacher_specs
    if isinstance(teacher_precision, str):
        teacher_precision = [teacher_precision]
    precisions = teacher_precision or [spec.precision for spec in specs] or ["fp32"]
    dtype = TEACHER_DTYPES.get(precisions[0]) if teacher is not None else None
    if isinstance(teacher, TeacherEnsemble):  # each teacher in its own format, set here; the ensemble gives fp32
        teacher.cast([TEACHER_DTYPES.get(p) for p in precisions])
        dtype = None
    terms = build_loss_terms(recipe)
    if is_pt2e(student):  # one exported graph: its modules are gone, so forward hooks cannot read features
        taps = [name for name, (term, _) in terms.items() if term.reads_student_features]
        if taps:
            raise TinykdError(f"loss term(s) {', '.join(taps)} read the student's features, but a convolutional "
                              "student under quantize trains as one exported graph (torchao PT2E) that forward "
                              "hooks cannot tap: use logit terms (ce, kd, dkd, mse) with quantize")  # fmt: skip
    return Distiller(teacher, student, terms, probe_inputs, dtype, num_samples)


def training_set(data: DataBundle, distiller: Distiller) -> Dataset:
    """The training set as the distiller needs it: with each sample's index when a term keeps per-sample memory,
    and with the teacher's cached outputs when it has a teacher cache."""
    if distiller.teacher_cache is not None:
        return CachedBatches(data.train, distiller.teacher_cache)
    return WithIndex(data.train) if distiller.needs_index else data.train


def open_teacher_cache(recipe: Recipe, data: DataBundle, distiller: Distiller) -> TeacherCache | None:
    """The recipe's `teacher.cache`, opened for this teacher, training set and terms, and given to the distiller
    (None without one). A cache made for anything else is refused in one line."""
    spec = recipe.teacher
    if spec is None or spec.cache is None or distiller.teacher is None:
        return None
    if distiller.reads_hidden_states:
        raise TinykdError("teacher.cache keeps logits and tapped features; the hidden-state and attention terms "
                          "need the teacher online: remove teacher.cache")  # fmt: skip
    precision = str(distiller.teacher_dtype).replace("torch.", "") if distiller.teacher_dtype else "fp32"
    width = data.num_classes  # token-level tasks: one distribution over the teacher's vocabulary per position
    if data.task.per_token:
        width = getattr(getattr(distiller.teacher, "config", None), "vocab_size", None) or len(data.tokenizer)
    cache = TeacherCache.open(spec.cache, distiller.teacher, data.train, recipe.seed, distiller.teacher_tap_paths(),
                              width, spec.cache_format, spec.cache_topk, precision)  # fmt: skip
    distiller.teacher_cache = cache
    return cache
