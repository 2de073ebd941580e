"""PKT: probabilistic knowledge transfer.

Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer" (ECCV 2018). Each
model's embeddings define, for every sample i, a conditional distribution over the other samples of the batch
from a cosine-similarity kernel: K_ij = (cos(e_i, e_j) + 1) / 2, p_j|i = K_ij / sum_j K_ij. The student matches
the teacher's distributions by KL(teacher || student), averaged over all (i, j) entries as in the authors' code
(and mdistiller's). The kernel is B x B, so the widths are free; the teacher's side carries no gradient.

Defaults are the authors' and mdistiller's (eps 1e-7; mdistiller weights the term 30000 against CE 1, which
is the recipe's `weight` here), on the embedding the classifier sees unless module paths are given.
"""

from __future__ import annotations

import torch

from tinykd.losses.base import EmbeddingTerm, Outputs, flat, register_loss


def _conditional(e: torch.Tensor, eps: float) -> torch.Tensor:
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    e = torch.nan_to_num(e)  # the authors' `x[x != x] = 0`
    k = (e @ e.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """mean over (i, j) of p_t * log((p_t + eps) / (p_s + eps)) for (B, D_s) and (B, D_t) embeddings."""
    p_s, p_t = _conditional(flat(student), eps), _conditional(flat(teacher).detach(), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_loss("pkt")
class ProbabilisticKT(EmbeddingTerm):
    """KL between the teacher's and the student's cosine-kernel distributions over the batch."""

    def __init__(self, student: str | None = None, teacher: str | None = None, eps: float = 1e-7) -> None:
        super().__init__(student, teacher)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        return pkt_loss(*self.embeddings(student, teacher), self.eps)

    def extra_repr(self) -> str:
        return self.paths_repr()
