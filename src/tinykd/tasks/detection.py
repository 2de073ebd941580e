"""Detection: boxes and classes per image, scored by COCO's mAP@[.5:.95] (pycocotools, COCO's own evaluator).

The model gives dense outputs (tinykd's fcos_* detectors: `models/detection.py`); its loss is the `fcos` term, not
`ce`. Evaluation decodes each batch (NMS) and keeps the boxes on the host: mAP needs every image's detections at
once, so this task's metrics are computed on the host (`host_metrics`), not summed on the device. pycocotools is
chosen over torchmetrics because torchmetrics' mAP calls it (or a port of it) anyway: the numbers are COCO's own.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torch import nn

from tinykd.errors import TinykdError
from tinykd.tasks.base import TASKS, Task


@TASKS.register("detection")
class Detection(Task):
    name = "detection"
    needs_labels = False
    host_metrics = True
    sum_names = ()
    best_metric = "map"
    report_metrics = ("map", "map_50")

    @property
    def per_sample_predictions(self) -> bool:
        return False

    def step_counts(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """No running accuracy for boxes: the training log shows the loss."""
        return torch.zeros(2, device=logits.device)

    def collect(self, model: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """One batch's detections (after NMS) and true boxes, on the host."""
        from tinykd.data.coco import unpad_targets
        from tinykd.losses.fcos import detection_geometry
        from tinykd.models.detection import decode

        geometry = detection_geometry(model)
        real = ~(targets == self.ignore_index).flatten(1).all(1)  # the copies that pad the last batch are not images
        found = decode(logits.detach()[real], geometry.locations, int(geometry.num_classes),
                       image_size=geometry.geometry.image_size)  # fmt: skip
        truth = unpad_targets(targets.detach()[real].cpu())
        return [{"boxes": f["boxes"].cpu().numpy(), "scores": f["scores"].cpu().numpy(),
                 "labels": f["labels"].cpu().numpy(), "true_boxes": t["boxes"].numpy(),
                 "true_labels": t["labels"].numpy()} for f, t in zip(found, truth, strict=True)]  # fmt: skip

    def metrics_of(self, collected: list[list[dict[str, np.ndarray]]]) -> dict[str, float]:
        images = [image for batch in collected for image in batch]
        return coco_map(images)


def coco_map(images: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """COCO's mAP@[.5:.95], mAP@.5 and per-class AP of detections against the true boxes (xyxy pixels)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise TinykdError("detection metrics need pycocotools: pip install 'tinykd[detection]'") from None
    classes = sorted({int(c) for i in images for c in i["true_labels"]} | {int(c) for i in images for c in i["labels"]})
    gt: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": c + 1} for c in classes]}
    detections = []
    for n, image in enumerate(images, 1):
        gt["images"].append({"id": n})
        for box, label in zip(image["true_boxes"], image["true_labels"], strict=True):
            x, y, w, h = _xywh(box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": n, "category_id": int(label) + 1,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
        for box, score, label in zip(image["boxes"], image["scores"], image["labels"], strict=True):
            detections.append({"image_id": n, "category_id": int(label) + 1, "score": float(score), "bbox": _xywh(box)})
    if not gt["annotations"] or not detections:  # nothing to find, or nothing found: COCOeval has no answer
        return {"map": 0.0, "map_50": 0.0, "count": len(images)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, all areas, 100 detections
    per_class = {}
    for k, c in enumerate(classes):
        values = precision[:, :, k]
        per_class[c] = float(values[values > -1].mean()) if (values > -1).any() else 0.0
    return {"map": float(evaluation.stats[0]), "map_50": float(evaluation.stats[1]), "count": len(images),
            "ap_per_class": per_class}


def _xywh(box: np.ndarray) -> list[float]:
    """[x1, y1, x2, y2] -> COCO's [x, y, width, height]."""
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]
