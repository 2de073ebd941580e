"""Resume checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one folder, `checkpoints/resume/step-00001234/`:

    train_state.safetensors   the trained module (student and adapters), the optimizer's tensors and the
                              running statistics; its metadata (JSON) holds the position in the data, the
                              optimizer's groups, the loss scaler, the best score and the history
    rng-rank0.safetensors     each process's random number generators (python, numpy, torch, cuda or xla)
    manifest.json             the size and sha256 of each file: a changed or rotten byte is found on load

Only tensors and JSON are stored (safetensors), so loading never runs code. A folder is written under
a `.tmp` name, every file flushed to disk, then renamed: a folder without that suffix is complete, and a
kill at any moment leaves either the previous checkpoint or the new one. The newest `keep` are kept.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinykd.errors import TinykdError
from tinykd.models.checkpoint import fsync_path, read_tensors, write_tensors

STATE_FILE = "train_state.safetensors"
MANIFEST = "manifest.json"
FORMAT = 1
_NAME = re.compile(r"^step-(\d{8,})$")


@dataclass
class Checkpoint:
    """A loaded resume checkpoint: tensors by name and the JSON metadata, plus this process's RNG states."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_meta: dict[str, Any] = field(default_factory=dict)

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under `prefix.` with the prefix removed (e.g. the module's state dict)."""
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


# --- writing -------------------------------------------------------------------------------------------------


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    rank: int,
    is_main: bool,
    barrier: Callable[[], None],
    keep: int,
) -> Path:
    """Write a checkpoint folder atomically (every process writes its RNG file) and keep the newest `keep`.

    Called by every process; `tensors` and `meta` matter on the main one only. Raises `TinykdError` when the
    disk refuses (full, read-only), after removing the partial folder; the previous checkpoints stay.
    """
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    error: str | None = None
    try:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        rng_tensors, rng_meta = capture_rng()
        write_tensors(rng_tensors, tmp / f"rng-rank{rank}.safetensors", rng_meta)
        if is_main:
            write_tensors(tensors, tmp / STATE_FILE, {"format": FORMAT, **meta})
    except OSError as exc:
        error = f"{exc.strerror or exc}"
    barrier()
    if is_main and error is None:
        try:  # hashed from the disk: other processes wrote their own files
            files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
            fsync_path(tmp / MANIFEST)
            fsync_path(tmp)
            if final.exists():  # the same step saved before (a resumed run passing it again): replace it
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_path(root)
        except OSError as exc:
            error = f"{exc.strerror or exc}"
    if error is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_complete(root)
        where = f"the last complete checkpoint is {previous}" if previous else "no complete checkpoint was written yet"
        raise TinykdError(f"could not write checkpoint {final}: {error}; {where} (free space, then --resume the run)")
    if is_main:
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


# --- reading -------------------------------------------------------------------------------------------------


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first (a `.tmp` folder is a write that never finished)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def remove_partial_writes(root: Path) -> list[Path]:
    """Delete `.tmp` folders and files left by a write that was killed; they are never checkpoints."""
    leftovers = [p for p in root.iterdir() if p.name.endswith(".tmp")] if root.is_dir() else []
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return leftovers


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = read_tensors(path)
    if not meta:
        raise TinykdError(f"{path} has no tinykd metadata: it was not written by tinykd")
    return tensors, meta


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(path: Path) -> None:
    """Every file the manifest lists is there, with its size and sha256: nothing truncated, rotten or edited."""
    try:
        listed = json.loads((path / MANIFEST).read_text())["files"]
        expected = {str(name): (int(v["bytes"]), str(v["sha256"])) for name, v in listed.items()}
    except FileNotFoundError:
        raise TinykdError(f"{path} has no {MANIFEST}: it is not a complete tinykd checkpoint") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TinykdError(f"{path / MANIFEST} is unreadable or malformed ({type(exc).__name__}: {exc})") from None
    for name, (size, sha) in expected.items():
        file = path / name
        if not file.is_file() or "/" in name or name.startswith("."):
            raise TinykdError(f"{file} is missing from checkpoint {path}")
        if file.stat().st_size != size:
            raise TinykdError(f"{file} has {file.stat().st_size} bytes, {size} were written: truncated or changed")
        if _sha256(file) != sha:
            raise TinykdError(f"{file} is corrupt or was changed after it was written (sha256 differs)")


def load_checkpoint(path: Path, rank: int) -> Checkpoint:
    """Read one checkpoint folder for process `rank`; a missing, truncated or foreign file names itself."""
    verify_manifest(path)
    tensors, meta = _read(path / STATE_FILE)
    if meta.get("format") != FORMAT:
        raise TinykdError(f"{path / STATE_FILE} has checkpoint format {meta.get('format')}; this tinykd reads {FORMAT}")
    rng_tensors, rng_meta = _read(path / f"rng-rank{rank}.safetensors")
    return Checkpoint(path, tensors, meta, rng_tensors, rng_meta)


def load_latest(root: Path, rank: int, warn: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint that reads back whole; a damaged newer one is reported and passed over."""
    for path in reversed(complete_checkpoints(root)):
        try:
            return load_checkpoint(path, rank)
        except TinykdError as exc:
            warn(f"skipping damaged checkpoint: {exc}")
    return None


# --- what goes in ---------------------------------------------------------------------------------------------


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as tensors (`optimizer.<param>.<key>`) and JSON (groups, scalar entries)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator a training step may draw from, in this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    meta: dict[str, Any] = {"python": _jsonable(random.getstate()), "numpy": [kind, pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    if "torch_xla" in sys.modules:
        import torch_xla.core.xla_model as xm

        meta["xla"] = int(xm.get_rng_state())
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = sorted((int(k.split(".")[1]), v) for k, v in tensors.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda])
    if "xla" in meta and "torch_xla" in sys.modules:
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(meta["xla"])


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value
