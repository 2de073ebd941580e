"""Loss terms by name. Each built-in term lives in its own file and is imported here on purpose."""

from tinykd.losses import (  # noqa: F401  (registers the built-in terms)
    at,
    attention_mse,
    box_kd,
    ce,
    cosine,
    crd,
    dense_kd,
    dkd,
    fcos,
    fitnet,
    hidden_mse,
    kd,
    logit_mse,
    minilm,
    pkt,
    rkd,
    token_kd,
)
from tinykd.losses.base import LOSSES, LossTerm, Outputs, build_loss_term, register_loss
from tinykd.losses.kd import kd_loss

__all__ = ["LOSSES", "LossTerm", "Outputs", "build_loss_term", "kd_loss", "register_loss"]
