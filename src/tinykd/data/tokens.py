"""Token ids of many texts kept compactly, and padded into batches.

A leaf module: `text.py` (the datasets) and `text_augment.py` (the word swaps, which `text.py` uses) both need
these, and neither may import the other's way round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Encoded:
    """Token ids of many samples, compactly: one flat int32 array, sample i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None = None  # token_type_ids in the same layout (int8), for sentence pairs

    def __len__(self) -> int:
        return len(self.offsets) - 1


def pad_samples(encoded: Encoded, index: torch.Tensor, width: int | None,
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The samples `index` right-padded to `width` (None: the longest of them): (ids, attention mask)."""
    offsets, ids = encoded.offsets, encoded.ids
    starts, ends = offsets[index.numpy()], offsets[index.numpy() + 1]
    width = width or max(1, int((ends - starts).max(initial=0)))
    out = torch.full((len(index), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(index), width), dtype=torch.int64)
    for row, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        out[row, : end - start] = torch.from_numpy(ids[start:end])
        mask[row, : end - start] = 1
    return out, mask
