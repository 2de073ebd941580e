"""Shared fixtures: small learnable data in Fashion-MNIST's IDX format, made on the fly (never downloaded)."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# One torch thread, here and in every process a test starts (OMP_NUM_THREADS, inherited): under pytest-xdist
# (`make test` runs `pytest -n 2`) the workers share the cores, and a run made in this process (run_here) computes
# bit for bit what one made in a new process does (a process that has computed with two threads once does not).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
THREADS = 1
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["TINYKD_OFFLINE"] = "1"  # tests never use the network
ROOT = Path(__file__).resolve().parents[1]
# Property-based tests (hypothesis) try a bounded number of examples in `make test`; `make fuzz` sets TINYKD_FUZZ=10
# and tries ten times as many (minutes more, the same tests).
FUZZ = max(1, int(os.environ.get("TINYKD_FUZZ", "1") or "1"))


def examples(count: int) -> int:
    """How many examples a property-based test tries: `count`, times TINYKD_FUZZ."""
    return count * FUZZ


# Modules whose tests share module-scoped state (a trained model, a run folder that later tests read or extend):
# under xdist each runs whole on one worker, in order (`--dist loadgroup`, see GroupedModules). Listed longest
# first: they are handed out first, and the other tests, one at a time, fill the workers around them.
GROUPED_MODULES = ("test_text_e2e", "test_generative", "test_mobile", "test_teacher_cache", "test_compress",
                   "test_generative_onnx", "test_html_report")  # fmt: skip


def _module(item: pytest.Item) -> str:
    return Path(item.nodeid.split("::", 1)[0]).stem


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist: the grouped modules first (each keeps its own order; the controller takes the workers' order)."""
    if XDIST_WORKER:
        rank = {name: i for i, name in enumerate(GROUPED_MODULES)}
        items.sort(key=lambda item: rank.get(_module(item), len(rank)))


class GroupedModules:
    """`--dist loadgroup`, with the groups named here: a module of GROUPED_MODULES is one unit of work, any other
    test is a unit of its own. (xdist's own xdist_group marks are not seen with pytest 9, whose node ids xdist
    3.8 cannot rename.)"""

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: object) -> object:
        if config.getoption("dist") != "loadgroup":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class Scheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                module = nodeid.split("::", 1)[0]
                return module if Path(module).stem in GROUPED_MODULES else nodeid

        return Scheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(GroupedModules(), "tinykd-grouped-modules")


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder made once per pytest run by `make(folder)`, for every xdist worker: the first to take the lock
    makes it, the others wait and use it (alone, a folder in this run's base temp)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if XDIST_WORKER else base
    folder = root / f"shared-{name}"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / f"shared-{name}.done").exists():
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(folder)  # a half-made one, from a worker that failed
                folder.mkdir()
                make(folder)
                (root / f"shared-{name}.done").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def run_tinykd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m tinykd ARGS` in a subprocess, offline, one thread (the same maths in every run), from `cwd`."""
    env = dict(os.environ, TINYKD_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tinykd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def run_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`tinykd ARGS` in this process, from `cwd`, with its exit code and what it printed: run_tinykd's answer
    without a new interpreter's start-up (about 7 s of imports a call). For what needs a process of its own (a
    kill, a signal, several ranks), run_tinykd."""
    import io

    from tinykd.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_tinykd's processes: one thread, the same maths in every run
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["tinykd", *args], code, out.getvalue(), err.getvalue())


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array in the IDX format (the format of (Fashion-)MNIST)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fake_fashion_mnist(folder: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0) -> Path:
    """10 classes of 28x28 images: a fixed random template per class plus noise, so models can learn them."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(10, 28, 28))
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n)
        images = np.clip(templates[labels] * 0.6 + rng.normal(0, 60, size=(n, 28, 28)) + 40, 0, 255)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture()
def tinykd_env(fake_fmnist: Path) -> dict[str, str]:
    """Environment for running the CLI in a subprocess on the fake data, offline."""
    env = dict(os.environ)
    env.update(TINYKD_DATA=str(fake_fmnist), OMP_NUM_THREADS=str(THREADS), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               TINYKD_OFFLINE="1")  # fmt: skip
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture()
def cli(fake_fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`tinykd ARGS` in tmp_path on the fake data, offline, in this process (run_here); returns the
    CompletedProcess."""
    monkeypatch.setenv("TINYKD_DATA", str(fake_fmnist))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def call(*args: str, check: bool = False) -> subprocess.CompletedProcess:
        proc = run_here(*args, cwd=tmp_path)
        if check and proc.returncode != 0:
            raise AssertionError(f"tinykd {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    return call


# tests/xla needs torch_xla: it runs in .venv-xla (see the Makefile), and is not collected elsewhere
collect_ignore = [] if __import__("importlib").util.find_spec("torch_xla") else ["xla"]
# tests/litert needs LiteRT: it runs in .venv-litert (see the Makefile), and is not collected elsewhere
collect_ignore += [] if __import__("importlib").util.find_spec("litert_torch") else ["litert"]
