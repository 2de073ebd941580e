"""CRD: contrastive representation distillation.

Tian, Krishnan, Isola, "Contrastive Representation Distillation" (ICLR 2020), as in the authors' RepDistiller
and mdistiller. Student and teacher embeddings are each projected by a learned linear head to `feat_dim` and
L2-normalized. Two memory banks hold one vector per training sample: the student's and the teacher's recent
projected embeddings, updated with momentum (m = momentum * m + (1 - momentum) * new, renormalized). For each
sample, the positive is its own entry of the other model's bank and `negatives` entries of other samples are
the noise; with scores exp(<v, m> / temperature) / Z (Z fixed from the first batch, as the authors do), the
NCE loss is
    - [ log(P_pos / (P_pos + K/N)) + sum_neg log((K/N) / (P_neg + K/N)) ], batch mean,
once with the student's embedding against the teacher's bank and once the other way round, summed.

Defaults are the paper's and mdistiller's: feat_dim 128, 16,384 negatives, temperature 0.07, momentum 0.5, on
the embeddings the classifiers see (mdistiller weights the term 0.8 against CE 1: the recipe's `weight` here).
The negatives are drawn uniformly from the other samples of the training set (the paper's uniform noise;
RepDistiller's "exact" mode also leaves out the sample's class). The banks, the two Z and the projection heads
are the term's state: saved in every checkpoint, restored bit for bit by `--resume`; with several processes
each one's batch is gathered so that every process updates identical banks. The term needs each sample's
index in the training set, which the run gives it (`needs_index`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tinykd.losses.base import EmbeddingTerm, Outputs, flat, register_loss

EPS = 1e-7  # the authors' ContrastLoss epsilon
DENSE_RATIO = 32  # score against the whole bank when it has at most this many times 1 + K rows (see _dots)


def nce_loss(scores: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The authors' ContrastLoss on (B, 1 + K) normalized scores, the positive first."""
    k = scores.shape[1] - 1
    noise = k / num_samples  # K * P_n, P_n = 1/N uniform
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


def gather(x: torch.Tensor) -> torch.Tensor:
    """`x` from every process, concatenated along the first axis (just `x` with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
    dist.all_gather_into_tensor(out, x.contiguous())
    return out


@register_loss("crd")
class ContrastiveRD(EmbeddingTerm):
    """NCE between projected student and teacher embeddings, negatives from momentum memory banks."""

    needs_index = True

    def __init__(self, student: str | None = None, teacher: str | None = None, feat_dim: int = 128,
                 negatives: int = 16384, temperature: float = 0.07, momentum: float = 0.5) -> None:  # fmt: skip
        super().__init__(student, teacher)
        if feat_dim < 1 or negatives < 1:
            raise ValueError(f"feat_dim and negatives must be >= 1, got {feat_dim} and {negatives}")
        if temperature <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"temperature must be > 0 and momentum in [0, 1), got {temperature} and {momentum}")
        self.feat_dim, self.negatives, self.temperature, self.momentum = feat_dim, negatives, temperature, momentum
        self.num_samples = 0  # the training set's size, from bind_dataset
        self.embed_student: nn.Module | None = None
        self.embed_teacher: nn.Module | None = None

    def bind_dataset(self, num_samples: int) -> None:
        if num_samples <= self.negatives:
            raise ValueError(f"{self.negatives} negatives need a training set of more than {self.negatives} "
                             f"samples, and it has {num_samples}; lower negatives")  # fmt: skip
        self.num_samples = num_samples

    def build(self, student: Outputs, teacher: Outputs | None) -> None:
        if not self.num_samples:
            raise ValueError("crd needs the size of the training set (bind_dataset) before the probe batch")
        s, t = self.embeddings(student, teacher)
        d_s, d_t = flat(s).shape[1], flat(t).shape[1]
        self.embed_student, self.embed_teacher = nn.Linear(d_s, self.feat_dim), nn.Linear(d_t, self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)  # the authors' initialization of the banks
        for name in ("bank_student", "bank_teacher"):
            self.register_buffer(name, torch.rand(self.num_samples, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of the student's and the teacher's scores; -1: unset

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor) -> torch.Tensor:
        assert teacher is not None and self.embed_student is not None, "call build() on a probe batch first"
        index = student.index
        if index is None:
            raise ValueError("crd needs the training-set index of every sample; the batch carries none")
        s, t = self.embeddings(student, teacher)
        v_s = F.normalize(self.embed_student(flat(s)), dim=1)
        v_t = F.normalize(self.embed_teacher(flat(t)), dim=1)
        batch = len(index)
        draw = torch.randint(0, self.num_samples - 1, (batch, self.negatives), device=index.device)
        draw = draw + (draw >= index[:, None]).long()  # uniform over the other samples
        rows = torch.cat([index[:, None], draw], dim=1)  # (B, 1 + K), the positive first
        scores_s = torch.exp(self._dots(self.bank_teacher, v_s, rows) / self.temperature)
        scores_t = torch.exp(self._dots(self.bank_student, v_t, rows) / self.temperature)
        with torch.no_grad():  # Z from the first batch, kept as a tensor (no host read)
            first = torch.stack([scores_s.mean(), scores_t.mean()]) * self.num_samples
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        loss = nce_loss(scores_s / self.z[0], self.num_samples) + nce_loss(scores_t / self.z[1], self.num_samples)
        self._update_banks(index, v_s.detach(), v_t.detach())
        return loss

    def _dots(self, bank: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """<bank[rows[b, j]], v[b]> as a (B, 1 + K) tensor. Gathering the (B, 1 + K, D) rows reads and writes B(1 + K)
        vectors at random; when the bank is not much larger than that (CIFAR, Fashion-MNIST: N <= 32 (1 + K)), one
        dense (B, N) product with the whole bank and a gather of its scores is several times faster (8x measured
        on one CPU core, N 55,000, K 4,096, D 128, B 128). Both give the same scores up to rounding."""
        if bank.shape[0] <= DENSE_RATIO * rows.shape[1]:  # a copy: the backward reads the bank after its update
            return (v @ bank.detach().clone().T).gather(1, rows)
        return torch.bmm(bank[rows].detach(), v[:, :, None]).squeeze(2)

    @torch.no_grad()
    def _update_banks(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        if not self.training:
            return
        index, v_s, v_t = gather(index), gather(v_s), gather(v_t)
        for bank, v in ((self.bank_student, v_s), (self.bank_teacher, v_t)):
            mixed = bank[index] * self.momentum + v * (1 - self.momentum)
            bank.index_copy_(0, index, F.normalize(mixed, dim=1))

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, negatives={self.negatives}, temperature={self.temperature}, " \
               f"momentum={self.momentum}, {self.paths_repr()}"  # fmt: skip
