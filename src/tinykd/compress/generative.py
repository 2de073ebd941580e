"""Generative Hugging Face models in ONNX with a KV cache: export, greedy decoding in ONNX Runtime, verification
against PyTorch's `generate`, dynamic int8, and generation speed.

Route: our own small wrappers exported by torch's dynamo exporter, not Hugging Face Optimum. The only
`optimum-onnx` on PyPI (0.1.0) requires transformers < 4.58 and fails to import under transformers 5
(`get_parameter_dtype` is gone from `transformers.modeling_utils`). The legacy TorchScript exporter is not used
either: it traces transformers 5's mask construction with the example's lengths, and its graphs give logits off
by ~0.1 at other lengths. Each wrapper takes flat tensors, builds the `DynamicCache` (or, for seq2seq, the
`EncoderDecoderCache`) that transformers 5 models take, and returns the cache flat again. Every exported file is
checked in ONNX Runtime against eager PyTorch on a prompt with an empty cache and on one step with a cache
before it is kept, because a silently wrong export is worse than none.

Files (input and output names follow Optimum's, so its users find their way):

- causal LM, `model.onnx`: `input_ids`, `attention_mask` (past + new tokens), `position_ids` (when the model
  takes them), `past_key_values.{i}.key|value` (batch, heads, past, head_dim) -> `logits`,
  `present.{i}.key|value`.
- seq2seq, `encoder_model.onnx`: `input_ids`, `attention_mask` -> `encoder_hidden_states` and the decoder's
  cross-attention keys and values `present.{i}.encoder.key|value`, computed once per input rather than at every
  decoding step; `decoder_model.onnx`: `input_ids` (decoder tokens), `encoder_attention_mask`,
  `encoder_hidden_states`, `past_key_values.{i}.decoder.key|value` (self-attention, empty at the first step) and
  `past_key_values.{i}.encoder.key|value` -> `logits`, `present.{i}.decoder.key|value`.

Weights are inline (one file per graph to copy) unless a graph exceeds protobuf's 2 GiB limit; `onnx_size`
counts external data files either way.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.compress.generative_ort import CAUSAL_FILE, DECODER_FILE, ENCODER_FILE, OrtGenerator
from tinykd.compress.onnxrt import INLINE_LIMIT, META_KEY, _first_line, strip_debug_info
from tinykd.errors import TinykdError
from tinykd.measure import (
    Prompts,
    count_params,
    prompt_rows,
    torch_greedy_generate,
)
from tinykd.tasks import generative_task, generative_tasks, get_task

CHECK_TOLERANCE = 1e-3  # max |logit difference| allowed between ONNX Runtime and eager PyTorch at export
# example sizes for the exporter: all different, and not 0 or 1, so that no dynamic dimension is specialised
_BATCH, _SEQ, _PAST, _ENC = 2, 3, 5, 7



# ---------------------------------------------------------------------------------------------------- export


def _flat(cache: Any) -> list[torch.Tensor]:
    """A transformers 5 cache (its `layers`) as [k0, v0, k1, v1, ...]."""
    if cache is None or not hasattr(cache, "layers"):
        raise TinykdError(f"the model returned {'no' if cache is None else type(cache).__name__ + ', not a'} "
                          "key/value cache")  # fmt: skip
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _pairs(flat: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


class CausalLMWithCache(nn.Module):
    """`forward(input_ids, attention_mask, [position_ids], k0, v0, k1, ...) -> (logits, k0', v0', ...)`: a causal
    LM over flat tensors, as the exporter and ONNX Runtime see it (the model itself takes and returns a Cache)."""

    def __init__(self, model: nn.Module, position_ids: bool) -> None:
        super().__init__()
        self.model, self.position_ids = model, position_ids

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        n = 3 if self.position_ids else 2
        extra = {"position_ids": inputs[2]} if self.position_ids else {}
        cache = DynamicCache(_pairs(inputs[n:]))
        out = self.model(input_ids=inputs[0], attention_mask=inputs[1], cache=cache, use_cache=True, **extra)
        return (out.logits, *_flat(out.cache))


class Seq2SeqEncoder(nn.Module):
    """`forward(input_ids, attention_mask) -> (encoder_hidden_states, cross k0, cross v0, ...)`: the encoder, then
    the decoder's cross-attention keys and values, which depend on the encoder's output only. They come from one
    throw-away decoder step (any model with an EncoderDecoderCache fills its cross-attention cache on the first
    step), so that the decoder graph never recomputes them."""

    def __init__(self, model: nn.Module, start_token: int) -> None:
        super().__init__()
        self.model, self.start_token = model, start_token

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache, EncoderDecoderCache

        hidden = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        start = torch.full((input_ids.shape[0], 1), self.start_token, dtype=torch.long, device=input_ids.device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.model.get_decoder()(input_ids=start, encoder_hidden_states=hidden, encoder_attention_mask=attention_mask,
                                 cache=cache, use_cache=True)  # fmt: skip
        return (hidden, *_flat(cache.cross_attention_cache))


class Seq2SeqDecoder(nn.Module):
    """`forward(input_ids, encoder_attention_mask, encoder_hidden_states, self k0, self v0, cross k0, cross v0, ...)
    -> (logits, self k0', self v0', ...)`: one decoding step reusing both caches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                encoder_hidden_states: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        from transformers import DynamicCache, EncoderDecoderCache

        self_kv = [t for i in range(0, len(past), 4) for t in past[i : i + 2]]
        cross_kv = [t for i in range(0, len(past), 4) for t in past[i + 2 : i + 4]]
        # a filled cross-attention cache marks every layer `is_updated`: the decoder reads it instead of recomputing
        cache = EncoderDecoderCache(DynamicCache(_pairs(self_kv)), DynamicCache(_pairs(cross_kv)))
        out = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                         decoder_input_ids=input_ids, cache=cache, use_cache=True)  # fmt: skip
        return (out.logits, *_flat(out.cache.self_attention_cache))


def load_generative(model_dir: str | Path, task: str = "auto") -> tuple[nn.Module, str]:
    """(model in eval mode, fp32, on the CPU; its task) from a `save_pretrained` folder, with one-line errors."""
    from tinykd.loading import hf_config, load_model

    choices = ["auto", *generative_tasks()]
    if task not in choices:
        raise TinykdError(f"task must be one of {', '.join(choices)}, not '{task}'")
    folder = Path(model_dir)
    config = hf_config(folder)
    resolved = get_task(task) if task != "auto" else generative_task(getattr(config, "is_encoder_decoder", False))
    model = load_model(folder, resolved.name, purpose="exported").model
    if getattr(model, "_is_stateful", False):
        raise TinykdError(f"model type '{getattr(config, 'model_type', '?')}' is recurrent (a state, not a key/value "
                          "cache): it cannot be exported with a KV cache")  # fmt: skip
    return model, resolved.name


def _takes(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _start_token(model: nn.Module) -> int:
    start = getattr(model.generation_config, "decoder_start_token_id", None)
    start = start if start is not None else getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise TinykdError(f"model type '{model.config.model_type}' has no decoder_start_token_id; set it in its "
                          "config or generation_config")  # fmt: skip
    return int(start[0] if isinstance(start, list) else start)


def _kv_shapes(flat: Sequence[torch.Tensor], what: str) -> list[tuple[int, int]]:
    """(heads, head_dim) of each cached tensor; a cache of any other form cannot be fed back as we feed it."""
    if not flat or any(t is None or t.ndim != 4 for t in flat):
        raise TinykdError(f"its {what} is not per-layer (batch, heads, length, head_dim) keys and values")
    return [(int(t.shape[1]), int(t.shape[3])) for t in flat]


def _random_past(shapes: list[tuple[int, int]], length: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(_BATCH, h, length, d, generator=gen) for h, d in shapes]


def _causal_spec(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor], list[str], dict[str, dict]]:
    """(wrapper, example inputs by name, output names, dynamic axes by input name) of a causal LM."""
    model_type = model.config.model_type
    wrapper = CausalLMWithCache(model, _takes(model, "position_ids")).eval()
    vocab = int(model.get_input_embeddings().num_embeddings)
    gen = torch.Generator().manual_seed(0)

    def inputs(past: int, n: int = _SEQ) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (_BATCH, n), generator=gen)
        named = {"input_ids": ids, "attention_mask": torch.ones(_BATCH, past + n, dtype=torch.long)}
        if wrapper.position_ids:
            named["position_ids"] = torch.arange(past, past + n).expand(_BATCH, n).contiguous()
        return named

    try:
        with torch.inference_mode():
            shapes = _kv_shapes(wrapper(*inputs(0).values())[1:], "cache")
    except TinykdError as exc:
        raise TinykdError(f"model type '{model_type}' cannot be exported with a KV cache: {exc}") from None
    except Exception as exc:  # the model does not run with a cache the way we call it
        raise TinykdError(f"model type '{model_type}' cannot be run with a KV cache: {_first_line(exc)}") from None
    layers = len(shapes) // 2
    past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    example = inputs(_PAST) | dict(zip(past_names, _random_past(shapes, _PAST), strict=True))
    axes: dict[str, dict] = {"input_ids": {0: "batch", 1: "sequence"},
                             "attention_mask": {0: "batch", 1: "total_sequence"},
                             "position_ids": {0: "batch", 1: "sequence"}}  # fmt: skip
    axes = {k: v for k, v in axes.items() if k in example} | {n: {0: "batch", 2: "past_sequence"} for n in past_names}
    outputs = ["logits", *(n.replace("past_key_values", "present") for n in past_names)]
    return wrapper, example, outputs, axes


def _seq2seq_specs(model: nn.Module) -> list[tuple[str, nn.Module, dict[str, torch.Tensor], list[str], dict]]:
    """(file name, wrapper, example inputs, output names, dynamic axes) of the encoder and the decoder."""
    from transformers import DynamicCache, EncoderDecoderCache

    model_type = model.config.model_type
    encoder = Seq2SeqEncoder(model, _start_token(model)).eval()
    vocab = int(model.get_input_embeddings().num_embeddings)
    gen = torch.Generator().manual_seed(0)
    enc_ids = torch.randint(0, vocab, (_BATCH, _ENC), generator=gen)
    enc_mask = torch.ones(_BATCH, _ENC, dtype=torch.long)
    try:
        with torch.inference_mode():
            hidden, *cross = encoder(enc_ids, enc_mask)
            cross_shapes = _kv_shapes(cross, "cross-attention cache")
            start = torch.full((_BATCH, 1), encoder.start_token, dtype=torch.long)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache(_pairs(cross)))
            out = model(encoder_outputs=(hidden,), attention_mask=enc_mask, decoder_input_ids=start, cache=cache,
                        use_cache=True)  # fmt: skip
            self_shapes = _kv_shapes(_flat(out.cache.self_attention_cache), "self-attention cache")
    except TinykdError as exc:
        raise TinykdError(f"model type '{model_type}' cannot be exported with a KV cache: {exc}") from None
    except Exception as exc:  # the model does not run with a cache the way we call it
        raise TinykdError(f"model type '{model_type}' cannot be run with an encoder-decoder KV cache: "
                          f"{_first_line(exc)}") from None  # fmt: skip
    layers = len(self_shapes) // 2
    cross_names = [f"present.{i}.encoder.{kv}" for i in range(layers) for kv in ("key", "value")]
    enc_axes = {"input_ids": {0: "batch", 1: "encoder_sequence"}, "attention_mask": {0: "batch", 1: "encoder_sequence"}}
    past_self, past_cross = _random_past(self_shapes, _PAST), _random_past(cross_shapes, _ENC)
    past: dict[str, torch.Tensor] = {}
    axes: dict[str, dict] = {"input_ids": {0: "batch", 1: "sequence"},
                             "encoder_attention_mask": {0: "batch", 1: "encoder_sequence"},
                             "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"}}  # fmt: skip
    for i in range(layers):
        for j, kv in enumerate(("key", "value")):
            past[f"past_key_values.{i}.decoder.{kv}"] = past_self[2 * i + j]
            axes[f"past_key_values.{i}.decoder.{kv}"] = {0: "batch", 2: "past_sequence"}
        for j, kv in enumerate(("key", "value")):
            past[f"past_key_values.{i}.encoder.{kv}"] = past_cross[2 * i + j]
            axes[f"past_key_values.{i}.encoder.{kv}"] = {0: "batch", 2: "encoder_sequence"}
    dec_ids = torch.randint(0, vocab, (_BATCH, _SEQ), generator=gen)
    dec_example = {"input_ids": dec_ids, "encoder_attention_mask": enc_mask,
                   "encoder_hidden_states": hidden.detach().clone()} | past  # fmt: skip
    dec_outputs = ["logits", *(f"present.{i}.decoder.{kv}" for i in range(layers) for kv in ("key", "value"))]
    return [(ENCODER_FILE, encoder, {"input_ids": enc_ids, "attention_mask": enc_mask},
             ["encoder_hidden_states", *cross_names], enc_axes),
            (DECODER_FILE, Seq2SeqDecoder(model).eval(), dec_example, dec_outputs, axes)]  # fmt: skip


def _variadic(module: nn.Module) -> bool:
    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())


def _rename_dims(proto: Any, axes: dict[str, dict]) -> None:
    """Give the exporter's symbolic dimensions (s17, s43 + s70, ...) the names of `axes` everywhere in the graph."""
    names: dict[str, str] = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, label in axes.get(value.name, {}).items():
            if axis < len(dims) and re.fullmatch(r"s\d+", dims[axis].dim_param):
                names.setdefault(dims[axis].dim_param, label)
    if not names:
        return
    pattern = re.compile(r"\bs\d+\b")
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: names.get(m.group(0), m.group(0)), dim.dim_param)


def _export_one(wrapper: nn.Module, example: dict[str, torch.Tensor], outputs: list[str], axes: dict[str, dict],
                path: Path, opset: int | None, meta: dict[str, Any]) -> None:  # fmt: skip
    """torch.onnx.export (dynamo) of one wrapper into one file, weights inline, debugging metadata dropped."""
    import onnx

    per_input = [{axis: torch.export.Dim.DYNAMIC for axis in axes.get(name, {})} for name in example]
    named = len(inspect.signature(wrapper.forward).parameters) - 1  # arguments before *inputs or *past
    shapes = (*per_input[:named], tuple(per_input[named:])) if _variadic(wrapper) else tuple(per_input)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(None):
                warnings.simplefilter("ignore")  # torch.export's notes on its own internals; failures still raise
                torch.onnx.export(wrapper, tuple(example.values()), str(raw), dynamo=True,
                                  input_names=list(example), output_names=outputs, dynamic_shapes=shapes,
                                  opset_version=opset, verbose=False)  # fmt: skip
        except Exception as exc:  # the dynamo exporter raises many types for what it cannot capture
            while exc.__cause__ is not None:  # the exporter wraps the reason in "step 1/3 failed" errors
                exc = exc.__cause__
            raise TinykdError(f"model type '{meta.get('model_type')}' cannot be exported to ONNX with a KV cache: "
                              f"{_first_line(exc)}") from None  # fmt: skip
        proto = onnx.load(str(raw))  # with its external data, if the exporter wrote some
    strip_debug_info(proto)
    _rename_dims(proto, axes)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    proto.metadata_props.add(key=META_KEY, value=json.dumps({**meta, "opset": opset_used}, default=str))
    external = proto.ByteSize() > INLINE_LIMIT
    onnx.save_model(proto, str(path), save_as_external_data=external,
                    location=path.name + ".data" if external else None)  # fmt: skip


def export_generative(model_dir: str | Path, out_dir: str | Path, task: str = "auto", opset: int | None = None) -> Path:
    """Export a `save_pretrained` causal LM or seq2seq model to ONNX with its KV cache into `out_dir` (returned).

    `task`: `causal-lm` (one `model.onnx`), `seq2seq` (`encoder_model.onnx` and `decoder_model.onnx`), or `auto`
    (from the config's `is_encoder_decoder`). The files are checked in ONNX Runtime against PyTorch (prompt with
    an empty cache, then one cached step); a difference above 1e-3 is an error and the files are removed.
    """
    model, task = load_generative(model_dir, task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen_cfg = model.generation_config
    meta = {"format": "onnx fp32", "task": task, "model_type": model.config.model_type, "exporter": "dynamo",
            "params": count_params(model),
            "eos_token_id": gen_cfg.eos_token_id, "pad_token_id": gen_cfg.pad_token_id,
            "bos_token_id": gen_cfg.bos_token_id}  # fmt: skip
    if not get_task(task).text_to_text:  # one decoder-only graph
        wrapper, example, outputs, axes = _causal_spec(model)
        specs = [(CAUSAL_FILE, wrapper, example, outputs, axes)]
    else:
        meta["decoder_start_token_id"] = _start_token(model)
        specs = _seq2seq_specs(model)
    written = [out / name for name, *_ in specs]
    try:
        for (name, wrapper, example, outputs, axes), path in zip(specs, written, strict=True):
            _export_one(wrapper, example, outputs, axes, path, opset, meta | {"role": name.removesuffix(".onnx")})
        with torch.inference_mode():
            _check_export(model, out, task)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
            Path(f"{path}.data").unlink(missing_ok=True)
        raise
    return out


def _check_export(model: nn.Module, out: Path, task: str) -> None:
    """ONNX Runtime against eager PyTorch on prompts of 4 and 2 tokens (padded) with an empty cache, then on one
    cached step."""
    gen = OrtGenerator(out)
    vocab = int(model.get_input_embeddings().num_embeddings)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, vocab, 4).tolist(), rng.integers(0, vocab, 2).tolist()]  # padding checked too

    def diff(ours: np.ndarray, ref: torch.Tensor, mask: np.ndarray) -> float:  # rows of real tokens only
        return float(np.abs(ours - ref.numpy())[mask[:, -ours.shape[1] :] == 1].max())

    diffs = []
    if not get_task(task).text_to_text:
        wrapper = CausalLMWithCache(model, "position_ids" in gen.inputs)
        state = gen._causal_start(prompts, pad=0)
        for _ in range(2):
            logits, present = gen._run(state)
            diffs.append(diff(logits, wrapper(*(torch.from_numpy(v) for v in state.values()))[0],
                              state["attention_mask"]))  # fmt: skip
            state = gen._causal_next(state, present, rng.integers(0, vocab, 2))
    else:
        enc = gen._encode(prompts, pad=0)
        encoder = model.get_encoder()
        ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
        ref_hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        diffs.append(diff(enc["encoder_hidden_states"], ref_hidden, enc["attention_mask"]))
        wrapper, state = Seq2SeqDecoder(model), gen._decoder_start(enc)
        for _ in range(2):
            logits, present = gen._run(state)
            diffs.append(diff(logits, wrapper(*(torch.from_numpy(v) for v in state.values()))[0],
                              np.ones(logits.shape[:2], np.int64)))  # fmt: skip
            state = gen._decoder_next(state, present, rng.integers(0, vocab, 2))
    worst = float(max(diffs))
    if not np.isfinite(worst) or worst > CHECK_TOLERANCE:
        raise TinykdError(f"the exported {task} graph differs from PyTorch by up to {worst:.3g} (tolerance "
                          f"{CHECK_TOLERANCE:g}) with a KV cache; the files in {out} were removed")  # fmt: skip


# ------------------------------------------------------------------------------------ PyTorch and checking


def verify_greedy(
    model: nn.Module, onnx_path: str | Path | OrtGenerator, prompts_ids: Prompts, max_new_tokens: int,
    eos_token_id: int | None = None, batch: bool = False, raise_on_mismatch: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Greedy tokens of ONNX Runtime against PyTorch's `generate`, token for token.

    Each prompt runs alone (batch 1) unless `batch`, when all run together, padded the same way on both sides. The
    model's own logits processors are switched off (see `plain_greedy`): ONNX Runtime's loop is plain argmax.
    Returns the matching and compared token counts and, per prompt, where the two first differ;
    `raise_on_mismatch` turns a difference into a one-line TinykdError.
    """
    rows = prompt_rows(prompts_ids)
    gen = onnx_path if isinstance(onnx_path, OrtGenerator) else OrtGenerator(onnx_path)
    groups = [rows] if batch else [[r] for r in rows]
    ours, theirs = [], []
    for group in groups:
        ours += gen.generate(group, max_new_tokens, eos_token_id)
        theirs += torch_greedy_generate(model, group, max_new_tokens, eos_token_id)
    matching = compared = 0
    mismatches = []
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        same = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        matching += same
        compared += max(len(a), len(b))
        if a != b:
            mismatches.append({"prompt": i, "position": same, "onnxruntime": a[same : same + 5],
                               "pytorch": b[same : same + 5]})  # fmt: skip
    report = {"prompts": len(rows), "matching_tokens": matching, "compared_tokens": compared,
              "equal": not mismatches, "mismatches": mismatches, "onnxruntime": ours, "pytorch": theirs}  # fmt: skip
    if mismatches and raise_on_mismatch:
        first = mismatches[0]
        raise TinykdError(f"greedy decoding differs: {matching}/{compared} tokens match; prompt {first['prompt']} "
                          f"first differs at new token {first['position']} (onnxruntime {first['onnxruntime']} vs "
                          f"pytorch {first['pytorch']})")  # fmt: skip
    return report


__all__ = ["export_generative", "load_generative", "verify_greedy"]
