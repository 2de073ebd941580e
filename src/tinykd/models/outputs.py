"""What a model returns, read one way: a tensor, a tuple whose first item is the logits, or an object with
`.logits` (Hugging Face). The engine, the distiller and the tools all call models through this.

Transformer loss terms also need a model's hidden states and attention probabilities: `forward_outputs` asks a
Hugging Face model for them only when a term does (they cost memory), and `eager_attention` switches a model to
the one attention implementation that returns probabilities at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tinykd.errors import TinykdError
from tinykd.forward_pass import Outputs

# config keys of the attention-probability dropout: BERT-likes, DistilBERT/BART/Llama-likes, GPT-2
_ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def cast_floats(inputs: Any, dtype: torch.dtype | None) -> Any:
    """The floating-point tensors of `inputs` (a tensor or a dict) in `dtype` (None: as they are); ids stay ints."""
    if dtype is None:
        return inputs
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype) if inputs.is_floating_point() else inputs
    if isinstance(inputs, Mapping):
        return {k: cast_floats(v, dtype) for k, v in inputs.items()}
    return inputs


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Run a model on a tensor or a dict of tensors and return its logits (plain, tuple or `.logits`)."""
    return _logits(model(**inputs) if isinstance(inputs, Mapping) else model(inputs))


def forward_outputs(model: nn.Module, inputs: Any, hidden_states: bool = False, attentions: bool = False,
                    role: str = "model") -> Outputs:  # fmt: skip
    """Run `model` once; with `hidden_states` / `attentions`, ask a Hugging Face model (dict inputs) for them too.

    A model that gives none of what was asked is one line naming it (`role`: "teacher", "student"), not a
    `None` that fails later inside a loss term.
    """
    if not (hidden_states or attentions):
        return Outputs(call_model(model, inputs))
    asked = [w for w, on in (("hidden states", hidden_states), ("attention probabilities", attentions)) if on]
    if not isinstance(inputs, Mapping):
        raise TinykdError(f"the {role} ({type(model).__name__}) takes a tensor, but its {' and '.join(asked)} "
                          "are asked for: only Hugging Face models called with a dict of inputs give them")  # fmt: skip
    flags = {"output_hidden_states": True} if hidden_states else {}
    flags.update({"output_attentions": True} if attentions else {})
    out = model(**inputs, **flags)
    # an encoder-decoder's logits are the decoder's: its hidden states and self-attentions are the ones that line up
    prefix = "decoder_" if hasattr(out, "decoder_hidden_states") else ""
    got = Outputs(_logits(out), hidden_states=getattr(out, f"{prefix}hidden_states", None) if hidden_states else None,
                  attentions=getattr(out, f"{prefix}attentions", None) if attentions else None)  # fmt: skip
    # transformers gives an empty tuple, not None, for attentions its sdpa/flash kernels never computed
    missing = [w for w, value in (("hidden states", got.hidden_states), ("attention probabilities", got.attentions))
               if w in asked and not value]  # fmt: skip
    if missing:
        implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        hint = ""
        if attentions and implementation not in (None, "eager"):
            hint = f" (its attention implementation is '{implementation}'; only 'eager' gives probabilities)"
        raise TinykdError(f"the {role} ({type(model).__name__}) returned no {' and '.join(missing)} when asked"
                          f"{hint}; the terms that need them work with Hugging Face transformers models")  # fmt: skip
    return got


def eager_attention(model: nn.Module) -> bool:
    """Switch a Hugging Face model to "eager" attention, the only one that returns attention probabilities
    (sdpa and flash kernels never form them). True if it was switched, so the caller can say so."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current in (None, "eager"):
        return False
    if hasattr(model, "set_attn_implementation"):  # transformers >= 4.56: re-dispatches every sub-model too
        model.set_attn_implementation("eager")
    else:  # older transformers read the config at every forward
        config._attn_implementation = "eager"
    if getattr(config, "_attn_implementation", None) != "eager":
        raise TinykdError(f"{type(model).__name__} cannot switch from '{current}' to eager attention, which the "
                          "attention loss terms need; build it with attn_implementation='eager'")  # fmt: skip
    return True


def attention_dropout(model: nn.Module) -> float:
    """The dropout a Hugging Face model applies to its attention probabilities in training (0 if unknown).

    transformers returns the probabilities after that dropout, so attention terms see them with entries zeroed.
    """
    config = getattr(model, "config", None)
    for key in _ATTENTION_DROPOUT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0
