"""From datasets to batches: the batch contract, subsets, padding, the epoch sampler and the loader.

A dataset either returns one sample at a time (torchvision's folders, a user's own dataset) or is a
`BatchDataset`, which makes a whole batch in one call (the in-memory image sets: augmentation as a few
tensor operations per batch). The loader accepts both, and everything tinykd wraps around a dataset
(`BatchSubset`, `PadToMultiple`) is a `BatchDataset` that returns a `Batch`, whatever it wraps. So there
is one explicit contract, `get_batch(indices) -> Batch`, and no guess from an attribute: torch's own
`Subset.__getitems__` returns a list of samples or a batch depending on what it wraps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from tinykd.labels import IGNORE_INDEX


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

    def sample_lengths(self) -> list[int] | None:
        """The size of each sample (tokens, for text), for length bucketing; None: all alike, no bucketing."""
        return None

    def content_digest(self) -> str | None:
        """A digest of everything a batch is made from (samples, labels, augmentation, its seed): two datasets with
        the same digest give the same batch for the same indices. None: this dataset cannot say (a teacher cache
        then refuses it)."""
        return None

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.get_batch(indices)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        inputs, targets = self.get_batch([index])
        first = {k: v[0] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[0]
        return first, targets[0]


def seeded_generator(seed: int, indices: Sequence[int] | torch.Tensor) -> torch.Generator:
    """A generator seeded by blake2b(seed, indices as little-endian int64): the same batch, the same draws.

    Random choices made per batch (augmentation, masking) come from here, not from torch's global RNG, which
    lives in the loader workers and cannot be saved: so a resumed run, with 0 or N workers, sees the same batches.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(seed.to_bytes(16, "little", signed=True))
    h.update(torch.as_tensor(indices, dtype=torch.int64).numpy().astype("<i8", copy=False).tobytes())
    return torch.Generator().manual_seed(int.from_bytes(h.digest(), "little"))


def dataset_lengths(dataset: Dataset) -> list[int] | None:
    """`sample_lengths()` of a `BatchDataset`; None for any other dataset."""
    return dataset.sample_lengths() if isinstance(dataset, BatchDataset) else None


def dataset_digest(dataset: Dataset) -> str | None:
    """`content_digest()` of a `BatchDataset`; None for any other dataset (its batches cannot be vouched for)."""
    return dataset.content_digest() if isinstance(dataset, BatchDataset) else None


def tensor_digest(*parts: object) -> str:
    """sha256 over tensors and arrays (their bytes, dtype and shape) and other values (their repr)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if hasattr(part, "tobytes") and hasattr(part, "dtype"):
            h.update(f"{part.dtype}{tuple(part.shape)}".encode())  # type: ignore[attr-defined]
            h.update(part.tobytes())  # type: ignore[attr-defined]
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


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

    def content_digest(self) -> str | None:
        inner = dataset_digest(self.dataset)
        if inner is None:
            return None
        h = hashlib.sha256(inner.encode())
        h.update(torch.as_tensor(self.indices, dtype=torch.int64).numpy().astype("<i8", copy=False).tobytes())
        return h.hexdigest()

    def sample_lengths(self) -> list[int] | None:
        lengths = dataset_lengths(self.dataset)
        return None if lengths is None else [lengths[i] for i in self.indices]


class Indexed(NamedTuple):
    """A batch's inputs with each sample's position in its dataset (for terms that keep a per-sample memory), and,
    from a teacher cache, the teacher's outputs for this very batch (`teacher`, None when not cached yet) and the
    batch's key in the cache (`key`)."""

    inputs: Any
    index: torch.Tensor
    teacher: dict[str, torch.Tensor] | None = None
    key: int | None = None


class WithIndex(BatchDataset):
    """`dataset`, whose batches' inputs come as `Indexed(inputs, index)` (index: int64 positions in `dataset`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def get_batch(self, indices: Sequence[int]) -> Batch:
        inputs, targets = fetch_batch(self.dataset, indices)
        return Batch(Indexed(inputs, torch.as_tensor(list(indices), dtype=torch.int64)), targets)

    def sample_lengths(self) -> list[int] | None:
        return dataset_lengths(self.dataset)

    def content_digest(self) -> str | None:
        return dataset_digest(self.dataset)


class PadToMultiple(BatchDataset):
    """Pad a dataset to a multiple of the batch size with copies of its first sample, targets set to IGNORE.

    Every evaluation batch then has the same shape, so an XLA device compiles the evaluation step once instead
    of once more for the last, smaller batch. IGNORE (-100, Hugging Face's and cross-entropy's ignore index)
    marks the padding, which metrics ignore; token-level targets (B, T) are ignored on the whole row.
    """

    IGNORE = IGNORE_INDEX  # the one ignore label (tinykd.labels), named here for the padding it marks

    def __init__(self, dataset: Dataset, multiple: int) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.padded = -(-self.size // multiple) * multiple if self.size else 0

    def __len__(self) -> int:
        return self.padded

    def get_batch(self, indices: Sequence[int]) -> Batch:
        inputs, targets = fetch_batch(self.dataset, [i if i < self.size else 0 for i in indices])
        pad = torch.tensor([i >= self.size for i in indices], dtype=torch.bool)
        pad = pad.view(-1, *([1] * (targets.ndim - 1)))  # one flag per sample, over all its target tokens
        return Batch(inputs, torch.where(pad, torch.full_like(targets, self.IGNORE), targets))

    def sample_lengths(self) -> list[int] | None:
        lengths = dataset_lengths(self.dataset)
        return None if lengths is None else [lengths[i if i < self.size else 0] for i in range(self.padded)]


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

    With `lengths` (tokens per sample), samples of similar length are batched together, so dynamically padded
    text batches carry little padding: the epoch's permutation is cut into chunks of `BUCKET_BATCHES` batches,
    each chunk is sorted by length (stable) and cut into batches, and the full batches are shuffled by the same
    generator, the partial one (if any) last, so `drop_last` drops it and every other batch stays whole. Without
    lengths the order is the plain permutation, as it always was.
    """

    BUCKET_BATCHES = 50

    def __init__(self, size: int, seed: int = 0, lengths: Sequence[int] | None = None, batch_size: int = 1) -> None:
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"{len(lengths)} lengths for {size} samples")
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0
        self.lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        if self.lengths is not None:
            order = self._bucketed(order, generator)
        start, self.start = self.start, 0
        self.epoch += 1
        return iter(order[start:].tolist())

    def _bucketed(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        assert self.lengths is not None
        chunk = self.BUCKET_BATCHES * self.batch_size  # a multiple of the batch size: only the last chunk has a rest
        batches: list[torch.Tensor] = []
        rest = order[:0]
        for first in range(0, self.size, chunk):
            part = order[first : first + chunk]
            part = part[torch.sort(self.lengths[part], stable=True).indices]
            whole = len(part) // self.batch_size * self.batch_size
            batches += list(part[:whole].split(self.batch_size))
            rest = part[whole:]
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return torch.cat([*shuffled, rest])


def make_loader(
    dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Training loaders shuffle (seeded) and drop the last partial batch, so every step has the same shape.

    Loaders leave torch's global random generator alone: it belongs to the training step.

    A training set with `sample_lengths()` (text) is bucketed by length: see `EpochShuffle`.
    """
    lengths = dataset_lengths(dataset) if train else None
    return DataLoader(
        dataset,
        # its own generator: starting an epoch's iterator draws a base seed, and drawn from torch's global
        # generator it would shift every random draw of the training step (dropout, CRD's negatives) by one
        # at each epoch start, so a run resumed mid-epoch would not be the run it continues
        generator=torch.Generator().manual_seed(seed),
        batch_size=batch_size,
        sampler=EpochShuffle(len(dataset), seed, lengths, batch_size) if train else None,  # type: ignore[arg-type]
        drop_last=train,
        num_workers=num_workers,
        collate_fn=collate_batched,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
