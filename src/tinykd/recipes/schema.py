"""The recipe: one validated document that says what to train, on what data, how, and where.

Every section forbids unknown keys, so a typo is an error that names the key
and lists the allowed ones, never a silently ignored setting. Loss terms are
checked against the registered term's own constructor.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Section):
    """A model by name (`resnet8x4`, `timm:resnet18`, `torchvision:mobilenet_v3_small`, `hf:bert`, `hf:DIR`,
    `hf:HUB_ID`), with weights optionally."""

    name: str = Field(min_length=1, description="a registered model (tinykd models), timm:NAME, torchvision:NAME, "
                      "hf:TYPE (a config), hf:DIR or hf:HUB_ID (a Hugging Face model with its weights)")  # fmt: skip
    checkpoint: str | None = Field(None, description="a .safetensors file or a tinykd run folder")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra constructor arguments")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="teacher only: the number format it runs in (frozen, so bf16 costs little accuracy); "
        "auto: bf16 where the hardware runs it natively, else fp32"
    )  # fmt: skip
    cache: str | None = Field(None, description="teacher only: a folder of the teacher's outputs per training "
                              "batch; filled as the run goes (or by tinykd cache-teacher), read by later runs")
    cache_format: Literal["fp32", "fp16", "topk"] = Field(
        "fp32", description="teacher cache: fp32 (exact), fp16, or topk (the k largest probabilities, FKD)"
    )
    cache_topk: int = Field(10, ge=1, description="teacher cache, format topk: how many probabilities per sample")
    init_from_teacher: list[int] | Literal["every-other"] | None = Field(
        None, description="student only (hf: models): start as a copy of the teacher keeping these layers, "
        "DistilBERT-style; the student's name and kwargs are then not used"
    )  # fmt: skip


class TeacherSpec(ModelSpec):
    """One of several teachers (`teachers:`): a model with weights, and its share of the averaged logits."""

    weight: float = Field(1.0, gt=0, description="its weight in the teachers' mean logits (normalized to sum 1)")


class TextAugmentSpec(Section):
    """TinyBERT's augmentation: in training batches, words swapped for a masked LM's guesses (data/text_augment.py)."""

    model: str = Field(min_length=1, description="a masked LM with the data's tokenizer: a Hugging Face directory, "
                       "a tinykd masked-lm run folder, or a hub id; with candidates: embeddings, any model with "
                       "the data's tokenizer (the teacher)")
    candidates: Literal["masked-lm", "embeddings"] = Field(
        "masked-lm", description="masked-lm: the model's guesses for each masked word in its sentence (TinyBERT); "
        "embeddings: the words nearest in the model's input embeddings (TinyBERT's GloVe route, for a teacher "
        "without a masked-LM head)"
    )  # fmt: skip
    top_k: int = Field(15, ge=1, le=1000, description="candidates per word: the masked LM's best guesses")
    word_prob: float = Field(0.4, ge=0, le=1, description="chance that a word is swapped")
    keep_original: float = Field(0.05, ge=0, le=1, description="chance that a text is left as it is (TinyBERT: "
                                 "1 original per 20 augmented copies)")


class DataSpec(Section):
    """Images (fashion-mnist, digits, cifar10, cifar100, imagefolder) or text (text, sst2, hf:DATASET[/CONFIG])."""

    name: str = Field(min_length=1, description="a registered dataset, or hf:DATASET[/CONFIG] for text")
    root: str | None = Field(None, description="the folder that holds the data (default: $TINYKD_DATA, then the "
                             "dataset's usual places)")  # fmt: skip
    download: bool = Field(False, description="fetch the official files when they are not found (needs a network)")
    augment: bool = Field(True, description="the dataset's standard training augmentation (images: crop and flip)")
    val_size: float = Field(0.1, ge=0, description="fraction of the training set (or a count if >= 1)")
    train_subset: int | None = Field(None, gt=0, description="train on only this many images (seeded)")
    image_size: int | None = Field(None, gt=0, description="resize images to this side (default: the dataset's)")
    batch_size: int = Field(128, gt=0, le=65536, description="per process")
    eval_batch_size: int = Field(512, gt=0, le=65536, description="per process, for validation and test")
    num_workers: int = Field(0, ge=0, le=256, description="data loader worker processes (0: in the main process)")
    bad_images: Literal["error", "skip"] = Field(
        "error", description="imagefolder: an unreadable file stops the run before training, or is left out"
    )
    # text
    train: str | None = Field(None, description="text: the training file (csv, tsv, jsonl or parquet)")
    test: str | None = Field(None, description="text: the test file")
    text_column: str | None = Field(None, description="text: default the first of text, sentence, content, review")
    text_pair_column: str | None = Field(None, description="text: a second text per sample (sentence pairs)")
    label_column: str = Field("label", description="text: the column of class ids or names")
    label_names: list[str] | None = Field(
        None, min_length=1, description="text: the class names in id order (labels written as names map to them)"
    )
    task: str = Field("classification", description="a registered task: classification, masked-lm, causal-lm, seq2seq")
    source_column: str | None = Field(None, description="seq2seq: the input texts; default as text_column's")
    target_column: str = Field("target", description="seq2seq: the texts the decoder learns to write")
    packing: bool = Field(False, description="causal-lm: texts joined end to end and cut into max_length blocks")
    max_length: int = Field(128, gt=1, le=8192, description="text: tokens per sequence, at most")
    tokenizer: str | None = Field(
        None, description="text: a tokenizer directory or hub id; default the teacher's, else one trained here"
    )
    vocab_size: int = Field(8000, ge=100, le=1_000_000, description="text: size of a WordPiece trained here")
    lowercase: bool = Field(True, description="text: a WordPiece trained here lowercases")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: fraction of tokens to predict")
    text_augment: TextAugmentSpec | None = Field(
        None, description="classification: TinyBERT's word swaps in training batches (while augment is true)"
    )

    @field_validator("label_names")
    @classmethod
    def _distinct_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and (len(set(names)) != len(names) or not all(n.strip() for n in names)):
            raise ValueError(f"label_names {names} must be distinct, non-empty class names in id order")
        return names


class LossTermSpec(BaseModel):
    """`weight` multiplies this term in the total; `type` is the registered term (default: the entry's key)."""

    model_config = ConfigDict(extra="allow")
    type: str | None = Field(None, description="the registered loss term (default: the entry's key)")
    weight: float = Field(1.0, ge=0, description="its weight in the total loss")

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerSpec(Section):
    name: Literal["sgd", "adamw"] = Field("sgd", description="the optimizer")
    lr: float = Field(0.1, gt=0, le=100, description="peak learning rate, for the global batch as given")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="L2 (sgd) or decoupled (adamw) weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adamw: the moment decay rates")


class ScheduleSpec(Section):
    """Learning rate over training: step decay, cosine, or one-cycle, after an optional linear warm-up."""

    name: Literal["constant", "step", "cosine", "onecycle"] = Field("cosine", description="the schedule")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from 0, in epochs (fractions allowed)")
    milestones: list[float] = Field(default_factory=list, description="step: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="step: the factor at each milestone")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine/onecycle: final lr as a fraction of lr")
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: fraction of steps spent rising")


class TrainSpec(Section):
    epochs: int = Field(5, gt=0, le=100000, description="passes over the training set")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="the optimizer and its settings")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="the learning rate over training")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradients' global norm to this (null: no clip)")
    log_every: int = Field(50, gt=0, description="steps between training log lines (metrics.jsonl)")
    max_steps_per_epoch: int | None = Field(None, gt=0, description="cut epochs short (smoke tests)")
    checkpoint_every: int | None = Field(
        1000, gt=0, description="steps between resume checkpoints (also written at each epoch end); null: epochs only"
    )
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="resume checkpoints kept (the newest)")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a nan/inf loss: stop the run, or skip the step (one device read per step)"
    )
    max_skipped_steps: int = Field(10, ge=0, description="nonfinite=skip: stop after more skipped steps than this")


class RuntimeSpec(Section):
    """Where and how the run executes. `auto` takes cuda, else xla (when PJRT_DEVICE is set), else mps, else cpu."""

    device: Literal["auto", "cpu", "cuda", "mps", "xla"] = Field(
        "auto", description="where to train; auto: cuda, else xla (when PJRT_DEVICE is set), else mps, else cpu"
    )  # fmt: skip
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="autocast; fp16 adds a loss scaler; auto: bf16 where native (GPU, TPU, AMX CPU), else fp32"
    )
    compile: bool = Field(False, description="torch.compile the training step (student and teacher forward)")
    channels_last: bool = Field(False, description="images in channels-last memory format (faster convolutions "
                                "on many CPUs and GPUs)")  # fmt: skip
    threads: int | None = Field(None, gt=0, le=1024, description="torch CPU threads (default: torch's choice)")
    deterministic: bool = Field(
        False, description="GPUs: deterministic kernels only (cuDNN autotuning off, PyTorch's deterministic "
        "algorithms, cuBLAS's fixed workspace), so that a run repeats, and a run from a teacher cache equals the "
        "online one, as on CPUs; slower. An op with no deterministic kernel warns once and runs anyway"
    )  # fmt: skip
    time_breakdown: bool = Field(True, description="say at the end where the training time went (teacher forward, "
                                 "student, data, evaluation); on a GPU it syncs the device per step; off on XLA")
    log_with: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]] = Field(
        default_factory=list, description="experiment trackers that get metrics.jsonl's scalars (main process only)"
    )  # fmt: skip


class MeasureSpec(Section):
    """What the report measures about each model after training."""

    enabled: bool = Field(True, description="time and size each model after training (off: accuracy only)")
    latency_repeats: int = Field(200, gt=0, le=100000, description="timed calls at batch 1 (the median is reported)")
    throughput_batch: int = Field(64, gt=0, le=65536, description="the batch size of the throughput measurement")
    sequence_length: int = Field(64, gt=0, le=8192, description="text models: tokens per timed sequence")
    generate_samples: int = Field(200, ge=0, le=1_000_000, description="seq2seq: test sources decoded greedily "
                                  "for exact match and ROUGE-L (0: none)")  # fmt: skip
    new_tokens: int = Field(32, gt=0, le=8192, description="generative models: new tokens per timed generation")
    threads: int | None = Field(None, gt=0, le=1024, description="CPU threads for the timings (default: torch's)")


class PruneSpec(Section):
    """How much `tinykd prune` removes: `ratio` of the `target` (parameters or MACs), e.g. 0.5 halves it."""

    ratio: float = Field(0.5, gt=0, lt=1, description="fraction of the target to remove (0.5: half)")
    target: Literal["params", "macs"] = Field("params", description="what the ratio counts: params or macs")
    steps: int = Field(50, gt=0, le=1000, description="pruning steps toward the target (more: closer to it)")


class QuantizeSpec(Section):
    """Quantization-aware training: the student trains with fake-quantized weights (and activations), then is
    converted to real low-bit weights. Through torchao: its module QAT for linear layers, its PT2E flow for
    convolutional students."""

    weights: Literal["int8", "int4"] = Field("int4", description="weight format: int8 or int4")
    activations: Literal["int8", "none"] = Field("int8", description="int8 (dynamic, per token) or none")
    granularity: Literal["per-channel", "per-group"] | None = Field(
        None, description="one weight scale per output channel, or per group of group_size inputs (default: "
        "per-group for linear layers, per-channel for convolutional students)"
    )  # fmt: skip
    group_size: int = Field(32, gt=0, le=4096, description="per-group: inputs sharing one scale (a power of 2)")
    reduce_range: bool = Field(
        False, description="int8 weights of a convolutional student in [-63, 63]: ONNX Runtime's int8 kernels on "
        "x86 CPUs without VNNI (AVX2) add pairs of uint8 x int8 products in int16, which full-range weights "
        "saturate; 7-bit weights never do"
    )  # fmt: skip
    embeddings: bool | Literal["per-row", "per-group"] = Field(
        False, description="also the nn.Embedding tables, weight-only (a small text model's token embeddings are "
        "most of its weights): true in the weights' granularity, or per-row (one scale per row) or per-group"
    )  # fmt: skip

    @model_validator(mode="after")
    def _group(self) -> QuantizeSpec:
        if self.granularity != "per-channel" and self.group_size & (self.group_size - 1):
            raise ValueError(f"group_size must be a power of 2 (e.g. 32), got {self.group_size}")
        if self.reduce_range and self.weights != "int8":
            raise ValueError("reduce_range narrows int8 weights to [-63, 63]; int4 weights need no narrowing")
        return self


class Recipe(Section):
    """A whole run. `teacher` is for distillation; `student` (alias `model`) is the model being trained."""

    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="the run's name (reports)")
    seed: int = Field(0, ge=0, lt=2**32, description="seeds the models' initialisation, data order and augmentation")
    data: DataSpec = Field(description="the dataset and how it is batched")
    teacher: ModelSpec | None = Field(None, description="the frozen teacher (distill)")
    teachers: list[TeacherSpec] | None = Field(
        None, min_length=1, description="several frozen teachers instead of one: terms read their weighted mean "
        "logits, or one teacher's outputs by tap ('0', '1', ...)"
    )  # fmt: skip
    student: ModelSpec | None = Field(None, description="the model trained")
    model: ModelSpec | None = Field(None, description="the model trained, another name for student (train)")
    loss_terms: dict[str, LossTermSpec] = Field(default_factory=lambda: {"ce": LossTermSpec()},
                                                description="the weighted terms of the loss, by name")  # fmt: skip
    train: TrainSpec = Field(default_factory=TrainSpec, description="epochs, optimizer, schedule, checkpoints")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="device, precision, threads, trackers")
    measure: MeasureSpec = Field(default_factory=MeasureSpec, description="what the report measures")
    prune: PruneSpec | None = Field(None, description="tinykd prune: structured pruning, then recovery")
    quantize: QuantizeSpec | None = Field(None, description="quantization-aware training of the student")

    @model_validator(mode="after")
    def _one_student(self) -> Recipe:
        if self.student is not None and self.model is not None:
            raise ValueError("give either 'student' or 'model' (they are the same thing), not both")
        if self.student is None and self.model is None:
            raise ValueError("missing 'student' (or 'model'): the model to train")
        if not self.loss_terms:
            raise ValueError("loss_terms is empty: give at least one term, e.g. ce: {weight: 1.0}")
        if self.trained.precision != "fp32":
            raise ValueError("precision is for the frozen teacher; the trained model's is runtime.precision")
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("give either 'teacher' (one) or 'teachers' (a list), not both")
        if self.trained.init_from_teacher is not None and self.teacher is None:
            raise ValueError("student.init_from_teacher copies layers of one teacher; add a 'teacher' section")
        if any(t.init_from_teacher is not None for t in self.teacher_specs):
            raise ValueError("init_from_teacher is for the student, not the teacher")
        if self.trained.cache is not None:
            raise ValueError("cache is for the teacher (teacher.cache: its outputs), not the model being trained")
        if self.teachers is not None and any(t.cache is not None for t in self.teachers):
            raise ValueError("a teacher cache is for one teacher ('teacher'), not for 'teachers'")
        return self

    @property
    def teacher_specs(self) -> list[ModelSpec]:
        """The teachers: `teachers`, or `[teacher]`, or none."""
        return list(self.teachers) if self.teachers is not None else [self.teacher] if self.teacher else []

    @property
    def trained(self) -> ModelSpec:
        """The model this run trains (the student of a distillation)."""
        return self.student or self.model  # type: ignore[return-value]


def section_fields(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at a location in the recipe (for 'unknown key' errors)."""
    cls: Any = Recipe
    for part in loc:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return list(cls.model_fields)
