"""The FCOS detectors of the zoo, FCOS's loss term and the decoding of dense outputs into boxes."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

import tinykd
from tinykd.errors import TinykdError
from tinykd.losses import build_loss_term
from tinykd.losses.fcos import assign, centerness_target
from tinykd.models.detection import decode
from tinykd.models.small_cnn import cnn_tiny


def scenes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` 128x128 images of 1-3 filled rectangles (class 0: wide, class 1: tall) and their padded targets."""
    g = torch.Generator().manual_seed(seed)
    images, targets = torch.zeros(n, 1, 128, 128), torch.full((n, 3, 5), -1.0)
    for i in range(n):
        for j in range(int(torch.randint(1, 4, (1,), generator=g))):
            label = int(torch.randint(0, 2, (1,), generator=g))
            w, h = (40, 20) if label == 0 else (20, 40)
            x, y = (int(v) for v in torch.randint(0, 88, (2,), generator=g))
            if (targets[i, :j, 0] >= 0).any() and (box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float),
                                                           targets[i, :j, 1:]) > 0).any():  # fmt: skip
                continue
            images[i, 0, y : y + h, x : x + w] = 1.0
            targets[i, j] = torch.tensor([label, x, y, x + w, y + h], dtype=torch.float)
    return images, targets


def test_the_zoo_has_student_and_teacher_sized_detectors_with_dense_outputs() -> None:
    tiny, teacher = (tinykd.create_model(n, num_classes=10, in_channels=1) for n in ("fcos_tiny", "fcos_teacher"))
    out = tiny(torch.randn(2, 1, 128, 128))
    assert out.shape == (2, 16 * 16 + 8 * 8, 10 + 5) and len(tiny.locations) == out.shape[1]
    assert (out[..., 10:14] > 0).all()  # distances are positive
    params = [sum(p.numel() for p in m.parameters()) for m in (tiny, teacher)]
    assert params[0] * 5 <= params[1]  # the student: at most a fifth of the teacher
    assert tinykd.create_model("fcos_small", num_classes=3, in_channels=3, image_size=64)(
        torch.randn(1, 3, 64, 64)).shape == (1, 8 * 8 + 4 * 4, 8)  # fmt: skip


def test_each_box_gets_locations_and_the_smaller_box_wins_where_two_overlap() -> None:
    model = tinykd.create_model("fcos_tiny", num_classes=2, in_channels=1)
    targets = torch.tensor([[[0, 10, 10, 50, 30], [1, 20, 12, 36, 28], [-1, 0, 0, 0, 0]]], dtype=torch.float)
    labels, boxes = assign(targets, model.locations, model.strides, model.size_ranges)
    assert labels.shape == (1, 320) and set(labels.unique().tolist()) == {-1, 0, 1}
    inside_small = (model.locations[:, 0] > 20) & (model.locations[:, 0] < 36) & \
        (model.locations[:, 1] > 12) & (model.locations[:, 1] < 28) & (labels[0] >= 0)  # fmt: skip
    assert inside_small.any() and (labels[0, inside_small] == 1).all()  # inside both: the smaller one
    assert (boxes[0, labels[0] < 0] == 0).all()
    assert (centerness_target(model.locations, boxes)[0, labels[0] >= 0] > 0).all()
    _, many = scenes(16)
    labels, boxes = assign(many, model.locations, model.strides, model.size_ranges)
    found = sum(len({tuple(b) for b in bx[lb >= 0].tolist()}) for bx, lb in zip(boxes, labels, strict=True))
    assert found == (many[..., 0] >= 0).sum()  # every real box has at least one location


def test_decoding_a_perfect_prediction_gives_back_the_boxes() -> None:
    model = tinykd.create_model("fcos_tiny", num_classes=2, in_channels=1)
    _, targets = scenes(4, seed=1)
    labels, boxes = assign(targets, model.locations, model.strides, model.size_ranges)
    dense = torch.full((4, 320, 7), -10.0)
    positive = labels >= 0
    dense[..., :2] = torch.where(torch.nn.functional.one_hot(labels.clamp(min=0), 2).bool() & positive[..., None],
                                 10.0, -10.0)  # fmt: skip
    xy = model.locations.expand(4, -1, -1)
    dense[..., 2:6] = torch.where(positive[..., None], torch.cat([xy - boxes[..., :2], boxes[..., 2:] - xy], -1), 1.0)
    dense[..., 6] = torch.where(positive, 10.0, -10.0)
    for found, target in zip(decode(dense, model.locations, 2, image_size=128), targets, strict=True):
        real = target[target[:, 0] >= 0]
        assert len(found["boxes"]) == len(real)
        iou = box_iou(found["boxes"], real[:, 1:])
        assert (iou.max(1).values > 0.99).all() and (found["labels"] == real[iou.argmax(1), 0].long()).all()


def test_the_fcos_term_trains_a_tiny_detector() -> None:
    torch.manual_seed(0)
    model = tinykd.create_model("fcos_tiny", num_classes=2, in_channels=1)
    term = build_loss_term("fcos", {})
    term.bind(torch.nn.Sequential(model), None)  # found inside a wrapper, as DDP or a distiller hands it over
    images, targets = scenes(32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        index = torch.arange(8) + 8 * (step % 4)
        loss = term(tinykd.losses.Outputs(logits=model(images[index])), None, targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses
    with pytest.raises(ValueError, match="for detectors with dense outputs"):
        term.bind(cnn_tiny(), None)
    with pytest.raises(TinykdError, match="loss term 'fcos'"):
        build_loss_term("fcos", {"alpha": 2.0})


def test_coco_map_scores_perfect_and_empty_detections() -> None:
    import numpy as np

    from tinykd.tasks.detection import coco_map

    truth = {"true_boxes": np.array([[10, 10, 40, 30], [50, 50, 90, 100]], np.float32),
             "true_labels": np.array([0, 1])}  # fmt: skip
    perfect = {**truth, "boxes": truth["true_boxes"], "scores": np.array([0.9, 0.8]), "labels": truth["true_labels"]}
    scores = coco_map([perfect])
    assert scores["map"] == pytest.approx(1.0) and scores["ap_per_class"] == pytest.approx({0: 1.0, 1: 1.0})
    # moved 12 px right: IoU 0.43 (class 0: matched at no threshold) and 0.54 (class 1: at 0.50 only, 1 of 10)
    shifted = coco_map([{**perfect, "boxes": truth["true_boxes"] + np.array([12, 0, 12, 0], np.float32)}])
    assert shifted["map"] == pytest.approx(0.05) and shifted["map_50"] == pytest.approx(0.5)
    none = {**truth, "boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    assert coco_map([none]) == {"map": 0.0, "map_50": 0.0, "count": 1}


def test_a_detector_trains_on_a_coco_folder_and_reports_map(tmp_path) -> None:
    """tinykd train on fmnist-detect's COCO folders (made from the fake Fashion-MNIST): the detection task, the
    fcos term, mAP picking the best checkpoint, and the report's columns."""
    import json

    from conftest import make_fake_fashion_mnist
    from tinykd.data.fmnist_detect import make_fmnist_detect
    from tinykd.recipes import load_recipe
    from tinykd.run import run

    fmnist = make_fake_fashion_mnist(tmp_path / "fmnist", n_train=200, n_test=50)
    make_fmnist_detect(tmp_path / "fd", train=48, test=16, root=str(fmnist))
    recipe = load_recipe({"name": "det", "seed": 0, "model": {"name": "fcos_tiny"}, "loss_terms": {"fcos": {}},
                          "data": {"name": "coco", "root": str(tmp_path / "fd"), "task": "detection",
                                   "batch_size": 8, "eval_batch_size": 8, "val_size": 12, "image_size": 64},
                          "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}},
                          "runtime": {"threads": 1}, "measure": {"enabled": False}})  # fmt: skip
    result = run(recipe, tmp_path / "run", mode="train")
    row = result.metrics["models"][0]
    assert 0.0 <= row["test_map"] <= 1.0 and 0.0 <= row["test_map_50"] <= 1.0 and row["test_map_50"] >= row["test_map"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 2 and all("val_map" in r for r in epochs)
    assert "mAP@[.5:.95]" in (tmp_path / "run" / "report.md").read_text()
    # the same detector as a teacher: a smaller student distilled from it with FCOS's loss, dense KD and box KD
    student = load_recipe({**recipe.model_dump(mode="json", exclude={"model"}), "name": "det-kd",
                           "teacher": {"name": "fcos_tiny", "checkpoint": str(tmp_path / "run")},
                           "student": {"name": "fcos_tiny"}, "loss_terms": {"fcos": {}, "dense_kd": {"weight": 1.0},
                                                                           "box_kd": {"weight": 0.5}}})  # fmt: skip
    distilled = run(student, tmp_path / "kd", mode="distill")
    roles = {r["role"]: r for r in distilled.metrics["models"]}
    assert roles["teacher"]["test_map"] == pytest.approx(row["test_map"])  # the teacher scored as it trained
    assert 0.0 <= roles["student"]["test_map"] <= 1.0
    log = (tmp_path / "kd" / "metrics.jsonl").read_text()
    assert '"loss/dense_kd"' in log and '"loss/box_kd"' in log


def test_dense_and_box_kd_are_zero_for_the_teacher_itself_and_pull_a_student() -> None:
    from tinykd.forward_pass import Outputs

    torch.manual_seed(0)
    teacher, student = (tinykd.create_model(n, num_classes=2, in_channels=1) for n in ("fcos_small", "fcos_tiny"))
    images, targets = scenes(4)
    with torch.no_grad():
        t = Outputs(logits=teacher(images))
    for name, params in (("dense_kd", {"temperature": 2.0}), ("box_kd", {"threshold": 0.0})):
        term = build_loss_term(name, params)
        term.bind(student, teacher)
        assert float(term(t, t, targets)) == pytest.approx(0.0, abs=1e-5)
        s = Outputs(logits=student(images))
        loss = term(s, t, targets)
        loss.backward()
        pulled = student.cls_logits if name == "dense_kd" else student.box_distances  # what each term trains
        assert float(loss.detach()) > 0 and pulled.weight.grad is not None and pulled.weight.grad.abs().sum() > 0
        student.zero_grad()
    with pytest.raises(ValueError, match="different numbers of classes"):
        build_loss_term("dense_kd", {}).bind(student, tinykd.create_model("fcos_tiny", num_classes=3, in_channels=1))
