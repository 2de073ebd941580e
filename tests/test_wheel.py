"""The wheel installs: built from a copy of the project, installed on its own (no editable source on the path),
it runs the CLI and finds its built-in recipes and the shipped teacher as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_built_wheel_runs_the_cli_with_its_package_data(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "dist"
    # `python -m build`, as a user builds it (no isolation: the build backend of this environment, no download)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("tinykd-*.whl")
    target = tmp_path / "installed"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                                str(target), str(wheel)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}  # before site-packages: the wheel's tinykd, not the source's

    def tinykd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tinykd", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)  # fmt: skip

    where = subprocess.run([sys.executable, "-c", "import tinykd, tinykd.demo as d; print(tinykd.__file__); "
                            "print(d.shipped_teacher()); print(d.shipped_teacher().is_file())"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    lines = where.stdout.split()
    assert where.returncode == 0, where.stderr[-2000:]
    assert lines[0].startswith(str(target)) and lines[1].startswith(str(target)) and lines[2] == "True"
    shown = tinykd("recipes")
    assert shown.returncode == 0 and "fmnist-distill" in shown.stdout, shown.stderr[-2000:]
    helped = tinykd("demo", "--help")
    assert helped.returncode == 0 and "demo" in helped.stdout.lower(), helped.stderr[-2000:]
    assert (target / "bin" / "tinykd").is_file()  # the console script
