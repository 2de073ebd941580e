"""Datasets by name: fashion-mnist, digits, cifar10, cifar100, imagefolder; text, sst2 and hf:DATASET[/CONFIG].

Each builder returns the *full* training set (augmented view builder included)
and the test set; `build_datasets` then cuts a validation split from the
training set with a seeded permutation, so the same seed gives the same split
on every machine. Text is read and tokenized in `text.py`; here is only where its files are.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tinykd.data.bundle import DataBundle
from tinykd.data.idx import OfficialIdx, read_idx
from tinykd.data.loader import BatchSubset
from tinykd.data.tables import load_hf, read_table
from tinykd.data.tensors import Augment, TensorImageDataset
from tinykd.data.text import TextOptions, TextSplits, check_options, text_splits
from tinykd.data.text_augment import show_swaps, word_swaps
from tinykd.errors import TinykdError
from tinykd.registry import Registry

TEXT_DATASETS = ("text", "sst2")  # and every hub dataset (hf:NAME)


def is_text_dataset(name: str) -> bool:
    """Whether the dataset `name` is texts (tokenized for Hugging Face models) rather than images."""
    return name in TEXT_DATASETS or name.startswith("hf:")


TEXT_ONLY = {  # settings that mean something for texts only: what each does, for the error an image run gets
    "text_augment": "swaps words of texts",
    "label_names": "names the classes of text labels (images' come with the dataset, or from imagefolder's folders)",
}


def check_text_settings(name: str, **settings: Any) -> None:
    """Text-only data settings (`TEXT_ONLY`) given for an image dataset: one line naming the first."""
    if is_text_dataset(name):
        return
    for key, value in settings.items():
        if value is not None:
            raise TinykdError(f"data.{key} {TEXT_ONLY[key]}; data.name {name} is images: remove it")


@dataclass
class RawSplits:
    """What a builder returns: a training set (with and without augmentation) and a test set."""

    train: Dataset
    train_eval: Dataset  # the same images without augmentation, for the validation split
    test: Dataset
    classes: list[str]
    in_channels: int  # 0 for text
    image_size: int  # 0 for text
    skipped: list[str] = field(default_factory=list)  # files left out as unreadable: "path (reason)"
    tokenizer: Any = None  # text: the tokenizer the datasets were tokenized with
    task: Any = None  # text: the task the data was made for (TextOptions.task; the pipeline sets it for images)
    max_length: int | None = None  # text: tokens per sequence, at most


DATASETS: Registry[Callable[..., RawSplits]] = Registry("dataset")


def build_datasets(
    name: str,
    root: str | None = None,
    download: bool = False,
    augment: bool = True,
    val_size: float = 0.1,
    train_subset: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    bad_images: str = "error",
    text: TextOptions | None = None,
) -> DataBundle:
    """Build a dataset by name and split off `val_size` (a fraction, or a count if >= 1) for validation.

    `bad_images` goes to the builders that read files one by one (imagefolder), `text` to the text builders;
    the others have no use for them. `hf:DATASET[/CONFIG]` is a text dataset from the Hugging Face hub.
    """
    text = text or TextOptions()
    if name.startswith("hf:"):
        raw = hf_text(name.removeprefix("hf:"), download, text)
    else:
        builder = DATASETS.get(name)
        params = inspect.signature(builder).parameters
        options = {key: value for key, value in (("bad_images", bad_images), ("text", text)) if key in params}
        raw = builder(root=root, download=download, augment=augment, image_size=image_size, **options)
    n = len(raw.train)
    n_val = round(val_size * n) if val_size < 1 else int(val_size)
    if not 0 <= n_val < n:
        raise TinykdError(f"data.val_size={val_size} leaves no training samples out of {n}; use a fraction below 1")
    if hasattr(raw.train, "seed"):
        raw.train.seed = seed  # augmentation, masking: a function of (seed, batch indices); see TensorImageDataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset is not None:
        if not 0 < train_subset <= len(train_idx):
            raise TinykdError(f"data.train_subset={train_subset} must be between 1 and {len(train_idx)}")
        train_idx = train_idx[:train_subset]
    return DataBundle(
        train=BatchSubset(raw.train, train_idx),
        val=BatchSubset(raw.train_eval, val_idx) if n_val else None,
        test=raw.test,
        classes=raw.classes,
        in_channels=raw.in_channels,
        image_size=raw.image_size,
        skipped=raw.skipped,
        tokenizer=raw.tokenizer,
        task=raw.task,
        max_length=raw.max_length,
    )


# --- Fashion-MNIST -----------------------------------------------------------------------------------------------

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]  # fmt: skip
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
_FASHION_MNIST_REMEDY = "re-install dataset-fashion-mnist or delete it and download again"
# Size and sha256 of the *decompressed* IDX files, measured on Debian's dataset-fashion-mnist (its .gz files are
# re-compressed, so hashes of the .gz would differ from upstream's; the decompressed content does not).
FASHION_MNIST_OFFICIAL = {
    key: OfficialIdx("Fashion-MNIST", shape, size, sha256, _FASHION_MNIST_REMEDY)
    for key, (shape, size, sha256) in {
        "train_images": ((60000, 28, 28), 47_040_016,
                         "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train_labels": ((60000,), 60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "test_images": ((10000, 28, 28), 7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "test_labels": ((10000,), 10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    }.items()
}


def fashion_mnist_dirs(root: str | None) -> list[Path]:
    """Where to look: the recipe's path alone if it gives one; else $TINYKD_DATA, Debian's package, the cache."""
    if root:
        return [Path(root), Path(root) / "fashion-mnist"]
    dirs = []
    if os.environ.get("TINYKD_DATA"):
        data = Path(os.environ["TINYKD_DATA"])
        dirs += [data / "fashion-mnist", data]
    dirs += [Path("/usr/share/datasets/fashion-mnist"), _cache_dir() / "fashion-mnist"]
    return dirs


def _check_online(what: str) -> None:
    """`TINYKD_OFFLINE=1` forbids downloads (air-gapped machines, tests)."""
    if os.environ.get("TINYKD_OFFLINE", "") not in ("", "0"):
        raise TinykdError(f"{what} would be downloaded, but TINYKD_OFFLINE is set; put the files in data.root")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinykd"


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate_fashion_mnist(root: str | None, download: bool) -> dict[str, Path]:
    dirs = fashion_mnist_dirs(root)
    for directory in dirs:
        found = {key: _find_file(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if download:
        _check_online("Fashion-MNIST")
        target = Path(root) if root else _cache_dir() / "fashion-mnist"
        target.mkdir(parents=True, exist_ok=True)
        for stem in FASHION_MNIST_FILES.values():
            try:
                urllib.request.urlretrieve(FASHION_MNIST_URL + stem + ".gz", target / f"{stem}.gz.part")
            except OSError as exc:
                raise TinykdError(f"could not download Fashion-MNIST from {FASHION_MNIST_URL}: {exc}") from None
            (target / f"{stem}.gz.part").rename(target / f"{stem}.gz")
        return {key: target / f"{stem}.gz" for key, stem in FASHION_MNIST_FILES.items()}
    raise TinykdError(
        "Fashion-MNIST files not found; looked in "
        + ", ".join(str(d) for d in dirs)
        + "; install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "set data.root or $TINYKD_DATA to a folder with the four IDX files, or set data.download=true"
    )


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: str | None, download: bool, augment: bool, image_size: int | None) -> RawSplits:
    """Zalando's Fashion-MNIST: 60k/10k grey 28x28 images, 10 classes. Augmentation: crop (pad 2) and flip."""
    files = _locate_fashion_mnist(root, download)
    tensors = {key: read_idx(path, FASHION_MNIST_OFFICIAL[key]) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != torch.uint8:
            raise TinykdError(
                f"{images_path} holds {images.dtype} {tuple(images.shape)}; expected (N, 28, 28) uint8: "
                "it is not a Fashion-MNIST image file"
            )
        if labels.ndim != 1 or labels.dtype != torch.uint8:
            raise TinykdError(
                f"{labels_path} holds {labels.dtype} {tuple(labels.shape)}; expected (N,) uint8: "
                "it is not a Fashion-MNIST label file"
            )
        if len(labels) != len(images):
            raise TinykdError(
                f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images; "
                "they must agree: use the image and label files of the same release"
            )
        if len(labels) and int(labels.max()) > 9:
            raise TinykdError(
                f"{labels_path} holds labels up to {int(labels.max())}; Fashion-MNIST labels are 0..9: "
                f"the file is corrupt or not a Fashion-MNIST label file; {_FASHION_MNIST_REMEDY}"
            )
    aug = Augment(pad=2, hflip=True) if augment else None

    def make(split: str, augmentation: Augment | None) -> TensorImageDataset:
        images = tensors[f"{split}_images"].unsqueeze(1)
        return TensorImageDataset(images, tensors[f"{split}_labels"], FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                  augmentation, FASHION_MNIST_CLASSES)  # fmt: skip

    return RawSplits(make("train", aug), make("train", None), make("test", None), FASHION_MNIST_CLASSES, 1, 28)


# --- scikit-learn's digits ---------------------------------------------------------------------------------------


@DATASETS.register("digits")
def digits(root: str | None, download: bool, augment: bool, image_size: int | None) -> RawSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); a fixed 20% test split (seed 0)."""
    pixels, target = _digits_arrays()
    images = torch.from_numpy((pixels.reshape(-1, 8, 8) * 255.0 / 16.0).round()).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = len(labels) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]
    classes = [str(i) for i in range(10)]
    mean, std = (0.3,), (0.4,)
    full = TensorImageDataset(images, labels, mean, std, None, classes)
    aug = Augment(pad=1) if augment else None
    return RawSplits(full.subset(train_idx, aug), full.subset(train_idx), full.subset(test_idx), classes, 1, 8)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The pixels (0..16) and labels of scikit-learn's `digits.csv.gz`, read from its package folder: importing
    scikit-learn (`load_digits`) costs seconds in every process, reading its 1,797 rows a few milliseconds."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise TinykdError("the digits dataset comes with scikit-learn; install it: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


# --- CIFAR -------------------------------------------------------------------------------------------------------

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(name: str, root: str | None, download: bool, augment: bool) -> RawSplits:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    directory = Path(root or os.environ.get("TINYKD_DATA", _cache_dir()))
    if download and not (directory / cls.base_folder).is_dir():
        _check_online(name)
    try:
        train = cls(str(directory), train=True, download=download)
        test = cls(str(directory), train=False, download=download)
    except RuntimeError as exc:
        raise TinykdError(
            f"{name} not found in {directory} ({exc}); put torchvision's "
            f"{cls.base_folder} folder there (data.root or $TINYKD_DATA), or set data.download=true"
        ) from None
    mean, std = CIFAR_STATS[name]

    def make(ds, augmentation: Augment | None) -> TensorImageDataset:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return TensorImageDataset(images, torch.tensor(ds.targets), mean, std, augmentation, list(ds.classes))

    aug = Augment(pad=4, hflip=True) if augment else None
    return RawSplits(make(train, aug), make(train, None), make(test, None), list(train.classes), 3, 32)


@DATASETS.register("cifar10")
def cifar10(root: str | None, download: bool, augment: bool, image_size: int | None) -> RawSplits:
    """CIFAR-10 in torchvision's on-disk format. Augmentation: crop (pad 4) and flip."""
    return _cifar("cifar10", root, download, augment)


@DATASETS.register("cifar100")
def cifar100(root: str | None, download: bool, augment: bool, image_size: int | None) -> RawSplits:
    """CIFAR-100 in torchvision's on-disk format. Augmentation: crop (pad 4) and flip."""
    return _cifar("cifar100", root, download, augment)


# --- any folder of class sub-folders -----------------------------------------------------------------------------


@DATASETS.register("imagefolder")
def imagefolder(root: str | None, download: bool, augment: bool, image_size: int | None,
                bad_images: str = "error") -> RawSplits:  # fmt: skip
    """`root/train/<class>/*` and `root/test/<class>/*` (or `val/`), any format Pillow reads, as RGB; ImageNet
    statistics. Every file is checked before training (`data.bad_images`: error or skip; see `data/images.py`).

    Augmentation: random resized crop and flip; evaluation: resize and centre crop to `image_size` (default 224).
    """
    from torchvision.transforms import v2

    from tinykd.data.images import ImageFileDataset, class_folders, scan_split

    if not root:
        raise TinykdError("dataset 'imagefolder' needs data.root: a folder with train/ and test/ (or val/) sub-folders")
    base = Path(root)
    test_dir = next((base / d for d in ("test", "val") if (base / d).is_dir()), None)
    if not (base / "train").is_dir() or test_dir is None:
        raise TinykdError(f"imagefolder root {base} must hold train/ and test/ (or val/) folders of class sub-folders")
    classes = class_folders(base / "train")
    unknown = sorted(set(class_folders(test_dir)) - set(classes))
    if unknown:
        raise TinykdError(f"imagefolder: {test_dir} has class folder(s) {', '.join(unknown)} that train/ lacks; "
                          f"the classes are the folders of {base / 'train'}")  # fmt: skip
    train_files = scan_split(base / "train", classes, bad_images)
    test_files = scan_split(test_dir, classes, bad_images, every_class=False)
    size = image_size or 224
    norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406),
                                                                              (0.229, 0.224, 0.225))]  # fmt: skip
    train_tf = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if augment else []
    eval_tf = [v2.Resize(int(size * 8 / 7), antialias=True), v2.CenterCrop(size)]
    train = ImageFileDataset(train_files, v2.Compose((train_tf or eval_tf) + norm))
    return RawSplits(train, ImageFileDataset(train_files, v2.Compose(eval_tf + norm)),
                     ImageFileDataset(test_files, v2.Compose(eval_tf + norm)), classes, 3, size,
                     skipped=train_files.skipped + test_files.skipped)  # fmt: skip


# --- text --------------------------------------------------------------------------------------------------------

SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
SST2_FILES = ("train.tsv", "dev.tsv")
SST2_CLASSES = ["negative", "positive"]


def _text_raw(splits: TextSplits, options: TextOptions) -> RawSplits:
    """The training set is its own evaluation view (masked-lm masks both alike), unless `data.text_augment` swaps
    words in training batches: the validation split then reads the original texts."""
    train = splits.train
    if options.augment is not None:
        encoded = train.encoded
        train = copy.copy(train)
        train.swaps = word_swaps(options.augment, encoded.ids, encoded.offsets, encoded.type_ids, splits.tokenizer,
                                 _cache_dir() / "text-augment")  # fmt: skip
        if os.environ.get("RANK", "0") == "0":
            show_swaps(splits.train, train)
    return RawSplits(train, splits.train, splits.test, splits.classes, 0, 0, tokenizer=splits.tokenizer,
                     task=options.task, max_length=options.max_length)  # fmt: skip


@DATASETS.register("text")
def text_files(root: str | None, download: bool, augment: bool, image_size: int | None,
               text: TextOptions | None = None) -> RawSplits:  # fmt: skip
    """`data.train` and `data.test`: csv, tsv, jsonl/json or parquet files with a text column and a label column."""
    text = text or TextOptions()
    if not text.train or not text.test:
        raise TinykdError("dataset 'text' needs data.train and data.test: csv, tsv, jsonl or parquet files with a "
                          "text column and a label column")  # fmt: skip
    splits = text_splits(read_table(text.train), read_table(text.test), text, text.train, text.test)
    return _text_raw(splits, text)


def sst2_dirs(root: str | None) -> list[Path]:
    """Where SST-2 is looked for: the recipe's root alone if it gives one, else $TINYKD_DATA/sst2, else the cache
    (each also with GLUE's own SST-2/ sub-folder, as the zip unpacks)."""
    if root:
        bases = [Path(root)]
    elif os.environ.get("TINYKD_DATA"):
        bases = [Path(os.environ["TINYKD_DATA"]) / "sst2"]
    else:
        bases = [_cache_dir() / "sst2"]
    return [d for base in bases for d in (base, base / "SST-2")]


def sst2_train_file(root: str | None = None) -> Path:
    """SST-2's training texts (train.tsv), where `sst2_dirs` finds them."""
    return _locate_sst2(root, download=False) / "train.tsv"


def _locate_sst2(root: str | None, download: bool) -> Path:
    dirs = sst2_dirs(root)
    for directory in dirs:
        if all((directory / f).is_file() for f in SST2_FILES):
            return directory
    if download:
        _check_online("SST-2")
        target = dirs[0]
        target.mkdir(parents=True, exist_ok=True)
        archive = target / "SST-2.zip.part"
        try:
            urllib.request.urlretrieve(SST2_URL, archive)
            with zipfile.ZipFile(archive) as zf:
                for name in SST2_FILES:
                    with zf.open(f"SST-2/{name}") as src, open(target / f"{name}.part", "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            raise TinykdError(f"could not download SST-2 from {SST2_URL}: {type(exc).__name__}: {exc}") from None
        finally:
            archive.unlink(missing_ok=True)
        for name in SST2_FILES:
            (target / f"{name}.part").rename(target / name)
        return target
    raise TinykdError(
        "SST-2 files (train.tsv, dev.tsv) not found; looked in " + ", ".join(str(d) for d in dirs)
        + f"; unzip GLUE's SST-2 ({SST2_URL}) into data.root or $TINYKD_DATA/sst2, or set data.download=true"
    )  # fmt: skip


@DATASETS.register("sst2")
def sst2(root: str | None, download: bool, augment: bool, image_size: int | None,
         text: TextOptions | None = None) -> RawSplits:  # fmt: skip
    """GLUE's SST-2: 67,349 training sentences, positive or negative; the test split is GLUE's dev.tsv (872), since
    GLUE's test.tsv has no labels."""
    text = text or TextOptions()
    folder = _locate_sst2(root, download)
    options = replace(text, text_column=text.text_column or "sentence")
    train, test = (str(folder / name) for name in SST2_FILES)
    splits = text_splits(read_table(train), read_table(test), options, train, test, SST2_CLASSES)
    return _text_raw(splits, options)


def hf_text(spec: str, download: bool, text: TextOptions) -> RawSplits:
    """`hf:DATASET[/CONFIG]`: a text dataset from the Hugging Face hub (its ClassLabel names are the classes)."""
    check_options(text)  # the task first: which split holds labels depends on it
    assert text.task is not None
    train, test, names, train_name, test_name = load_hf(spec, download, text.label_column, text.task.needs_labels)
    return _text_raw(text_splits(train, test, text, train_name, test_name, names), text)


@DATASETS.register("coco")
def coco(root: str | None, download: bool, augment: bool, image_size: int | None,
         bad_images: str = "error") -> RawSplits:  # fmt: skip
    """COCO detection folders `root/train/` and `root/test/` (annotations.json + images/), with `data.task:
    detection`; every box checked on load (`data.bad_images: skip` leaves bad ones out). See data/coco.py."""
    from tinykd.data.coco import coco_splits

    train, train_eval, test, classes, channels, size, skipped = coco_splits(root, augment, image_size, bad_images)
    return RawSplits(train, train_eval, test, classes, channels, size, skipped=skipped)
