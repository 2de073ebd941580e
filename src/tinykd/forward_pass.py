"""`Outputs`: what one forward pass of a model gives, read once by the distiller and handed to every loss term.

A leaf of the package: the models fill its logits, hidden states and attentions (`models.outputs`), the distiller
adds the tapped features, the padding mask and the sample indices, and the loss terms read it (`losses.base`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Outputs:
    """What one forward pass of a model gives the loss terms.

    `hidden_states` and `attentions` are Hugging Face's (the embedding output first, then one (B, T, D) tensor
    per layer; one (B, H, T, T) tensor of attention probabilities per layer), present only when a term asks for
    them. `mask` is the inputs' `attention_mask` (B, T): 1 for real tokens, 0 for padding. `index` (B,) is each
    sample's position in the training set, given in training to terms that set `needs_index` (CRD's memory).
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    mask: torch.Tensor | None = None
    index: torch.Tensor | None = None
