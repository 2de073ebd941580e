"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

We read the files ourselves rather than through torchvision: Debian's
`dataset-fashion-mnist` re-compressed the .gz files, so their md5 differs from
upstream and torchvision refuses them, although the content is the same.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from tinykd.errors import TinykdError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> torch.Tensor:
    """Return the array stored in an IDX file as a tensor; a malformed file raises a `TinykdError`."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise TinykdError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise TinykdError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise TinykdError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected} for shape {shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("=")).copy())
