"""Datasets by name, reproducible splits, the batch contract and the loader."""

from tinykd.data.datasets import DATASETS, DataBundle, build_datasets
from tinykd.data.loader import (
    Batch,
    BatchDataset,
    BatchSubset,
    EpochShuffle,
    Indexed,
    PadToMultiple,
    WithIndex,
    collate_batched,
    fetch_batch,
    make_loader,
    seeded_generator,
)
from tinykd.data.tensors import Augment, TensorImageDataset
from tinykd.data.text import TextDataset, TextOptions, train_wordpiece

__all__ = ["DATASETS", "Augment", "Batch", "BatchDataset", "BatchSubset", "DataBundle", "EpochShuffle",
           "Indexed", "PadToMultiple", "TensorImageDataset", "TextDataset", "TextOptions", "WithIndex",
           "build_datasets", "collate_batched", "fetch_batch", "make_loader", "seeded_generator",
           "train_wordpiece"]  # fmt: skip
