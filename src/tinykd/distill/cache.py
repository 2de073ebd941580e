"""A teacher cache: the frozen teacher's outputs for every training batch, computed once, read by later runs.

A training batch is a pure function of the dataset, the run's seed and the list of sample indices it holds:
the sampler's order is a function of (seed, epoch), and augmentation of (seed, batch indices). So the teacher's
outputs for a batch are keyed here on a hash of that index list, inside a folder whose manifest pins everything
else: the teacher's weights, the dataset's content (samples, labels, augmentation, seed), the taps the terms read,
and the storage format. A run whose manifest differs is refused in one line, never served stale outputs.

    DIR/manifest.json                  what the cache is valid for
    DIR/shard-r0-000001.safetensors    rows of batches: `keys` (R,), `logits` (R, B, C), `tap.<path>` (R, B, ...)

Formats: `fp32` (exact: a student distilled from it equals the online run bit for bit), `fp16` (half the size),
`topk` (FKD, Shen & Xing 2022: the k largest probabilities at temperature 1 and their classes; the logits are
rebuilt as log-probabilities with the remaining mass spread evenly over the other classes). Taps are stored in
fp32, or fp16 when the format is not fp32.

A run given a cache serves the batches it holds and computes the others with the teacher, adding them (so the
first run of a sweep fills the cache and the next ones never run the teacher); `tinykd cache-teacher` fills it
ahead. Each process writes its own shards, so several ranks can fill one cache. A cache that holds more taps than
a run reads (say, filled for RKD's embeddings, read by a logits-only KD run) serves that run read-only: the
batches it lacks are computed by the teacher and not added, since they would lack the other taps.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from tinykd.data.loader import Batch, BatchDataset, Indexed, dataset_digest, dataset_lengths, fetch_batch
from tinykd.errors import TinykdError

FORMATS = ("fp32", "fp16", "topk")
VERSION = 1
FLUSH_EVERY = 256  # batches held in memory before a shard is written


def batch_key(indices: Sequence[int] | torch.Tensor) -> int:
    """The cache key of a batch: blake2b of its sample indices (little-endian int64), as a signed int64."""
    data = torch.as_tensor(indices, dtype=torch.int64).numpy().astype("<i8", copy=False).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def weights_digest(model: nn.Module) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: any dtype, bf16 included
    return h.hexdigest()


class TeacherCache:
    """The cached teacher outputs of one (teacher, dataset, taps, format): lookup by batch, and new rows to add."""

    def __init__(self, folder: str | Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.format, self.topk = manifest["format"], int(manifest["topk"])
        self.num_classes = int(manifest["num_classes"])
        self._rows: dict[int, tuple[dict[str, torch.Tensor], int]] = {}  # key -> (shard tensors, row)
        self._blocks: dict[tuple, _Block] = {}  # batches not yet written, one block per batch shape
        self.served = self.computed = 0
        self.read_only = False  # holds more taps than this run computes: serve rows, add none
        self._shards = 0
        self._loaded: set[str] = set()

    # --- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, teacher: nn.Module, dataset: Dataset, seed: int, taps: Sequence[str],
             num_classes: int, fmt: str = "fp32", topk: int = 10, precision: str = "fp32") -> TeacherCache:  # fmt: skip
        """Open (or start) the cache in `folder` for this teacher and training set; a mismatch is one line."""
        if fmt not in FORMATS:
            raise TinykdError(f"teacher cache format '{fmt}' is unknown; use one of {', '.join(FORMATS)}")
        if fmt == "topk" and not 1 <= topk < num_classes:
            raise TinykdError(f"teacher.cache_topk must be between 1 and {num_classes - 1} (the classes, or the "
                              f"vocabulary of token logits, less one), got {topk}")  # fmt: skip
        data = dataset_digest(dataset)
        if data is None:
            raise TinykdError(f"teacher.cache: the training set ({type(dataset).__name__}) cannot vouch that its "
                              "batches repeat exactly (only tinykd's in-memory image sets and text do); remove "
                              "teacher.cache")  # fmt: skip
        want = {"version": VERSION, "teacher": weights_digest(teacher), "precision": precision, "data": data,
                "seed": seed, "taps": sorted(taps), "format": fmt, "topk": topk if fmt == "topk" else 0,
                "num_classes": num_classes}  # fmt: skip
        folder = Path(folder)
        path = folder / "manifest.json"
        have = want  # a new cache is made for this run
        if folder.exists() and not folder.is_dir():
            raise TinykdError(f"teacher cache {folder} is a file, not a folder")
        if path.is_file():
            try:
                have = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise TinykdError(f"teacher cache {folder}: manifest.json is unreadable ({exc}); use an empty "
                                  "folder") from None  # fmt: skip
            for field, label in (("version", "cache version"), ("precision", "teacher number format"),
                                 ("teacher", "teacher's weights"),
                                 ("seed", "seed"), ("data", "training set (samples, labels, augmentation)"),
                                 ("taps", "teacher taps"), ("format", "format"), ("topk", "top-k"),
                                 ("num_classes", "number of classes")):  # fmt: skip
                if field == "taps" and _holds(have.get(field), want[field]):
                    continue  # more taps than this run reads: served read-only
                if have.get(field) != want[field]:
                    was, now = _short(have.get(field)), _short(want[field])
                    raise TinykdError(f"teacher cache {folder} was filled for another {label} ({was}, this run: "
                                      f"{now}); give an empty folder or the matching recipe")  # fmt: skip
        elif folder.is_dir() and any(folder.iterdir()):
            raise TinykdError(f"teacher cache {folder} is not empty and has no manifest.json; give an empty folder")
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if _rank() == 0:
                    _atomic_write(path, (json.dumps(want, indent=2) + "\n").encode())
            except OSError as exc:
                raise TinykdError(f"cannot write teacher cache {folder}: {exc.strerror or exc}") from None
        read_only = have["taps"] != want["taps"]  # the cache holds more taps than this run reads
        cache = cls(folder, have if read_only else want)
        cache.read_only = read_only
        cache._load()
        return cache

    def _load(self) -> None:
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard.name in self._loaded:
                continue
            self._loaded.add(shard.name)
            try:
                tensors = load_file(str(shard))
            except Exception as exc:  # a half-written shard from a killed run: its batches are simply missing
                print(f"tinykd: teacher cache: skipping unreadable {shard.name} ({type(exc).__name__})")
                continue
            for row, key in enumerate(tensors.pop("keys").tolist()):
                self._rows[key] = (tensors, row)

    def __len__(self) -> int:
        return len(self._rows)

    def refresh(self) -> int:
        """Read the shards written since the cache was opened (by `tinykd cache-teacher` running beside this run,
        filling later epochs ahead); returns how many batches it added. Called at every epoch start."""
        before = len(self._rows)
        self._load()
        return len(self._rows) - before

    # --- reading ---------------------------------------------------------------------------------------------

    def lookup(self, key: int) -> dict[str, torch.Tensor] | None:
        """The teacher's outputs for the batch with `key`: `logits` (float32, as the teacher gave them, or rebuilt
        from top-k) and `tap.<path>` features; None when this batch is not cached yet."""
        found = self._rows.get(key)
        if found is None:
            return None
        tensors, row = found
        out = {name: t[row].float() for name, t in tensors.items() if name.startswith("tap.")}
        if self.format == "topk":
            out["logits"] = _logits_from_topk(tensors["topk_p"][row].float(), tensors["topk_i"][row].long(),
                                              self.num_classes)  # fmt: skip
        else:
            out["logits"] = tensors["logits"][row].float()
        return out

    # --- writing ---------------------------------------------------------------------------------------------

    def add(self, key: int, logits: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Keep the outputs of one batch (moved to the host), written with the next shard.

        They are copied into a block allocated for a whole shard: kept one by one, small tensors that live on
        between the teacher's large temporaries fragmented the heap (measured, Fashion-MNIST with RKD's taps:
        +2.2 GB over the first 256 batches, 33 MB of them stored; flat with the block)."""
        if self.read_only:  # this run's teacher did not compute the cache's other taps: count, keep nothing
            self.computed += 1
            return
        if key in self._rows:
            return
        store: dict[str, torch.Tensor] = {}
        logits = logits.detach().float().cpu()
        if self.format == "topk":
            p, i = F.softmax(logits, dim=-1).topk(self.topk, dim=-1)
            store["topk_p"], store["topk_i"] = p.half(), i.to(torch.int32)
        else:
            store["logits"] = logits.half() if self.format == "fp16" else logits
        for path, value in features.items():
            value = value.detach().float().cpu().contiguous()  # channels_last maps are stored dense
            store[f"tap.{path}"] = value if self.format == "fp32" else value.half()
        shape = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(store.items()))
        block = self._blocks.get(shape)
        if block is None:  # one shard per batch shape (a last, smaller batch has its own)
            block = self._blocks[shape] = _Block({k: torch.empty((FLUSH_EVERY, *v.shape), dtype=v.dtype)
                                                  for k, v in store.items()}, [])  # fmt: skip
        row = len(block.keys)
        for name, value in store.items():
            block.tensors[name][row].copy_(value)
        block.keys.append(key)
        self._rows[key] = (block.tensors, row)
        self.computed += 1
        if len(block.keys) >= FLUSH_EVERY:
            self._write(self._blocks.pop(shape))

    def flush(self) -> None:
        """Write the kept batches as shards (atomically: a killed write leaves no half shard)."""
        blocks, self._blocks = list(self._blocks.values()), {}
        for block in blocks:
            self._write(block)

    def _write(self, block: _Block) -> None:
        count = len(block.keys)
        tensors = {k: v[:count].clone() if count < FLUSH_EVERY else v for k, v in block.tensors.items()}
        name = self._next_shard_name()
        tmp = self.folder / f".{name}.tmp"
        try:
            save_file({**tensors, "keys": torch.tensor(block.keys, dtype=torch.int64)}, str(tmp))
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            raise TinykdError(f"cannot write teacher cache {self.folder}: {exc.strerror or exc}") from None
        for row, key in enumerate(block.keys):  # served from the shard's tensors from now on
            self._rows[key] = (tensors, row)

    def _next_shard_name(self) -> str:
        while True:
            self._shards += 1
            name = f"shard-r{_rank()}-{os.getpid()}-{self._shards:06d}.safetensors"
            if not (self.folder / name).exists():
                return name

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*.safetensors"))

    def summary(self) -> str:
        added = "not added (read-only: the cache holds more taps)" if self.read_only else "and added"
        return (f"teacher cache {self.folder}: {self.served} batches read, {self.computed} computed by the teacher "
                f"{added}; {len(self)} batches, {self.size_bytes() / 2**20:.1f} MiB on disk ({self.format})")


@dataclass
class _Block:
    """Room for a shard's batches of one shape (FLUSH_EVERY rows per tensor), and the keys of the rows filled."""

    tensors: dict[str, torch.Tensor]
    keys: list[int]


class CachedBatches(BatchDataset):
    """The training set, each batch's inputs given as `Indexed(inputs, index, teacher, key)`: the teacher's cached
    outputs for this batch (None when not cached yet, then the Distiller computes and adds them)."""

    def __init__(self, dataset: Dataset, cache: TeacherCache) -> None:
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def get_batch(self, indices: Sequence[int]) -> Batch:
        inputs, targets = fetch_batch(self.dataset, indices)
        key = batch_key(indices)
        teacher = self.cache.lookup(key)
        if teacher is not None:
            self.cache.served += 1
        return Batch(Indexed(inputs, torch.as_tensor(list(indices), dtype=torch.int64), teacher, key), targets)

    def sample_lengths(self) -> list[int] | None:
        return dataset_lengths(self.dataset)

    def content_digest(self) -> str | None:
        return dataset_digest(self.dataset)


def _logits_from_topk(p: torch.Tensor, i: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Log-probabilities with the k stored ones in place and the rest of the mass spread evenly (FKD)."""
    k = p.shape[-1]
    rest = ((1.0 - p.sum(-1, keepdim=True)).clamp_min(1e-8) / (num_classes - k)).log()
    logits = rest.expand(*p.shape[:-1], num_classes).clone()
    return logits.scatter(-1, i, p.clamp_min(1e-8).log())


def _holds(have: Any, want: list[str]) -> bool:
    """Whether a cache's taps include every tap a run reads (and more)."""
    return isinstance(have, list) and set(want) < set(have)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
