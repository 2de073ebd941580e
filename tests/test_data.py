"""Datasets: the IDX reader, where Fashion-MNIST is looked for, reproducible splits, augmentation."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import make_fake_fashion_mnist, write_idx
from tinykd.data import Augment, TensorImageDataset, build_datasets, collate_batched
from tinykd.data.datasets import FASHION_MNIST_FILES, FASHION_MNIST_OFFICIAL
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
    assert int((labels == PadToMultiple.IGNORE).sum()) == len(padded) - len(bundle.test)
    assert torch.equal(labels[: len(bundle.test)], torch.cat([y for _, y in make_loader(bundle.test, 64, False)]))


# --- Fashion-MNIST content verification ---------------------------------------------------------------------------

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_real_fmnist = pytest.mark.skipif(
    not (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist not installed"
)


def test_truncated_gz_is_refused_naming_the_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", np.arange(2000, dtype=np.uint8).reshape(20, 10, 10))
    data = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TinykdError, match=r"cut\.gz is truncated or corrupt \(gzip: .*replace it"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "garbled.gz").write_bytes(data[:12] + bytes(b ^ 0xFF for b in data[12:40]) + data[40:])
    with pytest.raises(TinykdError, match=r"garbled\.gz is truncated or corrupt"):
        read_idx(tmp_path / "garbled.gz")


def test_official_shape_with_other_content_is_refused(tmp_path: Path) -> None:
    """The check is keyed on the header's shape, so it needs no real file: zeros in the official shape."""
    official = FASHION_MNIST_OFFICIAL["test_labels"]
    write_idx(tmp_path / "labels.gz", np.zeros(10000, np.uint8))
    with pytest.raises(TinykdError, match=r"labels\.gz has the official Fashion-MNIST shape but its content differs"
                       r" \(10008 bytes, sha256 [0-9a-f]{12}…, expected 10008 bytes, sha256 0402a96d92fd…\): "
                       r"the file is corrupt; re-install dataset-fashion-mnist"):  # fmt: skip
        read_idx(tmp_path / "labels.gz", official)
    write_idx(tmp_path / "small.gz", np.zeros(9999, np.uint8))  # another shape: structural checks only
    assert read_idx(tmp_path / "small.gz", official).shape == (9999,)


@needs_real_fmnist
def test_real_fashion_mnist_verifies() -> None:
    bundle = build_datasets("fashion-mnist", root=str(REAL_FMNIST), val_size=0, augment=False)
    assert (len(bundle.train), len(bundle.test)) == (60000, 10000)
    for key, stem in FASHION_MNIST_FILES.items():
        with gzip.open(REAL_FMNIST / f"{stem}.gz", "rb") as f:
            assert len(f.read()) == FASHION_MNIST_OFFICIAL[key].size


@needs_real_fmnist
@pytest.mark.parametrize("compress", [False, True])
def test_real_file_with_one_flipped_byte_is_refused(tmp_path: Path, compress: bool) -> None:
    """The 7.8 MB test images, not the 47 MB training images: a flipped pixel passes every structural check."""
    key, stem = "test_images", FASHION_MNIST_FILES["test_images"]
    with gzip.open(REAL_FMNIST / f"{stem}.gz", "rb") as f:
        data = bytearray(f.read())
    data[123_456] ^= 0x01
    path = tmp_path / (f"{stem}.gz" if compress else stem)
    if compress:
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    with pytest.raises(TinykdError, match=rf"{stem}(\.gz)? has the official Fashion-MNIST shape but its content"):
        read_idx(path, FASHION_MNIST_OFFICIAL[key])
    if not compress:  # the loader refuses it too, and names it (the other three files are the real ones)
        for other in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
            (tmp_path / f"{other}.gz").symlink_to(REAL_FMNIST / f"{other}.gz")
        with pytest.raises(TinykdError, match=re.escape(str(path)) + ".*content differs"):
            build_datasets("fashion-mnist", root=str(tmp_path))


def test_out_of_range_labels_are_refused(tmp_path: Path) -> None:
    folder = make_fake_fashion_mnist(tmp_path / "f", 20, 10)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8))
    with pytest.raises(TinykdError, match=r"t10k-labels-idx1-ubyte\.gz holds labels up to 10; .* are 0\.\.9"):
        build_datasets("fashion-mnist", root=str(folder))


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    folder = make_fake_fashion_mnist(tmp_path / "f", 20, 10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(TinykdError, match=r"holds 19 labels but .*train-images-idx3-ubyte\.gz holds 20 images"):
        build_datasets("fashion-mnist", root=str(folder))


# --- augmentation as a function of (seed, indices) ----------------------------------------------------------------


def _augmented(n: int = 64, seed: int = 0) -> TensorImageDataset:
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return TensorImageDataset(images, torch.arange(n) % 10, (0.5,), (0.25,), Augment(pad=2, hflip=True), seed=seed)


def test_same_indices_give_the_same_augmentation_whatever_the_global_rng() -> None:
    ds = _augmented()
    torch.manual_seed(1)
    a, _ = ds.__getitems__([3, 1, 4, 1, 5, 9, 2, 6])
    torch.manual_seed(2)
    b, _ = ds.__getitems__([3, 1, 4, 1, 5, 9, 2, 6])
    assert torch.equal(a, b)
    assert torch.equal(ds.subset(torch.arange(64), ds.augment).__getitems__([3, 1, 4, 1, 5, 9, 2, 6])[0], a)
    plain = TensorImageDataset(ds.images, ds.labels, (0.5,), (0.25,)).__getitems__([3, 1, 4, 1, 5, 9, 2, 6])[0]
    assert not torch.equal(a, plain)  # it did augment


def test_other_indices_or_seed_give_other_augmentation() -> None:
    ds = _augmented()
    a, _ = ds.__getitems__(list(range(32)))
    b, _ = ds.__getitems__(list(range(32, 64)) + list(range(32)))
    assert not torch.equal(a, b[32:])  # the same images in another batch are augmented differently
    assert not torch.equal(a, _augmented(seed=1).__getitems__(list(range(32)))[0])


def test_augmentation_leaves_the_global_rng_alone() -> None:
    ds = _augmented()
    state = torch.get_rng_state()
    ds.__getitems__(list(range(16)))
    ds[5]
    assert torch.equal(torch.get_rng_state(), state)


def test_loader_batches_are_the_same_with_and_without_workers() -> None:
    ds = _augmented(96)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(3)).tolist()

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_size=16, sampler=order, num_workers=workers, collate_fn=collate_batched)
        return [x for x, _ in loader]

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a, b)


def test_build_datasets_seeds_the_training_augmentation(fake_fmnist: Path) -> None:
    a = build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=0, seed=7)
    b = build_datasets("fashion-mnist", root=str(fake_fmnist), val_size=0, seed=8)
    assert a.train.dataset.seed == 7
    assert torch.equal(a.train.__getitems__(list(range(8)))[0], a.train.__getitems__(list(range(8)))[0])
    assert not torch.equal(a.train.__getitems__(list(range(8)))[0], b.train.__getitems__(list(range(8)))[0])
