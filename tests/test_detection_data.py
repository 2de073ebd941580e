"""Detection data: the COCO reader and its checks, the boxes through augmentation, and fmnist-detect's scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_here
from tinykd.data.coco import BoxAugment, DetectionDataset, read_coco, unpad_targets
from tinykd.data.fmnist_detect import make_scene
from tinykd.errors import TinykdError

# boxes as [x, y, width, height] per image; category ids with a gap (COCO's own have many)
BOXES = {1: [(4, 6, 10, 8, 3)], 2: [(0, 0, 5, 5, 7), (20, 10, 12, 20, 3)], 3: []}


def write_folder(folder: Path, size: tuple[int, int] = (40, 32)) -> Path:
    """Three grey images with their boxes drawn as filled white rectangles, and their COCO annotation file."""
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id, boxes in BOXES.items():
        pixels = np.zeros((size[1], size[0]), np.uint8)
        for x, y, w, h, category in boxes:
            pixels[y : y + h, x : x + w] = 255
            annotations.append({"id": 100 + len(annotations), "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        Image.fromarray(pixels).save(folder / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": size[0], "height": size[1]})
    categories = [{"id": 7, "name": "bag"}, {"id": 3, "name": "shoe"}]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_a_coco_folder_reads_as_boxes_and_class_indices(tmp_path: Path) -> None:
    split = read_coco(write_folder(tmp_path))
    assert split.classes == ["shoe", "bag"] and split.category_ids == [3, 7]  # in the order of the ids
    assert [f.name for f in split.files] == ["1.png", "2.png", "3.png"] and split.sizes[0] == (40, 32)
    assert split.boxes[0].tolist() == [[4, 6, 14, 14]] and split.labels[0].tolist() == [0]
    assert split.boxes[1].tolist() == [[0, 0, 5, 5], [20, 10, 32, 30]] and split.labels[1].tolist() == [1, 0]
    assert split.boxes[2].shape == (0, 4) and split.max_boxes == 2 and not split.skipped


BAD = {
    "outside": ({"bbox": [30, 20, 20, 20]}, "box [30, 20, 20, 20] lies outside the 40x32 image"),
    "zero area": ({"bbox": [3, 3, 0, 5]}, "has zero area"),
    "unknown category": ({"category_id": 99}, "category_id 99 is not among the categories [3, 7]"),
    "unknown image": ({"image_id": 42}, "image_id 42 is not among the images"),
    "malformed": ({"bbox": [1, 2, "x", 4]}, "is not [x, y, width, height]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_annotation_is_one_line_naming_it_or_is_skipped_and_counted(tmp_path: Path, case: str) -> None:
    path = write_folder(tmp_path)
    data = json.loads(path.read_text())
    change, message = BAD[case]
    data["annotations"][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(TinykdError) as exc:
        read_coco(path)
    text = str(exc.value)
    assert str(path) in text and "annotation 100" in text and message in text and "\n" not in text
    assert "data.bad_images: skip" in text
    split = read_coco(path, bad="skip")
    assert sum(split.skipped.values()) == 1 and sum(len(b) for b in split.boxes) == 2  # the other two kept


def test_a_missing_or_wrong_sized_image_and_a_broken_file_are_one_line(tmp_path: Path) -> None:
    path = write_folder(tmp_path)
    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(TinykdError, match=r"image 2 \(.*2.png\) is missing"):
        read_coco(path)
    split = read_coco(path, bad="skip")  # the image and its two boxes left out; its annotations count too
    assert len(split.files) == 2 and split.skipped == {"missing image": 1, "unknown image": 2}
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "images" / "2.png")
    with pytest.raises(TinykdError, match=r"is 10x10 but the file says 40x32"):
        read_coco(path)
    path.write_text("{not json")
    with pytest.raises(TinykdError, match="not valid JSON"):
        read_coco(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(TinykdError, match="needs the lists 'images', 'annotations' and 'categories'"):
        read_coco(path)
    with pytest.raises(TinykdError, match="bad_images must be one of error, skip"):
        read_coco(path, bad="ignore")


def test_augmented_boxes_still_frame_their_rectangles(tmp_path: Path) -> None:
    """Over many batches (flips, zooms in and out): every pixel of the drawn rectangles that survives lies inside a
    box, the boxes hold mostly rectangle, and the same indices give the same batch."""
    split = read_coco(write_folder(tmp_path, size=(48, 48)))
    data = DetectionDataset(split, 48, (0.0,), (1 / 255,), augment=BoxAugment(), seed=3)
    plain = DetectionDataset(split, 48, (0.0,), (1 / 255,))
    assert torch.equal(plain.get_batch([1]).targets[0, :, 1:], torch.tensor([[0.0, 0, 5, 5], [20, 10, 32, 30]]))
    for step in range(30):
        batch = data.get_batch([0, 1, 2, step % 3])
        again = data.get_batch([0, 1, 2, step % 3])
        assert torch.equal(batch.inputs, again.inputs) and torch.equal(batch.targets, again.targets)
        for image, target in zip(batch.inputs, unpad_targets(batch.targets), strict=True):
            bright = image[0] > 200
            inside = torch.zeros_like(bright)
            for x1, y1, x2, y2 in target["boxes"].tolist():
                region = image[0, int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
                assert region.numel() and (region > 100).float().mean() > 0.5
                inside[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
            assert not (bright & ~inside).any()  # no rectangle without its box


def test_fmnist_detect_scenes_are_deterministic_and_written_as_coco(
    fake_fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinykd.data.idx import read_idx

    monkeypatch.setenv("TINYKD_DATA", str(fake_fmnist))
    out = tmp_path / "fd"
    proc = run_here("make-dataset", "fmnist-detect", "--out", str(out), "--train", "12", "--test", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train, test = read_coco(out / "train" / "annotations.json"), read_coco(out / "test" / "annotations.json")
    assert len(train.files) == 12 and len(test.files) == 5 and len(train.classes) == 10
    assert all(1 <= len(b) <= 6 for b in train.boxes) and train.sizes[0] == (128, 128)
    # scene i depends on (seed, split, i) only, and the test scenes come from the test images
    test_images = read_idx(next(fake_fmnist.glob("t10k-images*"))).numpy()
    test_labels = read_idx(next(fake_fmnist.glob("t10k-labels*"))).numpy()
    scene = make_scene(test_images, test_labels, 0, "test", 3)
    assert np.array_equal(np.asarray(Image.open(test.files[3])), scene.image)
    assert np.allclose(test.boxes[3], scene.boxes) and np.array_equal(test.labels[3], scene.labels)
    assert not np.array_equal(make_scene(test_images, test_labels, 0, "train", 3).image, scene.image)
    for boxes in train.boxes:  # items overlap little, so each stays visible
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all() and (boxes >= 0).all() and (boxes <= 128).all()
    again = run_here("make-dataset", "fmnist-detect", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "is not empty" in again.stderr and "Traceback" not in again.stderr
    unknown = run_here("make-dataset", "coco", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert unknown.returncode == 2 and "knows fmnist-detect" in unknown.stderr
