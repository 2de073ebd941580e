"""RKD: relational knowledge distillation.

Park et al., "Relational Knowledge Distillation" (CVPR 2019). The student matches the structure of the
batch in the teacher's embedding space rather than the embeddings themselves, so widths are free:
  - distance-wise: the pairwise Euclidean distances, each set divided by its mean over distinct pairs;
  - angle-wise: for every triplet (i, j, k), the cosine of the angle at j between e_i - e_j and e_k - e_j.
  Both compared with the Huber (smooth L1) loss; RKD = distance * L_D + angle * L_A.

Defaults are the paper's and mdistiller's: distance 25, angle 50, non-squared distances (clamped at 1e-12),
on the embedding the classifier sees (the input of the last nn.Linear) unless module paths are given. The
teacher's relations carry no gradient. The mean distance is taken over all off-diagonal pairs, which is
mdistiller's `d[d > 0].mean()` (every off-diagonal distance is clamped above 0) with a static shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinykd.losses.base import EmbeddingTerm, Outputs, flat, register_loss


def pairwise_distances(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(B, B) Euclidean distances of the rows of `e`, clamped at `eps` (squared) and 0 on the diagonal."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _normalized_distances(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    d = pairwise_distances(e, squared, eps)
    n = len(e)
    return d / (d.sum() / max(n * (n - 1), 1))


def _angles(e: torch.Tensor) -> torch.Tensor:
    """(B*B*B,) cosines of the angle at j of every triplet (i, j, k)."""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # diff[j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance: float = 25.0, angle: float = 50.0,
             squared: bool = False, eps: float = 1e-12) -> torch.Tensor:  # fmt: skip
    """distance * Huber(distances) + angle * Huber(angles) between (B, D_s) and (B, D_t) embeddings."""
    s, t = flat(student), flat(teacher).detach()
    loss = s.new_zeros(())
    if distance:
        loss = loss + distance * F.smooth_l1_loss(_normalized_distances(s, squared, eps),
                                                  _normalized_distances(t, squared, eps))  # fmt: skip
    if angle:
        loss = loss + angle * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss


@register_loss("rkd")
class RelationalKD(EmbeddingTerm):
    """`distance` x distance-wise + `angle` x angle-wise relations of the batch's embeddings."""

    def __init__(self, student: str | None = None, teacher: str | None = None, distance: float = 25.0,
                 angle: float = 50.0, squared: bool = False, eps: float = 1e-12) -> None:  # fmt: skip
        super().__init__(student, teacher)
        if distance < 0 or angle < 0 or distance + angle == 0:
            raise ValueError(f"distance and angle must be >= 0 and not both 0, got {distance} and {angle}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.distance, self.angle, self.squared, self.eps = distance, angle, squared, eps

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        return rkd_loss(*self.embeddings(student, teacher), self.distance, self.angle, self.squared, self.eps)

    def extra_repr(self) -> str:
        return f"distance={self.distance}, angle={self.angle}, {self.paths_repr()}"
