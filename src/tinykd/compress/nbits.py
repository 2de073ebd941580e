"""Low-bit linear layers of a torchao-quantized student as ONNX: `MatMulNBits` (4 bits) or standard QDQ (any).

torchao's converted student keeps, for each `nn.Linear`, the int8 or int4 codes (`qdata`, in int8 storage), one
scale per channel or per group of `block_size` inputs, a zero point, and whether the layer quantizes its input
on the fly (int8 per token). The ONNX exporters know nothing of those tensors, so the student is exported with
its weights dequantized (the very values it computed with), and each linear layer's weight is then found in the
graph by value and its MatMul/Gemm replaced by one of:
- `com.microsoft.MatMulNBits` (`export_matmul_nbits`): the codes packed two per byte and the scales, ONNX
  Runtime's fast 4-bit kernel. 4-bit, symmetric, blocks of 16 or more; activations stay fp32 there.
- QDQ (`export_linear_qdq`): the codes (INT8, or INT4 when they fit) behind a standard `DequantizeLinear`, one
  scale per output channel or per block; where torchao quantizes the input per token, the graph computes the same
  scale and zero point per row and applies a blocked `QuantizeLinear`/`DequantizeLinear`. Opset 21, nothing
  vendor-specific: ONNX Runtime and ONNX's reference evaluator both run it.
Either way the file holds the low-bit weights and computes what the converted student did (tests check it).
Layers that do not fit (a weight used elsewhere; for MatMulNBits an asymmetric zero point or a group under 16)
keep their dequantized fp32 weights, and the count says so.

Quantized embedding tables (`quantize.embeddings`) keep their codes and scales (one per row or per block of a
row). In the QDQ file they are standard ONNX: INT4 (or INT8) codes behind a `DequantizeLinear` (opset 21, blocked)
that feeds the `Gather`, which any runtime with opset 21 reads, but which dequantizes the whole table in every
call. Beside MatMulNBits they are ONNX Runtime's `GatherBlockQuantized`, which dequantizes only the rows looked
up (blocks of 16, 32, ...; a block wider than the row gives one scale a row).
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tinykd.compress.export import export_onnx, raise_opset
from tinykd.compress.onnxrt import onnx_meta, onnx_size, read_onnx, write_onnx_meta
from tinykd.errors import TinykdError

MIN_BLOCK = 16  # ONNX Runtime's smallest MatMulNBits block


def _codes(weight: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """(codes [N, K] int8, scales [N, K/b], zero points [N, K/b], b) of a torchao int4 per-group weight, or None."""
    if not all(hasattr(weight, k) for k in ("qdata", "scale", "zero_point", "block_size")):
        return None
    block = int(weight.block_size[-1])
    codes = weight.qdata.detach().cpu().numpy().astype(np.int8)
    scales = weight.scale.detach().cpu().float().numpy().reshape(codes.shape[0], -1)
    zeros = weight.zero_point.detach().cpu().numpy().astype(np.int64).reshape(codes.shape[0], -1)
    if codes.shape[1] % block or scales.shape[1] != codes.shape[1] // block:
        return None
    return codes, scales, zeros, block


def dequantized(converted: nn.Module) -> nn.Module:
    """A plain copy of a torchao-converted model whose linear weights and embedding tables are the dequantized
    low-bit ones."""
    plain = copy.deepcopy(converted)
    for module in plain.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and hasattr(module.weight, "dequantize") \
                and hasattr(module.weight, "qdata"):
            module.weight = nn.Parameter(module.weight.dequantize().detach().float().clone(), requires_grad=False)
    return plain


def _pack(codes: np.ndarray, block: int) -> np.ndarray:
    """int4 codes [N, K] (in [-8, 7], zero point 0) as MatMulNBits' B: uint8 [N, K/block, block/2], each byte two
    unsigned codes (code + 8), the first in the low nibble."""
    unsigned = (codes.astype(np.int16) + 8).astype(np.uint8)
    n, k = unsigned.shape
    pairs = unsigned.reshape(n, k // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).reshape(n, k // block, block // 2)


def export_matmul_nbits(converted: nn.Module, example: Any, path: str | Path,
                        meta: dict[str, Any] | None = None, fmt: str = "onnx int4 QAT (MatMulNBits)") -> dict[str, Any]:
    """Write `converted` (torchao int4 per-group linear layers, and its quantized embedding tables) as one ONNX
    file with MatMulNBits nodes; `fmt` is the format its metadata names."""
    written = _export_linears(converted, example, path, meta, fmt, "nbits")
    return written | {"matmul_nbits": written["replaced"]}


def export_linear_qdq(converted: nn.Module, example: Any, path: str | Path,
                      meta: dict[str, Any] | None = None, fmt: str = "onnx int8 QAT (QDQ)") -> dict[str, Any]:
    """Write `converted` (torchao int8 or int4 linear layers, per channel or per group, with or without int8
    activations, and its quantized embedding tables) as one standard ONNX QDQ file: each weight stored as its
    codes behind a DequantizeLinear, and, where torchao quantizes a layer's input per token on the fly, the same
    per-token QuantizeLinear/DequantizeLinear computed in the graph. Any runtime with opset 21 runs it and
    computes what the converted student did."""
    written = _export_linears(converted, example, path, meta, fmt, "qdq")
    return written | {"qdq_layers": written["replaced"]}


Found = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # codes [N, K], scales, zero points, block (see _codes)
Entry = tuple[str, Found, np.ndarray, bool]  # module name, its codes, its dequantized weight, per-token activations


def _quantized_modules(converted: nn.Module, plain: nn.Module) -> tuple[list[Entry], list[Entry]]:
    """(linear layers, embedding tables) of `converted` that hold torchao codes, with `plain`'s dequantized
    weight of each (to find it in the graph by value)."""
    layers, tables = [], []
    plain_modules = dict(plain.named_modules())
    for module_name, module in converted.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            found = _codes(module.weight)
            if found is not None:
                entry = (module_name, found, plain_modules[module_name].weight.detach().numpy(),
                         getattr(module.weight, "activation_quantization", None) is not None)  # fmt: skip
                (layers if isinstance(module, nn.Linear) else tables).append(entry)
    return layers, tables


def _weight_of(node: Any, arrays: dict[str, np.ndarray], producers: dict[str, Any]) -> tuple[str, bool] | None:
    """(initializer, is [N, K]) that is this MatMul/Gemm's B, through one Transpose if there is one."""
    b = node.input[1]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        if trans_a or alpha != 1.0:
            return None
        return (b, bool(trans_b)) if b in arrays else None
    if b in arrays:
        return b, False
    source = producers.get(b)
    if source is not None and source.op_type == "Transpose" and source.input[0] in arrays:
        return source.input[0], True
    return None


def _fits(found: Found, form: str) -> bool:
    """Whether a layer's codes can take `form`: QDQ takes any; MatMulNBits symmetric blocks of 16, 32, ..."""
    _, _, zeros, block = found
    return form == "qdq" or (block >= MIN_BLOCK and not block & (block - 1) and not zeros.any())


def _export_linears(converted: nn.Module, example: Any, path: str | Path, meta: dict[str, Any] | None, fmt: str,
                    form: str) -> dict[str, Any]:  # fmt: skip
    """Export `converted` with dequantized weights, then put each quantized linear layer back in low bits: as
    `MatMulNBits` (form "nbits": 4-bit, symmetric, blocks of 16 or more) or as QDQ (form "qdq": any of them)."""
    import onnx

    plain = dequantized(converted).eval()
    layers, tables = _quantized_modules(converted, plain)
    if not layers:
        kind = "int4 per-group" if form == "nbits" else "torchao-quantized"
        raise TinykdError(f"the quantized student has no {kind} linear layer to export")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        export_onnx(plain, example, raw, "dynamo", meta=meta)
        proto = read_onnx(raw, load_external_data=True)
    new_nodes, replaced, tables_done = _low_bit_nodes(proto.graph, layers, tables, form)
    _replace_nodes(proto, new_nodes, form, bool(tables_done))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp_path))
    count = {"nbits": "matmul_nbits", "qdq": "qdq_layers"}[form]  # the file's metadata, as the report's row names it
    write_onnx_meta(tmp_path, {**onnx_meta(tmp_path), "format": fmt, count: replaced,
                               "quantized_tables": tables_done})  # fmt: skip
    tmp_path.replace(path)
    return {"path": str(path), "size_bytes": onnx_size(path), "replaced": replaced, "linear_layers": len(layers),
            "quantized_tables": tables_done, "embedding_tables": len(tables),
            "weight_bytes": sum(t.ByteSize() for t in proto.graph.initializer)}  # fmt: skip


def _low_bit_nodes(graph: Any, layers: list[Entry], tables: list[Entry], form: str) -> tuple[list[Any], int, int]:
    """The graph's nodes with each matching Gather of a quantized table and MatMul/Gemm of a quantized layer
    replaced by its low-bit form (new initializers go into `graph`); (nodes, layers replaced, tables replaced)."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    arrays = {name: numpy_helper.to_array(t) for name, t in initializers.items() if t.data_type == TensorProto.FLOAT}
    producers = {out: node for node in graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    replaced, done, tables_done = 0, set(), set()
    new_nodes: list[Any] = []
    token_qdq: dict[str, str] = {}  # a layer input already quantized per token -> its dequantized copy
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in arrays and users.get(node.input[0], 0) == 1:
            value = arrays[node.input[0]]
            table = next((i for i, (_, found, w, _) in enumerate(tables) if i not in tables_done and not found[2].any()
                          and w.shape == value.shape and np.array_equal(w, value)), None)  # fmt: skip
            if table is not None:
                tables_done.add(table)
                new_nodes.extend(_dequantized_table(node, tables[table][1], f"table_{len(tables_done) - 1}", graph,
                                                    fast=form == "nbits"))  # fmt: skip
                continue
        target = _weight_of(node, arrays, producers) if node.op_type in ("MatMul", "Gemm") else None
        match = None
        if target is not None and users.get(target[0], 0) == 1:
            value = arrays[target[0]]
            nk = value if target[1] else value.T
            match = next((i for i, (_, found, weight, _) in enumerate(layers) if i not in done and _fits(found, form)
                          and nk.shape == weight.shape and np.array_equal(nk, weight)), None)  # fmt: skip
        if match is None:
            new_nodes.append(node)
            continue
        done.add(match)
        tag = f"{form}_{replaced}"
        _, found, _, dynamic = layers[match]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        product = f"{tag}.out" if bias else node.output[0]
        if form == "nbits":
            new_nodes.append(_matmul_nbits(node.input[0], found, tag, product, graph))
        else:
            source = node.input[0]
            if dynamic:
                if source not in token_qdq:
                    token_qdq[source] = f"{tag}.input"
                    new_nodes.extend(_per_token_qdq(source, token_qdq[source], found[0].shape[1], graph))
                source = token_qdq[source]
            new_nodes.extend(_dequantized_matmul(source, found, tag, product, graph))
        if bias:
            new_nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{tag}.bias"))
        replaced += 1
    return new_nodes, replaced, len(tables_done)


def _replace_nodes(proto: Any, new_nodes: list[Any], form: str, tables: bool) -> None:
    """Put `new_nodes` in the graph: a Transpose left without users (its weight moved into the new nodes) goes,
    then the initializers nobody reads; the opsets the new nodes need are declared."""
    from onnx import helper

    graph = proto.graph
    read = {name for node in new_nodes for name in node.input} | {o.name for o in graph.output}
    new_nodes = [node for node in new_nodes if node.op_type != "Transpose" or any(o in read for o in node.output)]
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if form == "nbits" and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if tables or form == "qdq":
        raise_opset(proto, 21)


def _matmul_nbits(source: str, found: tuple[np.ndarray, np.ndarray, np.ndarray, int], tag: str, out: str,
                  graph: Any) -> Any:  # fmt: skip
    """One `com.microsoft.MatMulNBits` node: the codes packed two per byte, one scale per block."""
    from onnx import helper, numpy_helper

    codes, scales, _, block = found
    n, k = codes.shape
    graph.initializer.append(numpy_helper.from_array(_pack(codes, block), f"{tag}.B"))
    graph.initializer.append(numpy_helper.from_array(scales.astype(np.float32).reshape(-1), f"{tag}.scales"))
    return helper.make_node("MatMulNBits", [source, f"{tag}.B", f"{tag}.scales"], [out], name=tag,
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block)  # fmt: skip


def _fits_int4(*values: np.ndarray) -> bool:
    return all(v.size == 0 or (v.min() >= -8 and v.max() <= 7) for v in values)


def _low_bit(values: np.ndarray, name: str, four_bit: bool) -> Any:
    """int8 codes as an ONNX INT4 tensor (two per byte), or INT8."""
    from onnx import TensorProto, helper, numpy_helper

    from tinykd.compress.export import _pack_nibbles

    values = np.ascontiguousarray(values).astype(np.int8)
    if four_bit:
        return helper.make_tensor(name, TensorProto.INT4, values.shape, _pack_nibbles(values), True)
    return numpy_helper.from_array(values, name)


def _dequantized_matmul(source: str, found: tuple[np.ndarray, np.ndarray, np.ndarray, int], tag: str, out: str,
                        graph: Any) -> list[Any]:  # fmt: skip
    """DequantizeLinear of the weight's codes, stored [K, N] (one scale per output column, or per block of
    `block` inputs of a column), and the MatMul that reads it."""
    from onnx import helper, numpy_helper

    codes, scales, zeros, block = found
    n, k = codes.shape
    if block == k:  # per channel
        scale, zero, attributes = scales.reshape(n), zeros.reshape(n), {"axis": 1}
    else:
        scale, zero, attributes = scales.T, zeros.T, {"axis": 0, "block_size": block}
    four_bit = _fits_int4(codes, zero)  # a DequantizeLinear's codes and zero points share one type
    data, points = _low_bit(codes.T, f"{tag}.codes", four_bit), _low_bit(zero, f"{tag}.zero_points", four_bit)
    graph.initializer.extend([data, numpy_helper.from_array(np.ascontiguousarray(scale).astype(np.float32),
                                                            f"{tag}.scales"), points])  # fmt: skip
    return [helper.make_node("DequantizeLinear", [data.name, f"{tag}.scales", points.name], [f"{tag}.weight"],
                             name=f"{tag}.dequantize", **attributes),
            helper.make_node("MatMul", [source, f"{tag}.weight"], [out], name=f"{tag}.matmul")]  # fmt: skip


def _per_token_qdq(source: str, out: str, width: int, graph: Any) -> list[Any]:
    """torchao's dynamic int8 activations in ONNX: each row of the last axis gets an asymmetric scale and zero
    point from its own range (widened to include 0), then a blocked QuantizeLinear/DequantizeLinear with one
    block per row. The same arithmetic as torchao's `choose_qparams_affine` (ASYMMETRIC, int8)."""
    from onnx import TensorProto, helper, numpy_helper

    tag = out.rsplit(".", 1)[0] + ".token"
    constants = {"axes": np.array([-1], np.int64), "zero": np.float32(0), "levels": np.float32(255),
                 "eps": np.float32(np.finfo(np.float32).tiny), "qmin": np.float32(-128), "qmax": np.float32(127)}
    names = {k: f"{tag}.{k}" for k in constants}
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), names[k]) for k, v in constants.items())

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
        return helper.make_node(op, inputs, [f"{tag}.{output}"], name=f"{tag}.{output}", **attributes)

    return [
        node("ReduceMin", [source, names["axes"]], "low", keepdims=1),
        node("ReduceMax", [source, names["axes"]], "high", keepdims=1),
        node("Min", [f"{tag}.low", names["zero"]], "min"),
        node("Max", [f"{tag}.high", names["zero"]], "max"),
        node("Sub", [f"{tag}.max", f"{tag}.min"], "range"),
        node("Div", [f"{tag}.range", names["levels"]], "raw_scale"),
        node("Max", [f"{tag}.raw_scale", names["eps"]], "scale"),
        node("Div", [f"{tag}.min", f"{tag}.scale"], "min_steps"),
        node("Round", [f"{tag}.min_steps"], "rounded"),
        node("Sub", [names["qmin"], f"{tag}.rounded"], "raw_zero"),
        node("Clip", [f"{tag}.raw_zero", names["qmin"], names["qmax"]], "clipped_zero"),
        node("Cast", [f"{tag}.clipped_zero"], "zero_point", to=TensorProto.INT8),
        node("QuantizeLinear", [source, f"{tag}.scale", f"{tag}.zero_point"], "codes", axis=-1, block_size=width),
        helper.make_node("DequantizeLinear", [f"{tag}.codes", f"{tag}.scale", f"{tag}.zero_point"], [out],
                         name=out, axis=-1, block_size=width),
    ]


def _gather_block(width: int, block: int) -> int | None:
    """GatherBlockQuantized's block size for a table `width` wide quantized in blocks of `block` (the width: one
    scale a row), or None when it has none: its blocks are powers of 2 from 16, and one block wider than the row
    covers the whole row."""
    if block == width:
        return max(MIN_BLOCK, 1 << (width - 1).bit_length())
    return block if block >= MIN_BLOCK and not block & (block - 1) else None


def _dequantized_table(gather: Any, found: tuple[np.ndarray, np.ndarray, np.ndarray, int], tag: str,
                       graph: Any, fast: bool = False) -> list[Any]:  # fmt: skip
    """The nodes that replace `gather` of an fp32 table, symmetric codes only (zero point 0, as torchao writes them).

    Standard ONNX: the table's codes (INT4 when they fit [-8, 7], else INT8) and scales as initializers, a
    DequantizeLinear (one scale per row, or per block of `block` values of a row) and the Gather itself; every
    call dequantizes the whole table. `fast`: ONNX Runtime's `GatherBlockQuantized`, which dequantizes only the
    rows looked up, for INT4 codes where its block sizes allow."""
    from onnx import helper, numpy_helper

    codes, scales, _, block = found
    rows, width = codes.shape
    axis = next((helper.get_attribute_value(a) for a in gather.attribute if a.name == "axis"), 0)
    four_bit = _fits_int4(codes)
    gather_block = _gather_block(width, block) if fast and four_bit and axis == 0 else None
    data = _low_bit(codes, f"{tag}.codes", four_bit)
    if gather_block is not None:
        graph.initializer.extend([data, numpy_helper.from_array(scales.astype(np.float32), f"{tag}.scales")])
        return [helper.make_node("GatherBlockQuantized", [data.name, gather.input[1], f"{tag}.scales"],
                                 list(gather.output), name=gather.name, domain="com.microsoft", gather_axis=0,
                                 quantize_axis=1, block_size=gather_block, bits=4)]  # fmt: skip
    if block == width:  # one scale per row
        scale, attributes = scales.reshape(rows), {"axis": 0}
    else:
        scale, attributes = scales, {"axis": 1, "block_size": block}
    graph.initializer.extend([data, numpy_helper.from_array(scale.astype(np.float32), f"{tag}.scales")])
    table = f"{tag}.table"
    dequantize = helper.make_node("DequantizeLinear", [data.name, f"{tag}.scales"], [table], name=f"{tag}.dequantize",
                                  **attributes)  # fmt: skip
    lookup = helper.make_node("Gather", [table, *gather.input[1:]], list(gather.output), name=gather.name,
                              **{a.name: helper.get_attribute_value(a) for a in gather.attribute})  # fmt: skip
    return [dequantize, lookup]
