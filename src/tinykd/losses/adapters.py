"""Adapters: small learned maps from a student feature to the teacher's shape.

Sized from the shapes seen on a probe batch, so the user never states channel
counts. They are trained with the student and saved beside it, and dropped
when the student is exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_adapter(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """1x1 conv + BN for maps (N, C, H, W); a linear layer for vectors (N, D) or sequences (N, L, D)."""
    if len(student_shape) != len(teacher_shape):
        raise ValueError(f"cannot adapt a feature of shape {tuple(student_shape)} to {tuple(teacher_shape)}")
    if len(student_shape) == 4:
        return nn.Sequential(
            nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False), nn.BatchNorm2d(teacher_shape[1])
        )
    if len(student_shape) in (2, 3):
        return nn.Linear(student_shape[-1], teacher_shape[-1])
    raise ValueError(f"no adapter for features of rank {len(student_shape)} (shape {tuple(student_shape)})")


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps down to the smaller's height and width."""
    if a.ndim != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)
