"""A user's own images: `root/train/<class>/...` and `root/test/<class>/...` (or `val/`), checked before training.

Every file in a class folder is decoded once before the run starts, so that a corrupt or non-image file is one
line naming it (or, with `data.bad_images: skip`, left out and counted), never a crash in the middle of an
epoch. Images may be PNG, JPEG or anything Pillow reads, RGB, grayscale or with alpha; all are read as RGB.
Classes are the sub-folders of `train/`; a test folder may lack some of them, but not add new ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tinykd.errors import TinykdError

# What operating systems leave in folders: never an image, never worth an error.
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass
class ImageFiles:
    """The images of one split: (path, class index) pairs, and the files left out with the reason."""

    samples: list[tuple[Path, int]]
    skipped: list[str] = field(default_factory=list)  # "path: reason"


class ImageFileDataset(Dataset):
    """(transformed RGB image, class index) per file; decoding was checked before training by `scan_split`."""

    def __init__(self, files: ImageFiles, transform: Callable[[Any], Any]) -> None:
        self.samples = files.samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            image = open_rgb(path)
        except Exception as exc:  # changed on disk since the check
            raise TinykdError(f"image {path} can no longer be read ({_reason(exc)}); it was readable when the run "
                              "started") from None  # fmt: skip
        return self.transform(image), label


def open_rgb(path: Path, size: int | None = None) -> Any:
    """Decode an image file as RGB (grayscale, palette and alpha images converted). `size`: a hint that lets a
    JPEG decode at reduced scale, enough to check that it decodes."""
    from PIL import Image

    with Image.open(path) as img:
        if size is not None:
            img.draft("RGB", (size, size))
        return img.convert("RGB")


def class_folders(split: Path) -> list[str]:
    """The class names of a split: its visible sub-folders, sorted (as torchvision's ImageFolder does)."""
    names = sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        files = sum(1 for p in split.iterdir() if p.is_file())
        raise TinykdError(f"imagefolder {split} has no class folders ({files} files directly in it); put each "
                          f"class's images in {split}/<class>/")  # fmt: skip
    return names


def scan_split(split: Path, classes: list[str], bad_images: str = "error", every_class: bool = True,
               workers: int | None = None) -> ImageFiles:  # fmt: skip
    """Every file under `split/<class>/` for the given classes, each decoded once; unreadable ones per `bad_images`.

    `error`: the first unreadable file is a one-line error. `skip`: unreadable files are left out and listed.
    Files the operating system leaves (.DS_Store, Thumbs.db, ._* resource forks) and hidden folders are ignored.
    With `every_class` (the training split), a class without a readable image is an error.
    """
    candidates: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = split / name
        if not folder.is_dir():
            continue  # a test split may lack a class
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            candidates += [(Path(dirpath) / f, label) for f in sorted(filenames)
                           if f not in SYSTEM_FILES and not f.startswith("._")]  # fmt: skip
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:  # decoding frees the GIL
        problems = list(pool.map(_problem, (path for path, _ in candidates)))
    bad = [f"{path} ({problem})" for (path, _), problem in zip(candidates, problems, strict=True) if problem]
    if bad and bad_images == "error":
        more = f" (and {len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
        raise TinykdError(f"imagefolder: {bad[0]} is not a readable image{more}; remove or fix it, or set "
                          "data.bad_images=skip to leave unreadable files out")  # fmt: skip
    samples = [pair for pair, problem in zip(candidates, problems, strict=True) if not problem]
    found = {label for _, label in samples}
    if not samples:
        raise TinykdError(f"imagefolder {split} holds no readable images")
    empty = [name for label, name in enumerate(classes) if label not in found]
    if every_class and empty:
        raise TinykdError(f"imagefolder {split}: class folder(s) {', '.join(empty)} hold no readable image; every "
                          "class needs training images (or remove the folder)")  # fmt: skip
    return ImageFiles(samples, bad)


def _problem(path: Path) -> str | None:
    """Why `path` is not a usable image, or None when it decodes."""
    try:
        image = open_rgb(path, size=64)
        if image.width < 1 or image.height < 1:
            return "an image of size 0"
    except Exception as exc:  # Pillow raises many types for a bad file; each is one reason
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:150]}" if text else type(exc).__name__
