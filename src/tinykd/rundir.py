"""The run folder: made, checked and resumed in one place, for `run`, `prune` and the demo.

    recipe.yaml          the resolved recipe (defaults included)
    metrics.jsonl        one JSON object per log interval and per epoch
    checkpoints/         best.safetensors and last.safetensors: the student alone
    checkpoints/resume/  the newest full training states (`--resume RUN` continues from the last one)
    report.json, report.md   test accuracy and measurements, teacher beside student

tinykd never writes into a non-empty folder unless asked, checks that the disk can hold what a run will write
before it starts, and resumes only a run of the same recipe.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from torch import nn

from tinykd.errors import TinykdError
from tinykd.recipes import Recipe, load_recipe


@dataclass
class RunResult:
    """What a run produced: its folder and its headline numbers."""

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the trained student, best checkpoint loaded

    @property
    def student_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.safetensors"


def prepare_run_dir(
    out: str | Path | None, name: str, overwrite: bool = False, dry_run: bool = False, needed_bytes: int = 0
) -> Path:
    """Make the run folder; refuse a non-empty one unless `overwrite`; check that it is writable, and that its disk
    has `needed_bytes` free, before training.

    With `dry_run`, only check: nothing is created or removed.
    """
    run_dir = Path(out) if out else Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and not run_dir.is_dir():
        raise TinykdError(f"run folder {run_dir} exists and is a file; choose another --out")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if occupied and not overwrite:
        raise TinykdError(
            f"run folder {run_dir} already exists and is not empty; choose another --out or pass --overwrite"
        )
    check_free_space(run_dir, needed_bytes)  # before anything is removed
    if occupied and not dry_run:
        shutil.rmtree(run_dir)
    if dry_run:
        existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise TinykdError(f"cannot write to run folder {run_dir}: {existing} is not writable")
        return run_dir
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as exc:
        raise TinykdError(f"cannot write to run folder {run_dir}: {exc.strerror or exc}") from None
    return run_dir


# What may differ when a run is resumed: where and how fast it runs, not what it computes.
RESUME_MAY_CHANGE = ("runtime", "measure", "data.root", "data.download", "data.num_workers", "train.log_every",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.max_skipped_steps")  # fmt: skip


def run_recipe_file(run_dir: str | Path) -> Path:
    """The recipe a run folder was started with; a folder that is not a run says so."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        what = "does not exist" if not Path(run_dir).exists() else "is not a tinykd run folder (no recipe.yaml)"
        raise TinykdError(f"cannot resume {run_dir}: it {what}")
    return path


def check_resume_dir(
    resume: str | Path, recipe: Recipe, out: str | Path | None, overwrite: bool, needed_bytes: int = 0
) -> Path:
    """The run folder to continue: it must be a tinykd run of the same recipe, unfinished, writable, with room."""
    run_dir = Path(resume)
    if overwrite:
        raise TinykdError("--resume continues a run and --overwrite starts it again; give one of them")
    if out is not None and Path(out).absolute() != run_dir.absolute():
        raise TinykdError(f"--resume writes into the run's own folder {run_dir}; drop --out {out}")
    saved_file = run_recipe_file(run_dir)
    if (run_dir / "report.json").is_file():
        raise TinykdError(f"{run_dir} already finished (it has report.json): nothing to resume")
    changes = recipe_changes(load_recipe(saved_file), recipe)
    if changes:
        shown = "; ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise TinykdError(f"the recipe differs from the one {run_dir} was started with: {shown}; resume with the "
                          f"same recipe (only {', '.join(RESUME_MAY_CHANGE)} may change)")  # fmt: skip
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise TinykdError(f"cannot write to run folder {run_dir}")
    check_free_space(run_dir, needed_bytes)
    return run_dir


def recipe_changes(saved: Recipe, given: Recipe) -> list[str]:
    """`key: old -> new` for every field that differs, except those a resume may change."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    old, new = flat(saved.model_dump(mode="json")), flat(given.model_dump(mode="json"))
    keys = sorted(set(old) | set(new))
    may_change = [k for k in keys if any(k == a or k.startswith(a + ".") for a in RESUME_MAY_CHANGE)]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k) and k not in may_change]


def check_free_space(run_dir: Path, needed: int) -> None:
    """Refuse to start when the run folder's disk cannot hold the checkpoints the run will write."""
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise TinykdError(
            f"the disk of run folder {run_dir} has {free / 2**20:.1f} MiB free, but this run's checkpoints need "
            f"about {needed / 2**20:.1f} MiB; free space or choose another --out"
        )


def checkpoint_bytes(task: nn.Module, student: nn.Module, recipe: Recipe) -> int:
    """About what a run writes: `keep` resume states (weights + optimizer slots), best and last, and logs."""
    weights = sum(t.numel() * t.element_size() for t in task.state_dict().values())
    student_bytes = sum(t.numel() * t.element_size() for t in student.state_dict().values())
    opt = recipe.train.optimizer
    slots = 2 if opt.name == "adamw" else int(opt.momentum > 0)
    return recipe.train.keep_checkpoints * weights * (1 + slots) + 2 * student_bytes + 4 * 2**20
