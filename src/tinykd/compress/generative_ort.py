"""Generative models exported with their KV cache (`compress.generative`), run in ONNX Runtime: the files of an
export, their size, greedy decoding step by step (`OrtGenerator`), and the greedy function that times or checks a
PyTorch model and an exported one the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinykd.compress.onnxrt import onnx_meta, onnx_size, session
from tinykd.errors import TinykdError
from tinykd.measure import Prompts, pad_prompts, prompt_rows, torch_greedy_generate, torch_threads

CAUSAL_FILE, ENCODER_FILE, DECODER_FILE = "model.onnx", "encoder_model.onnx", "decoder_model.onnx"


def _files(path: str | Path) -> dict[str, Path]:
    """The graphs of an export: {'model': ...} for a causal LM, {'encoder': ..., 'decoder': ...} for seq2seq."""
    p = Path(path)
    if p.is_dir():
        if (p / CAUSAL_FILE).is_file():
            return {"model": p / CAUSAL_FILE}
        if (p / ENCODER_FILE).is_file() and (p / DECODER_FILE).is_file():
            return {"encoder": p / ENCODER_FILE, "decoder": p / DECODER_FILE}
        raise TinykdError(f"{p} holds neither {CAUSAL_FILE} nor {ENCODER_FILE} with {DECODER_FILE}")
    if p.name == DECODER_FILE or p.name == ENCODER_FILE:
        return _files(p.parent)
    return {"model": p}


def generative_size(path: str | Path) -> int:
    """Bytes on disk of an exported model (a file or a seq2seq folder), external data files included."""
    return sum(onnx_size(f) for f in _files(path).values())


class OrtGenerator:
    """Greedy decoding of an exported model in ONNX Runtime, the KV cache fed back at every step.

    The first step runs the whole prompt with an empty cache; each later step runs one token per sequence.
    Prompts of different lengths are padded: on the left for a causal LM (position ids count real tokens only, as
    in `generate`), on the right for an encoder.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.files = _files(path)
        self.sessions = {role: session(f, threads) for role, f in self.files.items()}
        main = self.files.get("model") or self.files["decoder"]
        self.meta = onnx_meta(main)
        self.seq2seq = "decoder" in self.sessions
        self.decoder = self.sessions.get("model") or self.sessions["decoder"]
        self.inputs = {i.name: i for i in self.decoder.get_inputs()}
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        if not self.past:
            raise TinykdError(f"{main} has no past_key_values inputs: it was exported without a KV cache (export it "
                              "with export_generative)")  # fmt: skip
        self.outputs = [o.name for o in self.decoder.get_outputs()]
        self.feedback = {n: n.replace("present", "past_key_values", 1) for n in self.outputs if n.startswith("present")}
        missing = sorted(set(self.past) - set(self.feedback.values()) - self._from_encoder())
        if missing or "logits" not in self.outputs:
            raise TinykdError(f"{main} does not return its KV cache (no present outputs for {', '.join(missing[:2])}"
                              f"{'...' if len(missing) > 2 else ''})")  # fmt: skip
        for name in self.past:
            dims = self.inputs[name].shape
            if len(dims) != 4 or not all(isinstance(d, int) for d in (dims[1], dims[3])):
                raise TinykdError(f"{main}: cache input {name} has dims {dims}, not (batch, heads, length, head_dim)")

    def _from_encoder(self) -> set[str]:
        return {n for n in self.past if ".encoder." in n} if self.seq2seq else set()

    def _run(self, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step of the decoder (or causal LM): (logits, the cache to feed back, under its input names)."""
        out = dict(zip(self.outputs, self.decoder.run(None, state), strict=True))
        return out["logits"], {self.feedback[n]: v for n, v in out.items() if n in self.feedback}

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.inputs[n].shape[1], 0, self.inputs[n].shape[3]), dtype=np.float32)
                for n in self.past if n not in self._from_encoder()}  # fmt: skip

    # causal LM: state = the decoder's feeds
    def _causal_start(self, prompts: list[list[int]], pad: int) -> dict[str, np.ndarray]:
        ids, mask = pad_prompts(prompts, pad, left=True)
        state = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in self.inputs:
            state["position_ids"] = np.maximum(mask.cumsum(-1) - 1, 0) * mask
        return state | self._empty_past(len(prompts))

    def _causal_next(self, state: dict[str, np.ndarray], present: dict[str, np.ndarray], tokens: np.ndarray
                     ) -> dict[str, np.ndarray]:  # fmt: skip
        ones = np.ones((len(tokens), 1), np.int64)
        nxt = {"input_ids": np.asarray(tokens, dtype=np.int64).reshape(-1, 1),
               "attention_mask": np.concatenate([state["attention_mask"], ones], 1)}  # fmt: skip
        if "position_ids" in state:
            nxt["position_ids"] = state["position_ids"][:, -1:] + 1
        return nxt | present

    # seq2seq: the encoder runs once, then the decoder's state is its feeds
    def _encode(self, prompts: list[list[int]], pad: int) -> dict[str, np.ndarray]:
        ids, mask = pad_prompts(prompts, pad, left=False)
        sess = self.sessions["encoder"]
        feeds = {"input_ids": ids, "attention_mask": mask}
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        return feeds | out

    def _decoder_start(self, enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(enc["input_ids"])
        start = self.meta.get("decoder_start_token_id")
        if start is None:
            raise TinykdError(f"{self.files['decoder']} has no decoder_start_token_id in its metadata")
        state = {"input_ids": np.full((batch, 1), int(start), dtype=np.int64),
                 "encoder_attention_mask": enc["attention_mask"],
                 "encoder_hidden_states": enc["encoder_hidden_states"]} | self._empty_past(batch)  # fmt: skip
        for name in self._from_encoder():
            state[name] = enc[name.replace("past_key_values", "present", 1)]
        return {n: state[n] for n in self.inputs}

    def _decoder_next(self, state: dict[str, np.ndarray], present: dict[str, np.ndarray], tokens: np.ndarray
                      ) -> dict[str, np.ndarray]:  # fmt: skip
        return state | present | {"input_ids": np.asarray(tokens, dtype=np.int64).reshape(len(tokens), 1)}

    def generate(self, prompts: Prompts, max_new_tokens: int, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> list[list[int]]:  # fmt: skip
        """The new tokens of each prompt (greedy), stopping after `eos_token_id` (None: never stop early)."""
        rows = prompt_rows(prompts)
        if max_new_tokens < 1:
            raise TinykdError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        pad = pad_token_id if pad_token_id is not None else self.meta.get("pad_token_id")
        pad = int(pad) if isinstance(pad, int) else 0
        if self.seq2seq:
            state, nxt = self._decoder_start(self._encode(rows, pad)), self._decoder_next
        else:
            state, nxt = self._causal_start(rows, pad), self._causal_next
        new: list[list[int]] = [[] for _ in rows]
        done = np.zeros(len(rows), dtype=bool)
        for step in range(max_new_tokens):
            logits, present = self._run(state)
            tokens = logits[:, -1].argmax(-1).astype(np.int64)
            tokens = np.where(done, pad, tokens)
            for i in np.flatnonzero(~done):
                new[i].append(int(tokens[i]))
            if eos_token_id is not None:
                done |= tokens == eos_token_id
            if done.all() or step == max_new_tokens - 1:
                break
            state = nxt(state, present, tokens)
        return new


def ort_greedy_generate(
    onnx_path: str | Path | OrtGenerator, input_ids: Prompts, max_new_tokens: int, eos_token_id: int | None = None,
    threads: int | None = None,
) -> list[list[int]]:  # fmt: skip
    """Greedy decoding in ONNX Runtime with the KV cache: the new tokens of each prompt (a list of token lists, or a
    2-D array), each ending at `eos_token_id` when it was generated (None: exactly `max_new_tokens` tokens)."""
    gen = onnx_path if isinstance(onnx_path, OrtGenerator) else OrtGenerator(onnx_path, threads)
    return gen.generate(input_ids, max_new_tokens, eos_token_id)


def greedy_fn(source: nn.Module | str | Path | OrtGenerator, threads: int | None = None
              ) -> Callable[[Sequence[int], int], list[int]]:  # fmt: skip
    """`fn(prompt_ids, new_tokens) -> new tokens` at batch 1, never stopping early: PyTorch's `generate` with the
    cache for a model, ONNX Runtime for an exported file or folder (with torch's thread count, for a fair race)."""
    if isinstance(source, nn.Module):

        def torch_fn(prompt: Sequence[int], n: int) -> list[int]:
            with torch_threads(threads):
                return torch_greedy_generate(source, [list(prompt)], n, None)[0]

        return torch_fn
    gen = source if isinstance(source, OrtGenerator) else OrtGenerator(source, threads or torch.get_num_threads())
    return lambda prompt, n: gen.generate([list(prompt)], n, None)[0]


__all__ = ["CAUSAL_FILE", "DECODER_FILE", "ENCODER_FILE", "OrtGenerator", "generative_size", "greedy_fn",
           "ort_greedy_generate"]  # fmt: skip
