"""Quantization-aware distillation (recipe section `quantize`) on digits: torchao's QAT of linear layers, and its
PT2E flow for convolutional students, converted to ONNX QDQ (int4 weights packed two per byte).

The fake-quantized student and its converted low-bit copy compute the same; a killed QAT run resumes to the same
student bit for bit; what torchao cannot do is one line naming what it can.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from test_resume import assert_same_run, tinykd_cli
from tinykd import create_model
from tinykd.errors import TinykdError
from tinykd.models.checkpoint import save_model
from tinykd.models.qat import convert_qat, is_pt2e, prepare_qat, state_bytes
from tinykd.recipes import load_recipe
from tinykd.recipes.schema import QuantizeSpec
from tinykd.run import run

pytest.importorskip("torchao")


def _recipe(tmp_path: Path, **quantize: Any) -> dict[str, Any]:
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        torch.manual_seed(0)
        save_model(create_model("cnn_small", num_classes=10, in_channels=1), teacher, {"model": "cnn_small"})
    return {
        "name": "qat", "seed": 1,
        "data": {"name": "digits", "batch_size": 32, "val_size": 0.15},
        "teacher": {"name": "cnn_small", "checkpoint": str(teacher)},
        "student": {"name": "mlp", "kwargs": {"image_size": 8, "hidden": [64, 32]}},
        "loss_terms": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 4.0}},
        "quantize": quantize or {"weights": "int4", "activations": "int8", "group_size": 32},
        "train": {"epochs": 2, "max_steps_per_epoch": 7, "checkpoint_every": 3, "keep_checkpoints": 2,
                  "optimizer": {"lr": 0.05}},
        "runtime": {"threads": 1}, "measure": {"enabled": False},
    }  # fmt: skip


@pytest.mark.parametrize("spec", [
    {"weights": "int4", "activations": "int8", "granularity": "per-group", "group_size": 32},
    {"weights": "int8", "activations": "int8", "granularity": "per-channel"},
    {"weights": "int4", "activations": "none", "granularity": "per-group", "group_size": 16},
])  # fmt: skip
def test_the_converted_student_computes_what_the_fake_quantized_one_did(spec: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(64, 32))
    reference = [p.detach().clone() for p in model.parameters()]
    assert prepare_qat(model, QuantizeSpec(**spec)) is model  # swapped in place
    assert [type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__] == ["FakeQuantizedLinear"] * 3
    x = torch.randn(16, 1, 8, 8)
    fake = model(x)
    assert not torch.equal(fake, torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x.flatten(1), reference[0],
        reference[1])), reference[2], reference[3])), reference[4], reference[5]))  # fmt: skip  # it does round
    converted = convert_qat(model, QuantizeSpec(**spec))
    torch.testing.assert_close(converted(x), fake, rtol=0, atol=1e-6)
    assert state_bytes(converted) < state_bytes(create_model("mlp", num_classes=10, in_channels=1, image_size=8,
                                                             hidden=(64, 32)))  # fmt: skip


def test_a_quantization_aware_distillation_reports_the_converted_student(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    recipe["measure"] = {"enabled": True, "latency_repeats": 3, "throughput_batch": 4}
    result = run(load_recipe(recipe), tmp_path / "run", mode="distill")
    rows = {r["role"]: r for r in result.metrics["models"]}
    qat = rows["student (int4 QAT)"]
    # the converted torchao model computes what the fake-quantized student did
    assert qat["test_accuracy_pytorch"] == pytest.approx(rows["student"]["test_accuracy"])
    # the file: every linear layer as ONNX Runtime's MatMulNBits (4-bit codes and per-group scales; activations
    # in fp32 there, int8 in torchao: a prediction may differ)
    assert qat["format"] == "onnx int4 QAT (MatMulNBits)" and qat["matmul_nbits"] == "3 of 3 linear layers"
    assert abs(qat["test_accuracy"] - qat["test_accuracy_pytorch"]) <= 0.02
    assert qat["latency_ms_p50"] > 0 and qat["size_bytes"] == (tmp_path / "run" / "model.qat.onnx").stat().st_size
    assert qat["weight_bytes"] * 4 < 4 * rows["student"]["params"]  # codes at half a byte, scales per 32


def test_int4_linear_layers_become_matmul_nbits_that_compute_what_torchao_did(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime

    from tinykd.compress.nbits import export_matmul_nbits

    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(64, 32))
    spec = QuantizeSpec(weights="int4", activations="none", group_size=32)
    converted = convert_qat(prepare_qat(model, spec), spec)
    x = torch.randn(64, 1, 8, 8)
    info = export_matmul_nbits(converted, x[:2], tmp_path / "m.onnx", {"model": "mlp"})
    assert info["matmul_nbits"] == info["linear_layers"] == 3
    sess = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = converted(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # weight-only: the same arithmetic


def test_int8_linear_students_ship_as_onnx_qdq_that_two_runtimes_run(tmp_path: Path) -> None:
    """int8 weights and torchao's per-token int8 activations: `model.qat.onnx` is standard QDQ (opset 21), ONNX
    Runtime predicts what the converted torchao student predicts, and ONNX's reference evaluator computes the
    same logits as ONNX Runtime."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator

    from tinykd.compress.onnxrt import session

    recipe = _recipe(tmp_path, weights="int8", activations="int8", granularity="per-channel")
    recipe["measure"] = {"enabled": True, "latency_repeats": 3, "throughput_batch": 4}
    result = run(load_recipe(recipe), tmp_path / "run", mode="distill")
    rows = {r["role"]: r for r in result.metrics["models"]}
    qat = rows["student (int8 QAT)"]
    assert qat["format"] == "onnx int8 QAT (QDQ)" and qat["qdq_layers"] == "3 of 3 linear layers"
    assert qat["test_accuracy"] == pytest.approx(qat["test_accuracy_pytorch"], abs=1 / 270)  # one image at most
    assert qat["test_accuracy_pytorch"] == pytest.approx(rows["student"]["test_accuracy"])
    assert qat["latency_ms_p50"] > 0 and qat["weight_bytes"] < 2 * rows["student"]["params"]  # a byte a weight
    path = tmp_path / "run" / "model.qat.onnx"
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6  # inputs per token, weights
    assert sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in proto.graph.initializer) == 3
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    runtime = session(path, 1)
    feed = {runtime.get_inputs()[0].name: x}
    np.testing.assert_allclose(ReferenceEvaluator(proto).run(None, feed)[0], runtime.run(None, feed)[0],
                               rtol=0, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("spec", [
    {"weights": "int8", "activations": "int8", "granularity": "per-channel"},
    {"weights": "int4", "activations": "int8", "granularity": "per-group", "group_size": 32},
    {"weights": "int4", "activations": "none", "granularity": "per-group", "group_size": 8},
    {"weights": "int8", "activations": "int8", "granularity": "per-channel", "embeddings": "per-row"},
])  # fmt: skip
def test_qdq_export_computes_what_the_converted_student_did(tmp_path: Path, spec: dict[str, Any]) -> None:
    """Per-token int8 activations, int8 or int4 weights, per channel or in groups under MatMulNBits' 16, and
    int8 tables: the QDQ file's logits equal torchao's within float rounding, in ONNX Runtime with its graph
    optimizations off (the QDQ standard) and in the reference evaluator."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx.reference import ReferenceEvaluator

    from tinykd.compress.nbits import export_linear_qdq

    quantize = QuantizeSpec(**spec)
    torch.manual_seed(0)
    if quantize.embeddings:
        model = _tiny_bert()
        batch: Any = {"input_ids": torch.randint(0, 96, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long)}
        batch["attention_mask"][:3, 9:] = 0
    else:
        model = create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(64, 32))
        batch = torch.randn(32, 1, 8, 8)
    converted = convert_qat(prepare_qat(model, quantize), quantize)
    info = export_linear_qdq(converted, batch, tmp_path / "m.onnx", {"model": "student"})
    assert info["qdq_layers"] == info["linear_layers"] and info["quantized_tables"] == info["embedding_tables"]
    with torch.no_grad():
        want = converted(**batch).logits if isinstance(batch, dict) else converted(batch)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    runtime = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), options)
    feed = {i.name: (batch[i.name] if isinstance(batch, dict) else batch).numpy() for i in runtime.get_inputs()}
    np.testing.assert_allclose(runtime.run(None, feed)[0], want.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ReferenceEvaluator(onnx.load(str(tmp_path / "m.onnx"))).run(None, feed)[0],
                               want.numpy(), rtol=0, atol=1e-5)  # fmt: skip
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)  # standard ONNX, shapes and types inferred throughout
    assert {o.domain for o in proto.opset_import} == {""}  # nothing vendor-specific
    low_bit = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.INT8: "int8"}
    kinds = {low_bit[t.data_type] for t in proto.graph.initializer if t.data_type in low_bit
             and t.name.endswith(".codes")}  # fmt: skip
    assert kinds == {spec["weights"]}


def test_a_killed_quantization_aware_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "qat.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path)))
    reference = tmp_path / "reference"
    assert tinykd_cli("distill", str(path), "--out", str(reference), cwd=tmp_path).returncode == 0
    out = tmp_path / "run"
    killed = tinykd_cli("distill", str(path), "--out", str(out), kill="step:8", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = tinykd_cli("distill", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


def test_what_torchao_cannot_do_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TinykdError) as exc:
        load_recipe(_recipe(tmp_path, weights="int4", activations="int4"))
    assert "activations" in str(exc.value) and "int8" in str(exc.value) and "\n" not in str(exc.value)
    cnn = create_model("cnn_tiny", num_classes=10, in_channels=1)
    with pytest.raises(TinykdError, match="per-channel"):
        prepare_qat(cnn, QuantizeSpec(granularity="per-group"), torch.randn(4, 1, 8, 8))
    with pytest.raises(TinykdError, match="activations: int8"):
        prepare_qat(cnn, QuantizeSpec(activations="none"), torch.randn(4, 1, 8, 8))
    with pytest.raises(TinykdError, match="does not divide"):
        prepare_qat(create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(48,)),
                    QuantizeSpec(group_size=32))  # fmt: skip
    with pytest.raises(TinykdError, match="power of 2"):
        load_recipe(_recipe(tmp_path, weights="int4", group_size=24))
    with pytest.raises(TinykdError, match="int4 weights need no narrowing"):
        load_recipe(_recipe(tmp_path, weights="int4", reduce_range=True))
    with pytest.raises(TinykdError, match="reduce_range is for convolutional students"):
        prepare_qat(create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(64,)),
                    QuantizeSpec(weights="int8", reduce_range=True))  # fmt: skip


# --- convolutional students: torchao's PT2E flow ----------------------------------------------------------------


def _cnn_recipe(tmp_path: Path, weights: str = "int4", **changes: Any) -> dict[str, Any]:
    recipe = _recipe(tmp_path, weights=weights)
    recipe["student"] = {"name": "cnn_tiny"}
    recipe["quantize"] = {"weights": weights}
    recipe["measure"] = {"enabled": True, "latency_repeats": 5, "throughput_batch": 8}
    return {**recipe, **changes}


@pytest.mark.parametrize("weights", ["int8", "int4", "int8-reduced"])
def test_a_convolutional_student_is_prepared_by_pt2e_and_converts_to_what_it_trained(weights: str) -> None:
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=10, in_channels=1)
    spec = QuantizeSpec(weights=weights.split("-")[0], reduce_range=weights.endswith("reduced"))
    graph = prepare_qat(model, spec, torch.randn(4, 1, 8, 8))
    assert is_pt2e(graph) and graph.training
    optimizer = torch.optim.SGD(graph.parameters(), lr=0.05)
    for _ in range(5):  # the observers and BatchNorm statistics move in training
        loss = graph(torch.randn(16, 1, 8, 8)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    graph.eval()
    scales = {k: v.clone() for k, v in graph.state_dict().items() if k.endswith(".scale")}
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        fake = graph(x)
        assert all(torch.equal(v, graph.state_dict()[k]) for k, v in scales.items())  # eval froze the observers
        conversion = convert_qat(graph, spec)
        converted = conversion(x)
    # the converted graph folds BatchNorm into the weights before rounding them, as the fake quantizers did; an
    # activation that lies on a rounding boundary can round the other way (x / scale against x * (1 / scale)):
    # then one sample's logits move by about one activation step, never more than one sample in 64 here
    apart = (converted - fake).abs().amax(1)
    assert int((apart > 1e-6).sum()) <= 1 and float(apart.max()) < 1e-3, apart.max()
    bound = {"int4": 7, "int8": 127, "int8-reduced": 63}[weights]
    codes = [t for k, t in conversion.state_dict().items() if t.dtype == torch.int8]
    assert codes and max(int(t.abs().max()) for t in codes) == bound  # symmetric: [-7, 7], [-127, 127], [-63, 63]


def test_a_convolutional_qat_run_ships_an_onnx_qdq_file_with_packed_int4_weights(tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    result = run(load_recipe(_cnn_recipe(tmp_path)), tmp_path / "run", mode="distill")
    rows = {r["role"]: r for r in result.metrics["models"]}
    qat, fp32 = rows["student (int4 QAT)"], rows["student"]
    path = tmp_path / "run" / "model.qat.onnx"
    proto = onnx.load(str(path))
    int4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT4 and len(t.dims) > 1]
    assert len(int4) == 4  # the weights of cnn_tiny's three convolutions and its classifier (and their zero points)
    assert qat["size_bytes"] == path.stat().st_size and qat["latency_ms_p50"] > 0
    # packed 4-bit codes with their scales and biases: well under a quarter of the fp32 weights; the graph's
    # nodes are a fixed cost that dominates only for a model this tiny (6k parameters)
    assert qat["weight_bytes"] * 4 < 4 * fp32["params"] and qat["size_bytes"] * 2 < fp32["size_bytes"]
    assert abs(qat["test_accuracy"] - qat["test_accuracy_pytorch"]) <= 0.03  # ONNX Runtime runs what PyTorch did
    # two runtimes read the file: ONNX Runtime (integer kernels) and ONNX's own reference evaluator (numpy, op by
    # op as the standard defines them) predict the same digits
    import numpy as np
    from onnx.reference import ReferenceEvaluator

    from tinykd.compress.source import dataset_arrays

    images, _ = dataset_arrays(load_recipe(_cnn_recipe(tmp_path)), "test", 64)
    session = onnxruntime.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    by_ort = session.run(None, {name: images})[0].argmax(1)
    by_reference = ReferenceEvaluator(proto).run(None, {name: images})[0].argmax(1)
    assert np.mean(by_ort == by_reference) >= 0.95
    # the run's checkpoints hold the fake quantizers too, and a plain model (export, quantize) takes the weights
    from tinykd.models.checkpoint import load_weights

    plain = create_model("cnn_tiny", num_classes=10, in_channels=1)
    load_weights(plain, tmp_path / "run", "cnn_tiny")
    assert fp32["params"] == qat["params"] == sum(p.numel() for p in plain.parameters())

    # the post-training baseline in the same format, and compare marks both kinds
    ptq = tinykd_cli("quantize", str(tmp_path / "run"), "--mode", "int4", "--calibration", "64", cwd=tmp_path)
    assert ptq.returncode == 0, ptq.stderr
    assert "int4 weights (torchao PT2E, ONNX QDQ)" in ptq.stdout
    ptq_path = tmp_path / "run" / "model.int4.onnx"
    assert sum(t.data_type == onnx.TensorProto.INT4 and len(t.dims) > 1
               for t in onnx.load(str(ptq_path)).graph.initializer) == 4  # fmt: skip
    from tinykd.compress.compare import compare_models, kind_of

    rows, report = compare_models([str(tmp_path / "run"), str(path), str(ptq_path)], out=tmp_path / "cmp",
                                  repeats=3, batch=4)  # fmt: skip
    assert [kind_of(r) for r in rows] == ["fp32", "QAT", "PTQ"]
    assert rows[1]["test_accuracy"] == pytest.approx(qat["test_accuracy"])  # the same file, the same test set
    assert all(r["test_accuracy"] is not None for r in rows) and "plot" in report["files"]


def test_a_killed_convolutional_qat_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "qat.yaml"
    recipe = _cnn_recipe(tmp_path, weights="int8")
    recipe["measure"] = {"enabled": False}
    path.write_text(yaml.safe_dump(recipe))
    reference = tmp_path / "reference"
    assert tinykd_cli("distill", str(path), "--out", str(reference), cwd=tmp_path).returncode == 0
    out = tmp_path / "run"
    killed = tinykd_cli("distill", str(path), "--out", str(out), kill="step:8", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = tinykd_cli("distill", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)  # weights, observers' ranges and scales included


def test_feature_terms_on_a_convolutional_qat_student_are_one_line(tmp_path: Path) -> None:
    recipe = _cnn_recipe(tmp_path)
    recipe["loss_terms"] = {"ce": {}, "fitnet": {"weight": 1.0, "student": "stage3", "teacher": "stage3"}}
    with pytest.raises(TinykdError) as exc:
        run(load_recipe(recipe), tmp_path / "run", mode="distill")
    assert "fitnet" in str(exc.value) and "logit terms" in str(exc.value) and "\n" not in str(exc.value)


def _tiny_bert() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)  # fmt: skip
    return transformers.BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("tables", [True, "per-row"])
def test_embedding_tables_train_fake_quantized_and_ship_as_int4_beside_matmul_nbits(tmp_path: Path,
                                                                                  tables: Any) -> None:  # fmt: skip
    """`embeddings: true` (per group, as the weights) or `per-row`: the tables (most of a small text model) are
    4-bit too; torchao's converted model computes what the fake-quantized one did, and ONNX Runtime computes what
    the converted one does."""
    import numpy as np
    import onnx
    import onnxruntime

    from tinykd.compress.nbits import export_matmul_nbits

    model = _tiny_bert()
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    spec = QuantizeSpec(weights="int4", activations="none", group_size=16, embeddings=tables)
    prepare_qat(model, spec)
    assert type(model.bert.embeddings.word_embeddings).__name__ == "FakeQuantizedEmbedding"
    batch = {"input_ids": torch.randint(0, 96, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long)}
    batch["attention_mask"][:3, 9:] = 0  # padding
    with torch.no_grad():
        fake = model(**batch).logits
        converted = convert_qat(model, spec)
        torch.testing.assert_close(converted(**batch).logits, fake, rtol=0, atol=1e-6)
    info = export_matmul_nbits(converted, batch, tmp_path / "m.onnx", {"model": "hf:bert"})
    assert info["matmul_nbits"] == info["linear_layers"] == 14
    assert info["quantized_tables"] == info["embedding_tables"] == 3  # words, positions, token types
    assert info["weight_bytes"] * 4 < fp32_bytes  # half a byte per weight, a 4-byte scale per 16
    proto = onnx.load(str(tmp_path / "m.onnx"))
    int4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    scales = {t.name: tuple(t.dims) for t in proto.graph.initializer if t.name == "table_0.scales"}
    assert scales == {"table_0.scales": (96, 1) if tables == "per-row" else (96, 2)}  # one per row, or per 16
    assert len(int4) == 3 and not any(t.data_type == onnx.TensorProto.FLOAT and tuple(t.dims) == (96, 32)
                                      for t in proto.graph.initializer)  # fmt: skip  # no fp32 table is left
    # ONNX Runtime's lookup dequantizes the rows it reads, not the whole table in every call
    assert [n.op_type for n in proto.graph.node].count("GatherBlockQuantized") == 3
    sess = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    got = sess.run(None, {i.name: batch[i.name].numpy() for i in sess.get_inputs()})[0]
    np.testing.assert_allclose(got, fake.numpy(), rtol=0, atol=1e-5)


def test_embedding_options_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(TinykdError, match="convolutional student has none"):
        prepare_qat(create_model("cnn_small", num_classes=10, in_channels=1), QuantizeSpec(embeddings=True),
                    torch.randn(4, 1, 8, 8))  # fmt: skip
    with pytest.raises(TinykdError, match="no nn.Embedding table"):
        prepare_qat(create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(64, 32)),
                    QuantizeSpec(embeddings=True, group_size=16))  # fmt: skip
    narrow_table = torch.nn.ModuleDict({"table": torch.nn.Embedding(10, 8), "head": torch.nn.Linear(32, 2)})
    with pytest.raises(TinykdError, match="group_size=16 does not divide the 8 inputs of layer table"):
        prepare_qat(narrow_table, QuantizeSpec(embeddings=True, group_size=16, activations="none"))
    prepare_qat(narrow_table, QuantizeSpec(embeddings="per-row", group_size=16, activations="none"))  # one scale a row
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16)
    tied = transformers.AutoModelForCausalLM.from_config(config)
    tied.lm_head = torch.nn.Linear(32, 64, bias=False)
    tied.lm_head.weight = tied.transformer.wte.weight  # the head shares the token table
    with pytest.raises(TinykdError, match="tied to the linear layer lm_head"):
        prepare_qat(tied, QuantizeSpec(embeddings=True, group_size=16, activations="none"))
