"""Datasets: the IDX reader, where Fashion-MNIST is looked for, reproducible splits, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_fake_fashion_mnist, write_idx
from tinykd.data import Augment, build_datasets
from tinykd.data.idx import read_idx
from tinykd.engine import make_loader
from tinykd.errors import TinykdError


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if compress else "x")
    write_idx(path, array, compress)
    assert torch.equal(read_idx(path), torch.from_numpy(array))


def test_idx_rejects_bad_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"hello world")
    with pytest.raises(TinykdError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "ok", np.zeros((4, 4), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-3])
    with pytest.raises(TinykdError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_root_and_env(tmp_path: Path, fake_fmnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=0.1)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1080, 120, 300)
    assert bundle.num_classes == 10 and bundle.in_channels == 1 and bundle.classes[0] == "T-shirt/top"
    monkeypatch.setenv("TINYKD_DATA", str(fake_fmnist))
    assert len(build_datasets("fashion-mnist", val_size=0).test) == 300


def test_missing_fashion_mnist_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tinykd.data.datasets as datasets

    monkeypatch.setattr(datasets, "fashion_mnist_dirs", lambda root: [tmp_path / "nowhere"])
    with pytest.raises(TinykdError, match=r"not found; looked in .*nowhere.*dataset-fashion-mnist.*download=true"):
        build_datasets("fashion-mnist")


def test_wrong_files_are_refused(tmp_path: Path) -> None:
    folder = make_fake_fashion_mnist(tmp_path / "f", 20, 10)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(TinykdError, match=r"expected \(N, 28, 28\)"):
        build_datasets("fashion-mnist", root=str(folder))


def test_splits_are_reproducible_disjoint_and_seeded(fake_fmnist: Path) -> None:
    a = build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=100, seed=1)
    b = build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=100, seed=1)
    c = build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=100, seed=2)
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    assert a.val.indices != c.val.indices
    assert not set(a.train.indices) & set(a.val.indices)
    assert len(build_datasets("fashion-mnist", root=str(fake_fmnist), train_subset=50).train) == 50


def test_bad_split_sizes(fake_fmnist: Path) -> None:
    with pytest.raises(TinykdError, match="val_size"):
        build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=5000)
    with pytest.raises(TinykdError, match="train_subset"):
        build_datasets("fashion-mnist", root=str(fake_fmnist), train_subset=10**6)


def test_digits_and_loader_batches() -> None:
    bundle = build_datasets("digits", val_size=0.1)
    assert bundle.image_size == 8 and bundle.num_classes == 10
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797
    x, y = next(iter(make_loader(bundle.train, 32, train=True)))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (32,)
    assert abs(float(x.mean())) < 1.0  # normalised


def test_training_loader_drops_the_last_partial_batch() -> None:
    bundle = build_datasets("digits", val_size=0)
    sizes = {len(y) for _, y in make_loader(bundle.train, 100, train=True)}
    assert sizes == {100}
    assert sum(len(y) for _, y in make_loader(bundle.test, 100, train=False)) == len(bundle.test)


def test_augment_keeps_shape_and_changes_images() -> None:
    images = torch.arange(4 * 28 * 28, dtype=torch.float32).reshape(4, 1, 28, 28)
    out = Augment(pad=2, hflip=True)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(TinykdError, match=r"unknown dataset 'fashion_mnist' \(did you mean: fashion-mnist\?\)"):
        build_datasets("fashion_mnist")


def test_imagefolder(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), colour).save(folder / f"{i}.png")
    bundle = build_datasets("imagefolder", root=str(tmp_path), val_size=0, image_size=32)
    assert bundle.classes == ["cat", "dog"] and bundle.in_channels == 3
    x, y = next(iter(make_loader(bundle.test, 6, train=False)))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(TinykdError, match="must hold train/"):
        build_datasets("imagefolder", root=str(tmp_path / "train"))


def test_evaluation_sets_are_padded_to_whole_batches_and_padding_is_not_counted() -> None:
    from tinykd.data import PadToMultiple

    bundle = build_datasets("digits", val_size=0)
    padded = PadToMultiple(bundle.test, 64)
    assert len(padded) % 64 == 0 and len(padded) - len(bundle.test) < 64
    shapes = {tuple(x.shape) for x, _ in make_loader(padded, 64, train=False)}
    assert shapes == {(64, 1, 8, 8)}
    labels = torch.cat([y for _, y in make_loader(padded, 64, train=False)])
    assert int((labels == -1).sum()) == len(padded) - len(bundle.test)
    assert torch.equal(labels[: len(bundle.test)], torch.cat([y for _, y in make_loader(bundle.test, 64, False)]))
