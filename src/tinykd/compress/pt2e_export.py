"""int8 through torchao's PT2E flow, as both phone runtimes take it: the model exported at the file's shapes,
prepared with the runtime's own quantizer, calibrated (static) and converted; the runtime then lowers the
quantize/dequantize pairs to its int8 kernels. A quantization-aware run instead brings its own int8: the graph it
trained, converted with the scales it learned (`trained_int8`).
"""

from __future__ import annotations

from typing import Any

import torch

from tinykd.errors import TinykdError


def scalar_overloads(graph: torch.fx.GraphModule) -> int:
    """`aten.add.Tensor(int tensor, 0)` -> `aten.add.Scalar`: PT2E's prepare turns a Python number argument into a
    float tensor constant, which breaks integer index arithmetic (Hugging Face's attention masks); the Scalar
    overload keeps the number. Returns how many nodes changed."""
    changed = 0
    for node in graph.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        number = len(node.args) == 2 and isinstance(node.args[1], int | float) and not isinstance(node.args[1], bool)
        scalar = getattr(target.overloadpacket, "Scalar", None)
        if target._overloadname == "Tensor" and number and scalar is not None:
            node.target = scalar
            changed += 1
    if changed:
        graph.recompile()
    return changed


def quantized_module(module: torch.nn.Module, example: tuple[torch.Tensor, ...], quant: str,
                     calibration: list[tuple[torch.Tensor, ...]], quantizer: Any,
                     fold: bool = True) -> torch.nn.Module:  # fmt: skip
    """`module` through PT2E with `quantizer`: exported, prepared, calibrated (static; dynamic needs one call) and
    converted (`fold`: weights stored quantized; LiteRT's converter wants them unfolded)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, example).module()
    scalar_overloads(graph)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in calibration if quant == "static" else [example]:
            prepared(*inputs)
    return convert_pt2e(prepared, fold_quantize=fold)


# --- a quantization-aware run's own int8: the graph it trained, converted, no second calibration ---------------


def trained_int8(loaded: Any, recipe: Any, example: torch.Tensor) -> torch.fx.GraphModule:
    """The convolutional QAT student of a run (`models/qat.py`, torchao's PT2E flow) converted with the scales it
    learned: the graph prepared again from the recipe's `quantize`, the checkpoint's weights and fake quantizers
    loaded into it, and `convert_pt2e`. Then rewritten for XNNPACK (`signed_activations`,
    `float_linear_weights`), each rewrite exact."""
    from tinykd.models.checkpoint import load_state
    from tinykd.models.qat import convert_qat, prepare_pt2e_qat

    spec = recipe.quantize
    graph = prepare_pt2e_qat(loaded.model, spec, example)
    try:
        graph.load_state_dict(load_state(loaded.path), strict=True)
    except RuntimeError as exc:
        raise TinykdError(f"{loaded.path}: its quantizers do not fit the recipe's quantize section "
                          f"({str(exc).splitlines()[0]})") from None  # fmt: skip
    converted = convert_qat(graph.eval(), spec)
    signed_activations(converted)
    float_linear_weights(converted)
    return converted


def signed_activations(graph: torch.fx.GraphModule) -> int:
    """uint8 activations (torchao's x86 quantizer, which the QAT trains with) -> int8, which XNNPACK takes: the
    zero point, bounds and codes shift by 128 and every dequantized value stays the same. Returns how many
    quantize/dequantize nodes changed."""
    ops = torch.ops.quantized_decomposed
    targets = (ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default)
    changed = 0
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in targets or node.args[-1] != torch.uint8:
            continue
        x, scale, zero, low, high, _ = node.args
        if not isinstance(zero, int):
            raise TinykdError("a quantized activation's zero point is not a constant; cannot make it int8")
        node.args = (x, scale, zero - 128, low - 128, high - 128, torch.int8)
        changed += 1
    graph.recompile()
    return changed


def float_linear_weights(graph: torch.fx.GraphModule) -> int:
    """A linear layer whose output the QAT did not quantize (the x86 quantizer's classifier head) gets its int8
    weights as their dequantized fp32 values, so XNNPACK runs it in fp32 on the same numbers inside the delegate.
    (Left as int8 codes, ExecuTorch 1.5's XNNPACK partition split there and returned wrong logits, which the
    verification caught.) The int8 codes of the convolutions are untouched. Returns how many layers changed."""
    ops = torch.ops.quantized_decomposed
    changed = 0
    for node in list(graph.graph.nodes):
        if node.target != ops.dequantize_per_channel.default or not node.users or \
                any(user.target != torch.ops.aten.linear.default for user in node.users):  # fmt: skip
            continue
        args = [_constant(graph, a) for a in node.args]
        if any(a is None for a in args[:3]):
            continue
        with torch.no_grad():
            weight = ops.dequantize_per_channel.default(*args)
        name = f"{node.name}_fp32"
        graph.register_buffer(name, weight)
        with graph.graph.inserting_before(node):
            node.replace_all_uses_with(graph.graph.get_attr(name))
        graph.graph.erase_node(node)
        changed += 1
    for node in list(graph.graph.nodes):  # the codes and scales that only the replaced layers read
        if node.op == "get_attr" and not node.users:
            graph.graph.erase_node(node)
            if "." not in node.target:
                delattr(graph, node.target)
    graph.recompile()
    return changed


def _constant(graph: torch.fx.GraphModule, arg: Any) -> Any:
    """A node's argument as a value: a get_attr's tensor, a plain constant as it is, None for a computed one."""
    if isinstance(arg, torch.fx.Node):
        return getattr(graph, arg.target) if arg.op == "get_attr" else None
    return arg
