"""Quantization-aware training of a student's linear layers, through torchao.

A recipe's `quantize` section (`weights: int8|int4`, `activations: int8|none`, `granularity`, `group_size`) picks
one torchao base configuration: `Int8DynamicActivationIntxWeightConfig` (int8 activations quantized per token on
the fly, int8 or int4 weights) or `IntxWeightOnlyConfig`. `QATConfig(base, step="prepare")` swaps every
`nn.Linear` for torchao's `FakeQuantizedLinear`, which rounds its weights (and inputs) to the target grid in the
forward pass and lets gradients through (straight-through estimator) while the teacher distils into it;
`step="convert"` then stores the real low-bit weights, and the converted model computes what the fake-quantized
one did (tests assert equality on a batch). With `embeddings: true` the nn.Embedding tables are fake-quantized
too, weight-only in the same format (torchao's `FakeQuantizedEmbedding`): in a small text student the token
embeddings are most of the weights, and a 4-bit file needs them 4-bit.

The scales are computed from the weights at every step (symmetric min-max, per channel or per group), so the
fake-quantized model has no state of its own: its state_dict is the fp32 model's, checkpoints and `--resume`
are unchanged, and a resumed run stays bit for bit.

Convolutional students go through torchao's PT2E flow instead (its module QAT covers linear layers only): the
student is exported as one graph (`torch.export`, batch dimension dynamic), `prepare_qat_pt2e` with torchao's x86
quantizer inserts fake quantizers (per-channel symmetric weights in [-127, 127] or [-7, 7], uint8 per-tensor
activations, moving-average observers) and folds each BatchNorm into its convolution the way the converted model
will; `convert_pt2e` then gives a graph of quantize/dequantize ops around fp32 ones, which `torch.onnx` writes as
ONNX QDQ. The observers' ranges are buffers of that graph, so they are in every checkpoint and resume restores
them. Observers learn in training steps only: `eval()` freezes them, so evaluation never moves a scale.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError

WEIGHT_DTYPES = {"int8": torch.int8, "int4": torch.int4}


def _base_config(spec: Any, embedding: bool = False) -> Any:
    """torchao's post-training configuration that the QAT prepares for and converts to: for an embedding table,
    always weight-only (a table lookup has no activations to quantize), one scale per row or per group of it."""
    try:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError:
        raise TinykdError("recipe section 'quantize' needs torchao: pip install 'tinykd[qat]' (or torchao)") from None
    per_channel = table_granularity(spec) == "per-row" if embedding else spec.granularity == "per-channel"
    granularity = PerAxis(0) if per_channel else PerGroup(spec.group_size)
    dtype = WEIGHT_DTYPES[spec.weights]
    if spec.activations == "int8" and not embedding:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity)


def _is_embedding(module: nn.Module, name: str = "") -> bool:
    return isinstance(module, nn.Embedding)


def quantize_tables(spec: Any) -> bool:
    """Whether the spec quantizes embedding tables too (`embeddings: true`; absent in older specs)."""
    return bool(getattr(spec, "embeddings", False))


def table_granularity(spec: Any) -> str:
    """per-row or per-group: `embeddings` itself, or for `true` the weights' (per-channel is per-row)."""
    tables = getattr(spec, "embeddings", False)
    if tables in ("per-row", "per-group"):
        return tables
    return "per-row" if spec.granularity == "per-channel" else "per-group"


def _check_widths(model: nn.Module, spec: Any, option: str = "quantize.group_size") -> None:
    """One line when a per-group size does not divide a layer's input width (an embedding's row width), or an
    embedding table to quantize is tied to a linear layer (a language model's head)."""
    tables = {n: m for n, m in model.named_modules() if _is_embedding(m)} if quantize_tables(spec) else {}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    widths = [(n, m.in_features) for n, m in linears.items()] if spec.granularity != "per-channel" else []
    if table_granularity(spec) == "per-group":
        widths += [(n, m.embedding_dim) for n, m in tables.items()]
    for name, width in widths:
        if width % spec.group_size:
            raise TinykdError(f"{option}={spec.group_size} does not divide the {width} inputs of layer {name}; "
                              "give a group size (a power of 2) that divides every layer's input width, or "
                              "granularity: per-channel (embeddings: per-row for a table)")  # fmt: skip
    if quantize_tables(spec) and not tables:
        raise TinykdError("quantize.embeddings: the student has no nn.Embedding table; set embeddings: false")
    shared = {id(m.weight): n for n, m in linears.items()}
    for name, table in tables.items():
        if id(table.weight) in shared:
            raise TinykdError(f"quantize.embeddings: the table {name} is tied to the linear layer "
                              f"{shared[id(table.weight)]} (a language model's head); set embeddings: false")


def describe(spec: Any) -> str:
    """E.g. `int4 weights (per group of 32), int8 activations`."""
    how = "per channel" if spec.granularity == "per-channel" else f"per group of {spec.group_size}"
    acts = "int8 activations (dynamic, per token)" if spec.activations == "int8" else "fp32 activations"
    if quantize_tables(spec):
        tables = "per row" if table_granularity(spec) == "per-row" else f"per group of {spec.group_size}"
        acts += f", embedding tables too ({tables})"
    return f"{spec.weights} weights ({how}), {acts}"


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def prepare_qat(model: nn.Module, spec: Any, example: Any = None) -> nn.Module:
    """The student to train with fake quantization: `model` itself with its linear layers swapped (torchao's module
    QAT), or, for a convolutional student, a new exported graph prepared by torchao's PT2E flow (`example`, a
    batch of inputs, traces it).

    One line, before any training, when torchao cannot cover the model: no linear layer, or a per-group size that
    does not divide a layer's input width; for convolutional students, what PT2E here does not do."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    _base_config(spec)  # torchao is installed
    if has_convolutions(model):
        return prepare_pt2e_qat(model, spec, example)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TinykdError("quantize: the student has no nn.Linear layer for quantization-aware training (GPT-2's "
                          "transformers Conv1D layers are not nn.Linear)")  # fmt: skip
    if getattr(spec, "reduce_range", False):
        raise TinykdError("quantize.reduce_range is for convolutional students (ONNX Runtime's int8 convolutions); "
                          "torchao's linear layers quantize activations per token: set reduce_range: false")
    _check_widths(model, spec)
    if quantize_tables(spec):
        quantize_(model, QATConfig(_base_config(spec, embedding=True), step="prepare"), filter_fn=_is_embedding)
    quantize_(model, QATConfig(_base_config(spec), step="prepare"))
    return model


def convert_qat(model: nn.Module, spec: Any) -> nn.Module:
    """A copy of a fake-quantized model with real low-bit weights (the model itself is left as it is)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    if is_pt2e(model):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        with _convolution_kinds_of(model):
            converted = convert_pt2e(copy.deepcopy(model).cpu())
        _train_eval_freezes_observers(converted)
        return converted.eval()
    converted = copy.deepcopy(model).cpu().eval()
    if quantize_tables(spec):
        quantize_(converted, QATConfig(_base_config(spec, embedding=True), step="convert"), filter_fn=_is_embedding)
    quantize_(converted, QATConfig(_base_config(spec), step="convert"))
    return converted


def post_training_linear(model: nn.Module, spec: Any, option: str = "quantize.group_size") -> nn.Module:
    """Post-training quantization of a copy of `model` in the format QAT converts to (torchao's `quantize_` with
    the same base configurations, no training): the baseline that quantization-aware distillation of a
    transformer is measured against."""
    from torchao.quantization import quantize_

    _base_config(spec)  # torchao is installed
    _check_widths(model, spec, option)
    quantized = copy.deepcopy(model).cpu().eval()
    if quantize_tables(spec):
        quantize_(quantized, _base_config(spec, embedding=True), filter_fn=_is_embedding)
    quantize_(quantized, _base_config(spec))
    return quantized


def state_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(state_dict)`: torchao's low-bit tensors are subclasses that safetensors cannot hold."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


# --- convolutional students: torchao's PT2E flow --------------------------------------------------------------

PT2E_MARK = "_tinykd_pt2e_qat"  # set on the graphs prepared here
FAKE_QUANT_PREFIX = "activation_post_process_"  # the names PT2E gives its fake quantizers in the graph


def is_pt2e(model: nn.Module) -> bool:
    """Whether `model` is a student prepared (or converted) by `prepare_pt2e_qat`."""
    return bool(getattr(model, PT2E_MARK, False))


def _quantizer(spec: Any, training: bool = True) -> Any:
    """torchao's x86 quantizer, QAT configuration: uint8 per-tensor activations and symmetric per-channel weights
    in [-127, 127] ([-63, 63] with `reduce_range`), or [-7, 7] for 4-bit weights (stored in int8 until export
    packs them).

    The fake quantizers are torchao's plain `FakeQuantize` with the default's moving-average observers, not its
    fused kernel: the fused kernel's scales are not those that `convert_pt2e` reads back from the observers (up
    to 7% apart here, and only 72% of the 4-bit student's predictions survived conversion); with the plain one
    the converted student computes exactly what the trained one did (test)."""
    import dataclasses

    from torchao.quantization.pt2e import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    bound = 7 if spec.weights == "int4" else 63 if getattr(spec, "reduce_range", False) else 127
    if not training:  # post-training: the default's calibration observers, the same weight range
        config = get_default_x86_inductor_quantization_config()
        weight = dataclasses.replace(config.weight, quant_min=-bound, quant_max=bound)
        return X86InductorQuantizer().set_global(dataclasses.replace(config, weight=weight))
    config = get_default_x86_inductor_quantization_config(is_qat=True)
    observer = MovingAveragePerChannelMinMaxObserver  # the default's, without the fused kernel
    weight = dataclasses.replace(config.weight, quant_min=-bound, quant_max=bound,
                                 observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=observer, eps=2**-12))
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, eps=2**-12))  # fmt: skip
    config = dataclasses.replace(config, input_activation=act, output_activation=act, weight=weight)
    return X86InductorQuantizer().set_global(config)


def _train_eval_freezes_observers(graph: nn.Module) -> None:
    """`train()`/`eval()` on an exported graph: switch its BatchNorm and dropout ops (torchao's
    `move_exported_model_to_train/eval`), and let the observers learn ranges in training only."""
    import types

    from torchao.quantization.pt2e import (
        disable_observer,
        enable_observer,
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        with _patterns_traced_once():
            (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        self.apply(enable_observer if mode else disable_observer)
        self.training = mode
        return self

    def evaluate(self: nn.Module) -> nn.Module:
        return self.train(False)

    graph.train = types.MethodType(train, graph)  # type: ignore[method-assign]
    graph.eval = types.MethodType(evaluate, graph)  # type: ignore[method-assign]
    setattr(graph, PT2E_MARK, True)


_PATTERNS: dict[Any, Any] = {}


@contextmanager
def _patterns_traced_once() -> Iterator[None]:
    """torchao's train/eval switch of an exported graph traces its dropout and BatchNorm patterns with
    torch.export at every call (about 1.3 s a switch on this CPU, two switches an epoch for validation). A traced
    pattern depends only on the function's code, the values it captured, the example shapes and the device, so
    each is traced once per process and reused (the rewriter copies a pattern's nodes; it never changes it)."""
    from torchao.quantization.pt2e import utils

    original = utils._get_aten_graph_module_for_pattern

    def cached(pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False, **kwargs: Any) -> Any:
        fn = getattr(pattern, "fn", None)
        if fn is None or kwargs or not hasattr(fn, "__code__"):
            return original(pattern, example_inputs, is_cuda, **kwargs)
        shapes = tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in example_inputs)
        key = (fn.__code__, tuple(c.cell_contents for c in fn.__closure__ or ()), shapes, is_cuda)
        if key not in _PATTERNS:
            _PATTERNS[key] = original(pattern, example_inputs, is_cuda)
        return _PATTERNS[key]

    utils._get_aten_graph_module_for_pattern = cached
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def _exported_and_prepared(model: nn.Module, example: torch.Tensor, prepare: Any) -> tuple[nn.Module, torch.Tensor]:
    """`model` exported by torch.export with a dynamic batch, then `prepare`d by torchao (QAT or post-training);
    the example as traced. What export or torchao refuse is one line."""
    example = example.detach().cpu().float()
    if len(example) < 2:  # a batch of 1 would make torch.export fix the batch size
        example = example[:1].repeat(2, *[1] * (example.dim() - 1))
    try:
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        return prepare(exported.module()), example
    except Exception as exc:  # export or torchao refused the model: say so in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TinykdError(f"quantize: torchao's PT2E flow could not prepare the model ({type(exc).__name__}: "
                          f"{first}); use post-training int8 (tinykd quantize) for it") from None  # fmt: skip


def prepare_pt2e_qat(model: nn.Module, spec: Any, example: Any) -> nn.Module:
    """`model` exported (dynamic batch) and prepared for QAT by torchao's PT2E flow, observers sized on `example`.

    The observers see `example` once (BatchNorm in eval mode, so its statistics do not move): per-channel scales
    then have their final shapes, and a checkpoint of the graph loads into a freshly prepared one."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    if quantize_tables(spec):
        raise TinykdError("quantize.embeddings is for the nn.Embedding tables of a transformer student; a "
                          "convolutional student has none: set embeddings: false")  # fmt: skip
    if spec.activations != "int8":
        raise TinykdError("quantize.activations: none is for linear layers; a convolutional student is quantized "
                          "by torchao's PT2E flow with int8 activations: set activations: int8")  # fmt: skip
    if spec.granularity == "per-group":
        raise TinykdError("quantize.granularity: per-group is for linear layers; a convolutional student's weights "
                          "are quantized per output channel: set granularity: per-channel")  # fmt: skip
    if not isinstance(example, torch.Tensor):
        raise TinykdError("quantize: a convolutional student is prepared from a batch of image tensors")
    quantizer = _quantizer(spec)
    def prepare(exported: nn.Module) -> nn.Module:
        with _convolution_kinds_of(exported):
            return prepare_qat_pt2e(exported, quantizer)

    graph, example = _exported_and_prepared(model.cpu().eval(), example, prepare)
    _train_eval_freezes_observers(graph)
    from torchao.quantization.pt2e import move_exported_model_to_eval

    with _patterns_traced_once():  # observers on, BatchNorm statistics frozen: one look at the example
        move_exported_model_to_eval(graph)
    with torch.no_grad():
        graph(example)
    return graph.train()


def post_training_pt2e(model: nn.Module, weights: str, calibration: torch.Tensor, batch: int = 64) -> nn.Module:
    """Post-training quantization of `model` in the same format as QAT (per-channel symmetric `weights`, int8 or
    [-7, 7], uint8 activations) through torchao's PT2E flow: export, prepare, observe `calibration`, convert. The
    baseline that quantization-aware distillation is measured against."""
    from types import SimpleNamespace

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if weights not in WEIGHT_DTYPES:
        raise TinykdError(f"weights must be one of {', '.join(WEIGHT_DTYPES)}, not '{weights}'")
    calibration = torch.as_tensor(calibration).float()
    quantizer = _quantizer(SimpleNamespace(weights=weights), training=False)
    graph, _ = _exported_and_prepared(copy.deepcopy(model).cpu().eval(), calibration[:2],
                                      lambda g: prepare_pt2e(g, quantizer))  # fmt: skip
    with torch.no_grad():
        for start in range(0, len(calibration), batch):
            graph(calibration[start : start + batch])
    with _convolution_kinds_of(graph):
        converted = convert_pt2e(graph)
    _train_eval_freezes_observers(converted)
    return converted.eval()


@contextmanager
def _convolution_kinds_of(graph: nn.Module) -> Iterator[None]:
    """While torchao prepares or converts `graph`: BatchNorm fused into (prepare) or folded into (convert) the
    convolution kinds that `graph` holds, not all four. torchao tries conv1d, conv2d and their transposes alike,
    tracing a dozen patterns per kind with torch.export (0.3-0.9 s each; 132 exports, 40-100 s, in every convert
    of any student here); a kind the graph does not hold has nothing to match. The rewrite itself is torchao's."""
    try:
        from torchao.quantization.pt2e import qat_utils
    except ImportError:
        yield
        return
    held = {str(n.target).split(".")[1] for n in graph.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("aten.")}  # fmt: skip
    originals = {name: getattr(qat_utils, name) for name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")
                 if callable(getattr(qat_utils, name, None))}  # fmt: skip

    def only_held(original: Any) -> Any:
        def helper(m: Any, conv_fn: Any, *args: Any, **kwargs: Any) -> Any:
            return original(m, conv_fn, *args, **kwargs) if getattr(conv_fn, "__name__", "") in held else m

        return helper

    for name, original in originals.items():
        setattr(qat_utils, name, only_held(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(qat_utils, name, original)


def plain_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a PT2E student's state dict without its fake quantizers, for the plain `model`.

    The exported graph's BatchNorm ops keep no `num_batches_tracked` (torchao's train/eval rewrite drops the
    counter; the momentum is fixed), so those counters come from `model` itself."""
    plain = {k: v for k, v in state.items() if not k.startswith(FAKE_QUANT_PREFIX)}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in plain:
            plain[key] = value
    return plain
