"""In-memory image datasets with augmentation done a whole batch at a time.

Small benchmark sets (Fashion-MNIST, digits, CIFAR) fit in memory as uint8.
They are `BatchDataset`s: the DataLoader asks for a whole batch at once, so
flipping, cropping and normalising run as a few tensor operations per batch
instead of a Python call per image: on 2 CPU cores that keeps the loader off
the critical path.

The augmentation of a batch is a pure function of (dataset seed, batch indices),
never of a global or per-worker RNG: see `TensorImageDataset`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tinykd.data.loader import Batch, BatchDataset, tensor_digest


@dataclass(frozen=True)
class Augment:
    """Standard light augmentation: a random crop after zero padding, and a horizontal flip."""

    pad: int = 0
    hflip: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = images.shape
        if self.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.pad:
            padded = torch.nn.functional.pad(images, (self.pad,) * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).tolist()
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator).tolist()
            crops = [padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx, strict=True))]
            images = torch.stack(crops)
        return images


class TensorImageDataset(BatchDataset):
    """uint8 images (N, C, H, W) and int64 labels; returns normalised float32 images.

    A batch's augmentation is drawn from a generator seeded by a hash of `seed` and the batch's indices, not
    from torch's global RNG: with loader workers that RNG lives in the worker processes and cannot be saved,
    so a run resumed mid-epoch would see different crops and flips. Keyed on the indices, the same sampler
    order gives the same batches with 0 or N workers, and after a resume.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Augment | None = None,
        classes: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255.0
        self.augment = augment
        self.classes = classes or [str(i) for i in range(int(self.labels.max()) + 1)]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self.images[index].float()
        if self.augment is not None:
            images = self.augment(images, generator=self.batch_generator(index))
        return Batch((images - self.mean) / self.std, self.labels[index])

    def content_digest(self) -> str:
        return tensor_digest(self.images, self.labels, self.mean, self.std, self.augment, self.seed)

    def batch_generator(self, index: torch.Tensor) -> torch.Generator:
        """A generator seeded by blake2b(seed, indices as little-endian int64): the same batch, the same draws."""
        h = hashlib.blake2b(digest_size=8)
        h.update(self.seed.to_bytes(16, "little", signed=True))
        h.update(index.numpy().astype("<i8", copy=False).tobytes())
        return torch.Generator().manual_seed(int.from_bytes(h.digest(), "little"))

    def subset(self, indices: torch.Tensor, augment: Augment | None = None) -> TensorImageDataset:
        """A view on some rows (copied), with its own augmentation: train and val come from one file."""
        return TensorImageDataset(self.images[indices], self.labels[indices], tuple(self._mean()), tuple(self._std()),
                                  augment, self.classes, self.seed)  # fmt: skip

    def _mean(self) -> list[float]:
        return (self.mean.flatten() / 255.0).tolist()

    def _std(self) -> list[float]:
        return (self.std.flatten() / 255.0).tolist()
