"""Seq2seq (BART/T5-style): the decoder predicts the target text; token accuracy and perplexity."""

from __future__ import annotations

from tinykd.tasks.base import TASKS
from tinykd.tasks.causal_lm import CausalLM


@TASKS.register("seq2seq")
class Seq2Seq(CausalLM):
    name = "seq2seq"
    hf_auto_class = "AutoModelForSeq2SeqLM"
