"""Datasets by name, reproducible splits, fast loaders."""

from tinykd.data.datasets import DATASETS, DataBundle, build_datasets
from tinykd.data.tensors import Augment, PadToMultiple, TensorImageDataset, collate_batched

__all__ = ["DATASETS", "Augment", "DataBundle", "PadToMultiple", "TensorImageDataset", "build_datasets",
           "collate_batched"]  # fmt: skip
