"""From datasets to batches: the batch contract, subsets, padding, the epoch sampler and the loader.

A dataset either returns one sample at a time (torchvision's folders, a user's own dataset) or is a
`BatchDataset`, which makes a whole batch in one call (the in-memory image sets: augmentation as a few
tensor operations per batch). The loader accepts both, and everything tinykd wraps around a dataset
(`BatchSubset`, `PadToMultiple`) is a `BatchDataset` that returns a `Batch`, whatever it wraps. So there
is one explicit contract, `get_batch(indices) -> Batch`, and no guess from an attribute: torch's own
`Subset.__getitems__` returns a list of samples or a batch depending on what it wraps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


class Batch(NamedTuple):
    """A whole batch: the inputs (a tensor, or a dict of tensors) and the targets."""

    inputs: Any
    targets: torch.Tensor


class BatchDataset(Dataset):
    """A dataset that makes whole batches: subclasses implement `get_batch(indices) -> Batch`.

    The DataLoader asks for batches through `__getitems__`, PyTorch's hook for batched fetching.
    """

    def get_batch(self, indices: Sequence[int]) -> Batch:
        raise NotImplementedError

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.get_batch(indices)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        inputs, targets = self.get_batch([index])
        first = {k: v[0] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[0]
        return first, targets[0]


def fetch_batch(dataset: Dataset, indices: Sequence[int]) -> Batch:
    """A batch from any dataset: in one call from a `BatchDataset`, else sample by sample, collated."""
    if isinstance(dataset, BatchDataset):
        return dataset.get_batch(indices)
    inputs, targets = default_collate([dataset[i] for i in indices])
    return Batch(inputs, torch.as_tensor(targets))


class BatchSubset(BatchDataset):
    """The samples of `dataset` at `indices` (as torch's `Subset`), always served as whole batches."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def get_batch(self, indices: Sequence[int]) -> Batch:
        return fetch_batch(self.dataset, [self.indices[i] for i in indices])


class PadToMultiple(BatchDataset):
    """Pad a dataset to a multiple of the batch size with copies of its first sample labelled -1.

    Every evaluation batch then has the same shape, so an XLA device compiles the evaluation step once instead
    of once more for the last, smaller batch. Label -1 marks the padding, which metrics ignore.
    """

    IGNORE = -1

    def __init__(self, dataset: Dataset, multiple: int) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.padded = -(-self.size // multiple) * multiple if self.size else 0

    def __len__(self) -> int:
        return self.padded

    def get_batch(self, indices: Sequence[int]) -> Batch:
        inputs, targets = fetch_batch(self.dataset, [i if i < self.size else 0 for i in indices])
        pad = torch.tensor([i >= self.size for i in indices])
        return Batch(inputs, torch.where(pad, torch.full_like(targets, self.IGNORE), targets))


def collate_batched(batch: Batch | list[Any]) -> tuple[Any, torch.Tensor]:
    """A `Batch` from a `BatchDataset` as it is; a list of samples collated as usual.

    Module-level so that loader workers can pickle it.
    """
    if isinstance(batch, Batch):
        return batch.inputs, batch.targets
    return default_collate(batch)


class EpochShuffle(Sampler[int]):
    """A new permutation each epoch from (seed, epoch) alone: the same order on every device and process.

    torch's RandomSampler draws from a generator that Accelerate re-seeds or synchronises differently per
    backend (the CPU and XLA paths gave different orders for one seed); this sampler has no hidden state but
    `epoch` and `start` (how far into the epoch's order to begin, once), which a resumed run sets.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        start, self.start = self.start, 0
        self.epoch += 1
        return iter(order[start:].tolist())


def make_loader(
    dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Training loaders shuffle (seeded) and drop the last partial batch, so every step has the same shape."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(len(dataset), seed) if train else None,  # type: ignore[arg-type]
        drop_last=train,
        num_workers=num_workers,
        collate_fn=collate_batched,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
