"""The files a finished run leaves beside its checkpoints: report.md, report.html, predictions.npz and
disagreements.png, and the environment it ran in (for report.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tinykd.engine import Engine
from tinykd.engine.log import describe_breakdown
from tinykd.labels import IGNORE_INDEX
from tinykd.tasks import Task


def environment(engine: Engine) -> dict[str, Any]:
    """Where the run happened, for the report: device, processes, precision and the versions that matter."""
    import os
    import platform
    import sys

    from tinykd.version import __version__

    versions = {"tinykd": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "torchao", "torch_xla", "onnxruntime"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return {"run": engine.describe(), "processes": engine.accelerator.num_processes, "precision": engine.precision,
            "machine": platform.machine(), "cpus": os.cpu_count(), "versions": versions}  # fmt: skip


def write_page(engine: Engine, models: dict[str, Any], data: Any, task: Task, eval_batch_size: int,
               run_dir: Path) -> None:  # fmt: skip
    """report.html, with the predictions it shows per class (classification runs): a failure here is one line,
    the run folder stays as it is."""
    from tinykd.html_report import write_html_report

    try:
        if task.per_sample_predictions:  # one answer per sample: what the page shows per class
            save_predictions(engine, models, data.test, eval_batch_size, run_dir, data.classes)
        write_html_report([run_dir])
    except Exception as exc:  # the run's results are saved already: say what failed, keep going
        print(f"tinykd: report.html not written: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}")


def save_predictions(engine: Engine, models: dict[str, Any], test_set: Any, batch: int, run_dir: Path,
                     classes: list[str] | None = None, grid: int = 16) -> None:  # fmt: skip
    """`predictions.npz` (test labels and each model's top-1) and, for images, `disagreements.png`: up to `grid`
    test images where teacher and student disagree, with both predictions."""
    import numpy as np

    from tinykd.compress.predictors import TorchPredictor

    labels: list[Any] = []
    preds: dict[str, list[Any]] = {role: [] for role in models}
    predictors = {role: TorchPredictor(engine.accelerator.unwrap_model(model), device=engine.device)
                  for role, model in models.items()}  # fmt: skip
    for inputs, targets in engine.loader(test_set, batch, False):
        keep = targets != IGNORE_INDEX  # not the padding of the last batch
        labels.append(targets[keep].numpy())
        for role, predictor in predictors.items():
            preds[role].append(predictor.predict(inputs).argmax(-1).cpu()[keep].numpy())
    saved = {"labels": np.concatenate(labels), **{role: np.concatenate(p) for role, p in preds.items()}}
    np.savez_compressed(run_dir / "predictions.npz", **saved)
    if "teacher" not in saved or "student" not in saved:
        return
    differ = np.flatnonzero(saved["teacher"] != saved["student"])[:grid]
    first = test_set[int(differ[0])][0] if len(differ) else None
    if not isinstance(first, torch.Tensor) or first.dim() != 3:
        return  # text, or nothing to show
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    def name(c: int) -> str:
        return str(classes[c]) if classes and c < len(classes) else str(c)

    cols = min(8, len(differ))
    fig = Figure(figsize=(1.6 * cols, 2.0 * -(-len(differ) // cols)))
    FigureCanvasAgg(fig)
    for k, index in enumerate(differ):
        image = test_set[int(index)][0].float()
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)  # normalised for the eye
        ax = fig.add_subplot(-(-len(differ) // cols), cols, k + 1)
        ax.imshow((image[0] if image.shape[0] == 1 else image[:3].permute(1, 2, 0)).numpy(), cmap="gray")
        ax.set_title(f"{name(int(saved['labels'][index]))}\nT: {name(int(saved['teacher'][index]))}\n"
                     f"S: {name(int(saved['student'][index]))}", fontsize=7)  # fmt: skip
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(run_dir / "disagreements.png", dpi=90)



def run_facts(metrics: dict[str, Any]) -> list[str]:
    """The lines of a training run's report.md above its table."""
    return [
        f"dataset: {metrics['dataset']}; epochs: {metrics['epochs']}; device: {metrics['device']}",
        f"loss = {metrics['loss']}",
        f"best validation accuracy {metrics['best_val_accuracy']:.4f} at epoch {metrics['best_epoch']}",
        f"training {metrics['train_seconds']} s ({metrics['train_samples_per_s']} samples/s); "
        f"whole run {metrics['total_seconds']} s",
        *([describe_breakdown(metrics["time_breakdown"])] if metrics.get("time_breakdown") else []),
    ]
