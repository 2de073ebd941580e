"""Datasets by name, reproducible splits, the batch contract and the loader."""

from tinykd.data.datasets import DATASETS, DataBundle, build_datasets
from tinykd.data.loader import (
    Batch,
    BatchDataset,
    BatchSubset,
    EpochShuffle,
    PadToMultiple,
    collate_batched,
    fetch_batch,
    make_loader,
)
from tinykd.data.tensors import Augment, TensorImageDataset

__all__ = ["DATASETS", "Augment", "Batch", "BatchDataset", "BatchSubset", "DataBundle", "EpochShuffle",
           "PadToMultiple", "TensorImageDataset", "build_datasets", "collate_batched", "fetch_batch",
           "make_loader"]  # fmt: skip
