"""Generative models in ONNX with a KV cache: export, ORT greedy decoding equal to PyTorch's, int8, speed, errors.

Tiny GPT-2 and BART models are built from configs with fixed seeds and saved with save_pretrained (no hub). Each
is exported once per module (the dynamo exporter takes 10-25 s on two cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers
from torch import nn

from tinykd.compress.generative import export_generative, verify_greedy
from tinykd.compress.generative_ort import OrtGenerator, generative_size, greedy_fn, ort_greedy_generate
from tinykd.compress.onnxrt import onnx_inputs, onnx_meta, onnx_size
from tinykd.compress.quantize import quantize_generative_int8
from tinykd.errors import TinykdError
from tinykd.measure import generation_speed

GPT2_PROMPTS = [[5], [5, 6, 7], [10, 11, 12, 13, 14, 15, 16]]  # lengths 1, 3 and 7
BART_PROMPTS = [[0, 42, 2], [0, 5, 6, 7, 2], [0, 10, 11, 12, 13, 14, 15, 16, 2]]
NEW = 8


def tiny_gpt2(folder: Path) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=1,
                                     eos_token_id=2, pad_token_id=0, initializer_range=0.2)  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()  # initializer_range 0.2: varied greedy tokens, not one repeated
    model.save_pretrained(folder)
    return model


def tiny_bart(folder: Path) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.2)  # fmt: skip
    model = transformers.BartForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    folder = tmp_path_factory.mktemp("gpt2")
    model = tiny_gpt2(folder / "hf")
    return model, export_generative(folder / "hf", folder / "onnx", task="causal-lm")


@pytest.fixture(scope="module")
def bart(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    folder = tmp_path_factory.mktemp("bart")
    model = tiny_bart(folder / "hf")
    return model, export_generative(folder / "hf", folder / "onnx")  # auto: seq2seq from is_encoder_decoder


def test_causal_lm_file_has_the_cache_inline(gpt2: tuple[nn.Module, Path]) -> None:
    _, out = gpt2
    path = out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # weights inline: no external data file
    assert onnx_size(path) == path.stat().st_size
    inputs = onnx_inputs(path)
    assert inputs["input_ids"] == ["batch", "sequence"]
    assert inputs["attention_mask"] == ["batch", "total_sequence"]
    assert inputs["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    outputs = [o.name for o in onnx.load(str(path)).graph.output]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    meta = onnx_meta(path)
    assert meta["task"] == "causal-lm" and meta["model_type"] == "gpt2" and meta["exporter"] == "dynamo"


def test_gpt2_ort_greedy_equals_pytorch_token_for_token(gpt2: tuple[nn.Module, Path]) -> None:
    model, out = gpt2
    report = verify_greedy(model, out, GPT2_PROMPTS, NEW)
    assert report["equal"], report["mismatches"]
    assert report["matching_tokens"] == report["compared_tokens"] == len(GPT2_PROMPTS) * NEW
    assert len({t for row in report["pytorch"] for t in row}) > 5  # a real test: not one token over and over
    batched = verify_greedy(model, out, GPT2_PROMPTS, NEW, batch=True)  # left-padded batch on both sides
    assert batched["equal"], batched["mismatches"]
    assert batched["onnxruntime"] == report["onnxruntime"]
    # a token the first prompt generates, made its end of sequence: both stop there, the others go on
    eos = report["pytorch"][1][3]
    stopped = verify_greedy(model, out, GPT2_PROMPTS, NEW, eos_token_id=eos, batch=True)
    assert stopped["equal"], stopped["mismatches"]
    first = stopped["onnxruntime"][1]
    assert first[-1] == eos and len(first) == report["pytorch"][1].index(eos) + 1


def test_ort_generate_takes_arrays_and_single_prompts(gpt2: tuple[nn.Module, Path]) -> None:
    _, out = gpt2
    gen = OrtGenerator(out / "model.onnx")
    one = ort_greedy_generate(gen, GPT2_PROMPTS[1], 5)
    assert one == ort_greedy_generate(out, np.array([GPT2_PROMPTS[1]]), 5)
    assert one == ort_greedy_generate(gen, torch.tensor(GPT2_PROMPTS[1]), 5)
    assert len(one) == 1 and len(one[0]) == 5


def test_bart_ort_greedy_equals_pytorch_token_for_token(bart: tuple[nn.Module, Path]) -> None:
    model, out = bart
    assert sorted(p.name for p in out.iterdir()) == ["decoder_model.onnx", "encoder_model.onnx"]
    dec = onnx_inputs(out / "decoder_model.onnx")
    assert dec["past_key_values.0.decoder.key"] == ["batch", 2, "past_sequence", 16]
    assert dec["past_key_values.0.encoder.key"] == ["batch", 2, "encoder_sequence", 16]
    report = verify_greedy(model, out, BART_PROMPTS, NEW)
    assert report["equal"], report["mismatches"]
    assert report["matching_tokens"] == report["compared_tokens"] == len(BART_PROMPTS) * NEW
    batched = verify_greedy(model, out / "decoder_model.onnx", BART_PROMPTS, NEW, batch=True)  # right-padded
    assert batched["equal"], batched["mismatches"]


def test_int8_is_smaller_loads_and_generates(gpt2: tuple[nn.Module, Path], bart: tuple[nn.Module, Path],
                                            tmp_path: Path) -> None:  # fmt: skip
    _, out = gpt2
    report = quantize_generative_int8(out / "model.onnx", tmp_path / "gpt2.int8.onnx")
    assert report["files"]["model"]["quantized_nodes"] > 0
    assert report["size_bytes"] == onnx_size(tmp_path / "gpt2.int8.onnx") < 0.7 * onnx_size(out / "model.onnx")
    tokens = ort_greedy_generate(tmp_path / "gpt2.int8.onnx", GPT2_PROMPTS, NEW)
    assert [len(t) for t in tokens] == [NEW] * len(GPT2_PROMPTS)
    assert all(0 <= t < 100 for row in tokens for t in row)

    model, out = bart
    report = quantize_generative_int8(out, tmp_path / "bart-int8")
    assert report["size_bytes"] == generative_size(tmp_path / "bart-int8") < 0.7 * generative_size(out)
    tokens = ort_greedy_generate(tmp_path / "bart-int8", BART_PROMPTS, NEW)
    assert [len(t) for t in tokens] == [NEW] * len(BART_PROMPTS)
    match = verify_greedy(model, tmp_path / "bart-int8", BART_PROMPTS, NEW)  # may differ; must run and count
    assert 0 <= match["matching_tokens"] <= match["compared_tokens"] == len(BART_PROMPTS) * NEW
    if not match["equal"]:  # int8 rounding may change a greedy choice: the report says where
        with pytest.raises(TinykdError, match="greedy decoding differs: .* first differs at new token"):
            verify_greedy(model, tmp_path / "bart-int8", BART_PROMPTS, NEW, raise_on_mismatch=True)


def test_generation_speed_for_pytorch_and_onnxruntime(gpt2: tuple[nn.Module, Path]) -> None:
    model, out = gpt2
    for fn in (greedy_fn(model, threads=1), greedy_fn(out, threads=1)):
        speed = generation_speed(fn, GPT2_PROMPTS[2], 4, repeats=2)
        assert speed["new_tokens"] == 4 and speed["prompt_tokens"] == 7
        assert speed["first_token_ms"] > 0 and speed["total_ms"] > 0 and speed["tokens_per_s"] > 0


def test_errors_name_the_problem(gpt2: tuple[nn.Module, Path], tmp_path: Path) -> None:
    with pytest.raises(TinykdError, match="not a Hugging Face model folder"):
        export_generative(tmp_path, tmp_path / "out")
    _, out = gpt2
    hf = out.parent / "hf"
    with pytest.raises(TinykdError, match="model type 'gpt2' cannot be exported as seq2seq"):
        export_generative(hf, tmp_path / "out", task="seq2seq")
    with pytest.raises(TinykdError, match="task must be one of"):
        export_generative(hf, tmp_path / "out", task="translation")
    bert = tmp_path / "bert"  # BertLMHeadModel without is_decoder returns no cache
    transformers.BertLMHeadModel(transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=32)
                                 ).save_pretrained(bert)  # fmt: skip
    with pytest.raises(TinykdError, match="model type 'bert' cannot be exported with a KV cache"):
        export_generative(bert, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.onnx"))

    # an ONNX file without the cache: logits = a lookup table indexed by the token ids
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(100, 100)).astype(np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["logits"])], "plain",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 100])],
                              [table])  # fmt: skip
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    with pytest.raises(TinykdError, match="no past_key_values inputs: it was exported without a KV cache"):
        ort_greedy_generate(plain, [[1, 2]], 3)
    with pytest.raises(TinykdError, match="without a KV cache"):
        quantize_generative_int8(plain, tmp_path / "plain.int8.onnx")
    with pytest.raises(TinykdError, match="does not exist"):
        ort_greedy_generate(tmp_path / "missing.onnx", [[1]], 3)
    with pytest.raises(TinykdError, match="at least one token"):
        ort_greedy_generate(out, [[]], 3)
