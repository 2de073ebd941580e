"""COCO-format detection data, the format every labelling tool exports: an annotation file plus its image folder.

Everything is checked when the split is read, before any training: a box outside its image, a box of zero area,
an unknown category, an annotation of an unknown image, or an image file that is missing or not the size its
entry says is one line naming the annotation file and the annotation (or image) id, with the fix. With
`bad="skip"` (a recipe's `data.bad_images: skip`) such annotations (and images) are left out and counted by reason
instead. Crowd annotations
(`iscrowd: 1`) are regions, not objects: they are left out of training and counted.

Categories become class indices 0..C-1 in the order of their ids (COCO's own ids may have gaps); the names
travel with the split. Boxes are kept as [x1, y1, x2, y2] pixels (COCO writes [x, y, width, height]).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.data.loader import Batch, BatchDataset, seeded_generator, tensor_digest
from tinykd.errors import TinykdError

EDGE_TOLERANCE = 1.0  # pixels a box may pass the image's edge by (float rounding in exporters); it is clipped
BAD_CHOICES = ("error", "skip")


@dataclass
class CocoSplit:
    """One split: image files with their sizes, and per image its boxes (N, 4 xyxy) and class indices (N,)."""

    files: list[Path]
    sizes: list[tuple[int, int]]  # (width, height) as the annotation file says, checked against the file
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    classes: list[str]
    category_ids: list[int]  # COCO's id of each class index (for writing results back in COCO's ids)
    image_ids: list[int]
    skipped: Counter = field(default_factory=Counter)  # reason -> how many annotations (or images) left out

    @property
    def max_boxes(self) -> int:
        return max((len(b) for b in self.boxes), default=0)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TinykdError(f"{path}: no such annotation file; give a COCO .json (images, annotations, categories)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinykdError(f"{path} is not a COCO annotation file: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                        "categories")):  # fmt: skip
        raise TinykdError(f"{path} is not a COCO annotation file: it needs the lists 'images', 'annotations' "
                          "and 'categories'")  # fmt: skip
    return data


def _categories(path: Path, entries: list[Any]) -> tuple[list[int], list[str]]:
    ids, names = [], []
    for entry in sorted(entries, key=lambda e: e.get("id", 0) if isinstance(e, dict) else 0):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or isinstance(entry.get("id"), bool):
            raise TinykdError(f"{path}: category {entry!r} has no integer 'id'")
        if entry["id"] in ids:
            raise TinykdError(f"{path}: category id {entry['id']} appears twice; each category needs its own id")
        ids.append(entry["id"])
        names.append(str(entry.get("name", entry["id"])))
    if not ids:
        raise TinykdError(f"{path}: 'categories' is empty; a detection dataset needs at least one category")
    return ids, names


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, None when it is not an image Pillow reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


class _Problems:
    """Raise the first problem (bad="error"), or count it and go on (bad="skip")."""

    def __init__(self, path: Path, bad: str) -> None:
        self.path, self.bad, self.skipped = path, bad, Counter()

    def __call__(self, reason: str, what: str, fix: str) -> None:
        if self.bad == "error":
            raise TinykdError(f"{self.path}: {what}; {fix}, or set data.bad_images: skip to leave such "
                              "annotations out (they are counted)")  # fmt: skip
        self.skipped[reason] += 1


def read_coco(annotations: str | Path, images: str | Path | None = None, bad: str = "error") -> CocoSplit:
    """The split of `annotations` (a COCO .json) with its images in `images` (default: `images/` beside the file,
    else the file's folder); every box and image checked (see the module's docstring)."""
    if bad not in BAD_CHOICES:
        raise TinykdError(f"data.bad_images must be one of {', '.join(BAD_CHOICES)}, not '{bad}'")
    path = Path(annotations)
    data = _load_json(path)
    root = Path(images) if images is not None else (path.parent / "images" if (path.parent / "images").is_dir()
                                                     else path.parent)  # fmt: skip
    category_ids, classes = _categories(path, data["categories"])
    index_of = {cid: i for i, cid in enumerate(category_ids)}
    problem = _Problems(path, bad)
    entries: dict[int, dict[str, Any]] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or \
                not isinstance(entry.get("file_name"), str):  # fmt: skip
            raise TinykdError(f"{path}: image entry {str(entry)[:80]} needs an integer 'id' and a 'file_name'")
        file = root / entry["file_name"]
        size = _image_size(file) if file.is_file() else None
        if size is None:
            state = "is not an image Pillow reads" if file.is_file() else "is missing"
            problem("missing image", f"image {entry['id']} ({file}) {state}", f"put the file in {root}")
            continue
        said = (entry.get("width"), entry.get("height"))
        if said != (None, None) and tuple(said) != size:
            problem("image size", f"image {entry['id']} ({file}) is {size[0]}x{size[1]} but the file says "
                    f"{said[0]}x{said[1]}", "correct its width and height")  # fmt: skip
            continue
        entries[entry["id"]] = {"file": file, "size": size, "boxes": [], "labels": []}
    for ann in data["annotations"]:
        _add_annotation(ann, entries, index_of, problem)
    kept = sorted(entries)
    return CocoSplit(
        files=[entries[i]["file"] for i in kept], sizes=[entries[i]["size"] for i in kept],
        boxes=[np.asarray(entries[i]["boxes"], np.float32).reshape(-1, 4) for i in kept],
        labels=[np.asarray(entries[i]["labels"], np.int64) for i in kept], classes=classes,
        category_ids=category_ids, image_ids=kept, skipped=problem.skipped,
    )  # fmt: skip


def _add_annotation(ann: Any, entries: dict[int, dict[str, Any]], index_of: dict[int, int],
                    problem: _Problems) -> None:  # fmt: skip
    """Check one annotation and add its box to its image (or report it)."""
    if not isinstance(ann, dict):
        problem("malformed", f"annotation {str(ann)[:60]} is not an object", "remove it")
        return
    aid, image_id = ann.get("id"), ann.get("image_id")
    if ann.get("iscrowd", 0):
        problem.skipped["crowd"] += 1  # a region of many objects: not a box to learn, never an error
        return
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):  # fmt: skip
        problem("malformed box", f"annotation {aid}: bbox {bbox!r} is not [x, y, width, height]",
                "write four finite numbers")  # fmt: skip
        return
    if image_id not in entries:
        problem("unknown image", f"annotation {aid}: image_id {image_id!r} is not among the images (or its file "
                "was left out)", "add the image or fix the id")  # fmt: skip
        return
    if ann.get("category_id") not in index_of:
        problem("unknown category", f"annotation {aid}: category_id {ann.get('category_id')!r} is not among the "
                f"categories {sorted(index_of)}", "add the category or fix the id")  # fmt: skip
        return
    x, y, w, h = (float(v) for v in bbox)
    entry = entries[image_id]
    width, height = entry["size"]
    if w <= 0 or h <= 0:
        problem("zero area", f"annotation {aid} (image {entry['file'].name}): box {bbox} has zero area",
                "give it a positive width and height")  # fmt: skip
        return
    if x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > width + EDGE_TOLERANCE or \
            y + h > height + EDGE_TOLERANCE:  # fmt: skip
        problem("outside the image", f"annotation {aid} (image {entry['file'].name}): box {bbox} lies outside the "
                f"{width}x{height} image", "fix the box")  # fmt: skip
        return
    entry["boxes"].append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
    entry["labels"].append(index_of[ann["category_id"]])


# --- batches -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxAugment:
    """Augmentation that moves the boxes with the pixels: horizontal flip, scale jitter (zoom in or out about a
    random point, the canvas size kept) and nothing else. A box cut to under `keep` of its area is dropped."""

    hflip: bool = True
    scale: tuple[float, float] = (0.75, 1.25)
    keep: float = 0.3

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        _, h, w = image.shape
        draws = torch.rand(4, generator=generator)
        if self.hflip and draws[0] < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        factor = self.scale[0] + float(draws[1]) * (self.scale[1] - self.scale[0])
        if factor != 1.0:
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            scaled = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            # the canvas takes a window of the scaled image (zoom in) or the scaled image at a random place (out)
            dy, dx = round(float(draws[2]) * (size[0] - h)), round(float(draws[3]) * (size[1] - w))
            canvas = torch.zeros_like(image)
            src = scaled[:, max(dy, 0) : max(dy, 0) + h, max(dx, 0) : max(dx, 0) + w]
            canvas[:, max(-dy, 0) : max(-dy, 0) + src.shape[1], max(-dx, 0) : max(-dx, 0) + src.shape[2]] = src
            image = canvas
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * factor**2
            boxes = boxes * factor - torch.tensor([dx, dy, dx, dy], dtype=boxes.dtype)
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                                 boxes[:, 3].clamp(0, h)], 1)  # fmt: skip
            kept = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) >= self.keep * area
            boxes, labels = boxes[kept], labels[kept]
        return image, boxes, labels


class DetectionDataset(BatchDataset):
    """A COCO split as batches of fixed shapes: images resized to `size` x `size` (boxes scaled with them), and
    targets (B, max_boxes, 5) = [class, x1, y1, x2, y2] in pixels of the resized image, padded with class -1.

    Fixed shapes keep compiled graphs (XLA, torch.compile) constant; the padding is what a detection loss skips.
    A batch's augmentation is a pure function of (seed, batch indices), as for every tinykd dataset: a resumed
    run and a teacher cache see the same batches."""

    def __init__(self, split: CocoSplit, size: int, mean: Sequence[float], std: Sequence[float],
                 augment: BoxAugment | None = None, seed: int = 0, max_boxes: int | None = None,
                 channels: int | None = None) -> None:  # fmt: skip
        self.split, self.size, self.augment, self.seed = split, size, augment, seed
        self.max_boxes = max(1, max_boxes if max_boxes is not None else split.max_boxes)
        self.channels = channels or len(mean)
        self.mean = torch.tensor(mean).view(-1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(-1, 1, 1) * 255.0
        self.classes = split.classes

    def __len__(self) -> int:
        return len(self.split.files)

    def image_and_boxes(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image `i` as float 0-255 (C, size, size) with its boxes scaled to that size, before augmentation."""
        from PIL import Image

        with Image.open(self.split.files[i]) as file:
            image = file.convert("L" if self.channels == 1 else "RGB")
            width, height = image.size
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
            pixels = torch.from_numpy(np.asarray(image, np.uint8).copy())
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        scale = torch.tensor([self.size / width, self.size / height] * 2)
        return pixels.float(), torch.from_numpy(self.split.boxes[i]) * scale, torch.from_numpy(self.split.labels[i])

    def get_batch(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.int64)
        generator = seeded_generator(self.seed, index) if self.augment is not None else None
        images, targets = [], torch.full((len(index), self.max_boxes, 5), -1.0)
        for row, i in enumerate(index.tolist()):
            image, boxes, labels = self.image_and_boxes(i)
            if self.augment is not None and generator is not None:
                image, boxes, labels = self.augment(image, boxes, labels, generator)
            count = min(len(labels), self.max_boxes)
            targets[row, :count, 0] = labels[:count].float()
            targets[row, :count, 1:] = boxes[:count]
            images.append((image - self.mean) / self.std)
        return Batch(torch.stack(images), targets)

    def content_digest(self) -> str:
        return tensor_digest([str(f) for f in self.split.files], *self.split.boxes, *self.split.labels, self.size,
                             self.mean, self.std, self.augment, self.seed, self.max_boxes)  # fmt: skip


def unpad_targets(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """(B, M, 5) padded targets -> one {"boxes": (n, 4), "labels": (n,)} per image, torchvision's format."""
    out = []
    for row in targets:
        real = row[:, 0] >= 0
        out.append({"boxes": row[real, 1:], "labels": row[real, 0].long()})
    return out


def coco_splits(root: str | None, augment: bool, image_size: int | None,
                bad_images: str = "error") -> tuple[Any, ...]:  # fmt: skip
    """COCO detection folders: `root/train/annotations.json` with `root/train/images/`, and the same under `test/`
    (what `tinykd make-dataset` writes); with `data.task: detection`. Images are resized to `image_size` (default:
    the first training image's width), grey or RGB as the first training image is; normalised by the mean and std
    of the first 256 training images. Augmentation: BoxAugment (flip, scale jitter). Returns (train, train without
    augmentation, test, classes, channels, image size, what was skipped): the `coco` dataset's RawSplits
    (data/datasets.py)."""
    from PIL import Image

    if not root:
        raise TinykdError("dataset 'coco' needs data.root: a folder with train/ and test/ COCO folders "
                          "(annotations.json + images/), e.g. from tinykd make-dataset fmnist-detect")  # fmt: skip
    splits = {name: read_coco(Path(root) / name / "annotations.json", bad=bad_images) for name in ("train", "test")}
    train, test = splits["train"], splits["test"]
    if test.classes != train.classes:
        raise TinykdError(f"{root}: the test categories {test.classes} are not the training ones {train.classes}")
    if not train.files or not test.files:
        raise TinykdError(f"{root}: a split has no images left to read")
    with Image.open(train.files[0]) as first:
        channels, size = (1 if first.mode in ("L", "I;16", "1") else 3), image_size or first.size[0]
    sample = DetectionDataset(train, size, (0.0,) * channels, (1 / 255,) * channels, channels=channels)
    pixels = torch.stack([sample.image_and_boxes(i)[0] for i in range(min(256, len(train.files)))]) / 255
    mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).clamp(min=1e-3).tolist()
    boxes = max(train.max_boxes, test.max_boxes)

    def make(split: CocoSplit, augmentation: BoxAugment | None) -> DetectionDataset:
        return DetectionDataset(split, size, mean, std, augmentation, max_boxes=boxes, channels=channels)

    skipped = [f"{name}: {count} {reason}" for name, s in splits.items() for reason, count in s.skipped.items()]
    return (make(train, BoxAugment() if augment else None), make(train, None), make(test, None), train.classes,
            channels, size, skipped)  # fmt: skip
