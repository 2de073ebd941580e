"""4-bit linear layers of a quantization-aware student as ONNX Runtime's block-quantized `MatMulNBits`.

torchao's converted student keeps, for each `nn.Linear`, the int4 codes (`qdata`, in int8 storage), one scale per
group of `block_size` inputs and a zero point. The ONNX exporters know nothing of those tensors, so the student is
exported with its weights dequantized (the very values it computed with), and each linear layer's weight is then
found in the graph by value and its MatMul/Gemm replaced by `com.microsoft.MatMulNBits` holding the codes, packed
two per byte, and the scales: the file is the size of a 4-bit model, and ONNX Runtime computes what the converted
student did (checked on test inputs). Layers that do not fit (an asymmetric zero point, a group size under 16,
a weight used elsewhere) keep their dequantized fp32 weights, and the count says so.

Quantized embedding tables (`quantize.embeddings`) become standard ONNX: the table stored as INT4 (or INT8) codes
with their scales, one per row or per block of a row, behind a `DequantizeLinear` (opset 21, blocked) that feeds
the `Gather`: the file holds 4-bit tables, and any runtime with opset 21 reads them.
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
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    plain = dequantized(converted).eval()
    layers, tables = [], []
    plain_modules = dict(plain.named_modules())
    for module_name, module in converted.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            found = _codes(module.weight)
            if found is not None:
                entry = (module_name, found, plain_modules[module_name].weight.detach().numpy())
                (layers if isinstance(module, nn.Linear) else tables).append(entry)
    if not layers:
        raise TinykdError("the quantized student has no int4 per-group linear layer for MatMulNBits")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        export_onnx(plain, example, raw, "dynamo", meta=meta)
        proto = read_onnx(raw, load_external_data=True)
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    arrays = {name: numpy_helper.to_array(t) for name, t in initializers.items() if t.data_type == TensorProto.FLOAT}
    producers = {out: node for node in graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1

    def weight_of(node: Any) -> tuple[str, bool] | None:
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

    replaced, done, tables_done = 0, set(), set()
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in arrays and users.get(node.input[0], 0) == 1:
            value = arrays[node.input[0]]
            table = next((i for i, (_, found, w) in enumerate(tables) if i not in tables_done and not found[2].any()
                          and w.shape == value.shape and np.array_equal(w, value)), None)  # fmt: skip
            if table is not None:
                tables_done.add(table)
                new_nodes.extend(_dequantized_table(node, tables[table][1], f"table_{len(tables_done) - 1}", graph))
                continue
        target = weight_of(node) if node.op_type in ("MatMul", "Gemm") else None
        match = None
        if target is not None and users.get(target[0], 0) == 1:
            value = arrays[target[0]]
            for i, (name, (codes, scales, zeros, block), weight) in enumerate(layers):
                if i in done or block < MIN_BLOCK or block & (block - 1) or zeros.any():
                    continue
                nk = value if target[1] else value.T
                if nk.shape == weight.shape and np.array_equal(nk, weight):
                    match = i, name, codes, scales, block
                    break
        if match is None:
            new_nodes.append(node)
            continue
        i, name, codes, scales, block = match
        done.add(i)
        n, k = codes.shape
        tag = f"nbits_{replaced}"
        b_name, s_name = f"{tag}.B", f"{tag}.scales"
        graph.initializer.append(numpy_helper.from_array(_pack(codes, block), b_name))
        graph.initializer.append(numpy_helper.from_array(scales.astype(np.float32).reshape(-1), s_name))
        out = node.output[0]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        product = f"{tag}.out" if bias else out
        new_nodes.append(helper.make_node("MatMulNBits", [node.input[0], b_name, s_name], [product], name=tag,
                                          domain="com.microsoft", K=k, N=n, bits=4, block_size=block))  # fmt: skip
        if bias:
            new_nodes.append(helper.make_node("Add", [product, bias], [out], name=f"{tag}.bias"))
        replaced += 1
    # a Transpose left without users (its weight moved into MatMulNBits) goes, then the initializers nobody reads
    read = {name for node in new_nodes for name in node.input} | {o.name for o in graph.output}
    new_nodes = [node for node in new_nodes if node.op_type != "Transpose" or any(o in read for o in node.output)]
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if tables_done:
        raise_opset(proto, 21)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp_path))
    write_onnx_meta(tmp_path, {**onnx_meta(tmp_path), "format": fmt, "matmul_nbits": replaced,
                               "quantized_tables": len(tables_done)})  # fmt: skip
    tmp_path.replace(path)
    return {"path": str(path), "size_bytes": onnx_size(path), "matmul_nbits": replaced, "linear_layers": len(layers),
            "quantized_tables": len(tables_done), "embedding_tables": len(tables),
            "weight_bytes": sum(t.ByteSize() for t in proto.graph.initializer)}  # fmt: skip


def _dequantized_table(gather: Any, found: tuple[np.ndarray, np.ndarray, np.ndarray, int], tag: str,
                       graph: Any) -> list[Any]:  # fmt: skip
    """The nodes that replace `gather` of an fp32 table: the table's codes (INT4 when they fit [-8, 7], else INT8)
    and scales as initializers, a DequantizeLinear (one scale per row, or per block of `block` values of a row),
    and the Gather itself. Symmetric codes only (the zero point is 0), as torchao writes them."""
    from onnx import TensorProto, helper, numpy_helper

    from tinykd.compress.export import _pack_nibbles

    codes, scales, _, block = found
    rows, width = codes.shape
    if codes.min() >= -8 and codes.max() <= 7:
        data = helper.make_tensor(f"{tag}.codes", TensorProto.INT4, codes.shape, _pack_nibbles(codes), True)
    else:
        data = numpy_helper.from_array(codes.astype(np.int8), f"{tag}.codes")
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
