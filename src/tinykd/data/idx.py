"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

We read the files ourselves rather than through torchvision: Debian's
`dataset-fashion-mnist` re-compressed the .gz files, so their md5 differs from
upstream and torchvision refuses them, although the content is the same. So we
check the *decompressed* content instead (`OfficialIdx`), which is the same
whoever compressed it.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinykd.errors import TinykdError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class OfficialIdx:
    """A published IDX file: a file whose header claims its shape must also have its exact content.

    Keyed on the shape so that small test files under the official names still load, while a corrupt copy of
    the real file (a flipped byte passes the structural check) is refused instead of silently training on it.
    """

    dataset: str  # e.g. "Fashion-MNIST", for the message
    shape: tuple[int, ...]
    size: int  # bytes of the decompressed IDX file
    sha256: str  # of the decompressed IDX file
    remedy: str  # what to do about a corrupt copy


def read_idx(path: Path, official: OfficialIdx | None = None) -> torch.Tensor:
    """Return the array stored in an IDX file as a tensor; a malformed or corrupt file raises a `TinykdError`."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise TinykdError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TinykdError(f"{path} is truncated or corrupt: {len(data)} bytes, shorter than its {header}-byte header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise TinykdError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected} for shape {shape}")
    if official is not None and shape == official.shape:
        _check_official(path, data, official)
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("=")).copy())


def _read_bytes(path: Path) -> bytes:
    """The decompressed bytes; a damaged .gz is a `TinykdError` naming the file, not an EOFError or zlib error."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise TinykdError(
            f"{path} is truncated or corrupt (gzip: {exc}); replace it with a complete copy of the file"
        ) from None
    except OSError as exc:
        raise TinykdError(f"cannot read {path}: {exc}") from None


def _check_official(path: Path, data: bytes, official: OfficialIdx) -> None:
    """Hash the bytes already in memory (no second read): ~0.1 s for Fashion-MNIST's 47 MB training images."""
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != official.size or digest != official.sha256:
        raise TinykdError(
            f"{path} has the official {official.dataset} shape but its content differs "
            f"({len(data)} bytes, sha256 {digest[:12]}…, expected {official.size} bytes, "
            f"sha256 {official.sha256[:12]}…): the file is corrupt; {official.remedy}"
        )
