"""int8 through torchao's PT2E flow, as both phone runtimes take it: the model exported at the file's shapes,
prepared with the runtime's own quantizer, calibrated (static) and converted; the runtime then lowers the
quantize/dequantize pairs to its int8 kernels.
"""

from __future__ import annotations

from typing import Any

import torch


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
