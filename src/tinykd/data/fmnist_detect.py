"""`fmnist-detect`: a detection dataset made here, honestly, from Fashion-MNIST's real images.

No detection dataset can be downloaded on the project's machine, so scenes are composed: 1 to 6 Fashion-MNIST items
pasted at random sizes and places onto a black 128x128 canvas, each with its tight box and class. The train scenes
use only the official train images and the test scenes only the official test images (never mixed). Scene `i` is a
pure function of (seed, split, i): the same scene whatever the number asked for. `write_coco` writes a split as a
COCO folder (`images/*.png` + `annotations.json`), so the same scenes also exercise the COCO reader (`data/coco.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinykd.errors import TinykdError

CANVAS = 128
MAX_ITEMS = 6
SIDES = (20, 56)  # the pasted item's side in pixels, drawn uniformly
MAX_OVERLAP = 0.25  # at most this share of the smaller of two boxes may lie in the other (else placed again)
INK = 16  # pixels brighter than this count as the item (its tight box)
SPLIT_SALT = {"train": 0, "test": 1}


@dataclass
class Scene:
    """One canvas (H, W uint8) with its boxes (N, 4 xyxy pixels, exclusive ends) and class indices (N,)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def _resized(item: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 item at `side` x `side` (Pillow's bilinear: the same bytes on every machine)."""
    from PIL import Image

    return np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))


def _overlap(box: np.ndarray, others: list[np.ndarray]) -> float:
    """The largest share of the smaller box that lies inside the other, over `others`: a small item pasted inside a
    big one would be hidden by it even though their IoU is small."""
    if not others:
        return 0.0
    o = np.stack(others)
    w = np.clip(np.minimum(box[2], o[:, 2]) - np.maximum(box[0], o[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], o[:, 3]) - np.maximum(box[1], o[:, 1]), 0, None)
    inter = w * h
    smaller = np.minimum((box[2] - box[0]) * (box[3] - box[1]), (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1]))
    return float((inter / smaller).max())


def make_scene(images: np.ndarray, labels: np.ndarray, seed: int, split: str, index: int,
               canvas: int = CANVAS) -> Scene:  # fmt: skip
    """Scene `index` of `split`: 1 to MAX_ITEMS items of `images` (N, 28, 28 uint8), drawn from a generator seeded
    by (seed, split, index) alone; items are pasted with max() so that they stay whole where they touch."""
    rng = np.random.default_rng([seed, SPLIT_SALT[split], index])
    image = np.zeros((canvas, canvas), np.uint8)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, MAX_ITEMS + 1))):
        j = int(rng.integers(len(images)))
        item = _resized(images[j], int(rng.integers(SIDES[0], SIDES[1] + 1)))
        rows, cols = np.nonzero(item > INK)
        if not len(rows):
            continue
        tight = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
        for _attempt in range(20):
            x, y = (int(v) for v in rng.integers(0, canvas - item.shape[0] + 1, size=2))
            box = tight + np.array([x, y, x, y], np.float32)
            if _overlap(box, boxes) <= MAX_OVERLAP:
                region = image[y : y + item.shape[0], x : x + item.shape[1]]
                np.maximum(region, item, out=region)
                boxes.append(box)
                classes.append(int(labels[j]))
                break
    return Scene(image, np.stack(boxes).astype(np.float32), np.asarray(classes, np.int64))


def write_coco(folder: Path, scenes: list[Scene], classes: list[str]) -> Path:
    """`folder/images/NNNNNN.png` and `folder/annotations.json` (COCO: bbox as [x, y, width, height], category ids
    from 1); returns the annotation file."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, scene in enumerate(scenes):
        name = f"{i:06d}.png"
        Image.fromarray(scene.image).save(folder / "images" / name)
        height, width = scene.image.shape
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for box, label in zip(scene.boxes.tolist(), scene.labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def make_fmnist_detect(out: str | Path, train: int = 6000, test: int = 1000, seed: int = 0,
                       root: str | None = None) -> dict[str, object]:  # fmt: skip
    """`tinykd make-dataset fmnist-detect`: `out/train` and `out/test` COCO folders of composed scenes, from the
    Fashion-MNIST files tinykd finds (data.root, $TINYKD_DATA or Debian's package). Returns a summary."""
    from tinykd.data.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_OFFICIAL, _locate_fashion_mnist
    from tinykd.data.idx import read_idx

    if train < 1 or test < 1:
        raise TinykdError(f"--train and --test must be at least 1 scene (got {train} and {test})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TinykdError(f"{out} exists and is not empty; choose a new folder (nothing was written)")
    files = _locate_fashion_mnist(root, False)
    summary: dict[str, object] = {"folder": str(out), "seed": seed, "canvas": CANVAS}
    for split, count in (("train", train), ("test", test)):
        images = read_idx(files[f"{split}_images"], FASHION_MNIST_OFFICIAL[f"{split}_images"]).numpy()
        labels = read_idx(files[f"{split}_labels"], FASHION_MNIST_OFFICIAL[f"{split}_labels"]).numpy()
        scenes = [make_scene(images, labels, seed, split, i) for i in range(count)]
        write_coco(out / split, scenes, list(FASHION_MNIST_CLASSES))
        summary[split] = {"images": count, "boxes": int(sum(len(s.labels) for s in scenes))}
    return summary
