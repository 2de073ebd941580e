"""The lean core: with none of the extras' packages importable, a vision distillation still runs end to end and
writes its report; a command that needs an extra is one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tinykd.extras import EXTRA_OF, missing_extra

CORE_ONLY = f"""
import sys
for name in {sorted(EXTRA_OF)!r}:
    sys.modules[name] = None  # as if not installed: `import name` fails, find_spec says None
"""


def _core_only(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CORE_ONLY + body], capture_output=True, text=True, cwd=tmp_path,
                          timeout=900)  # fmt: skip


def test_a_vision_distillation_needs_no_extra(tmp_path: Path) -> None:
    done = _core_only(tmp_path, """
import torch
from tinykd import create_model
from tinykd.models.checkpoint import save_model
from tinykd.run import run
save_model(create_model("cnn_tiny", num_classes=10, in_channels=1), __import__("pathlib").Path("t.safetensors"),
           {"model": "cnn_tiny"})
recipe = {"name": "core", "data": {"name": "digits", "batch_size": 32},
          "teacher": {"name": "cnn_tiny", "checkpoint": "t.safetensors"},
          "student": {"name": "mlp", "kwargs": {"image_size": 8, "hidden": [16]}},
          "loss_terms": {"ce": {}, "kd": {"weight": 1.0}}, "train": {"epochs": 1, "max_steps_per_epoch": 4},
          "runtime": {"threads": 1}, "measure": {"latency_repeats": 3, "throughput_batch": 4}}
result = run(recipe, "run", mode="distill")
assert (result.run_dir / "report.html").is_file()
loaded = [m for m in ("transformers", "onnx", "onnxruntime", "torchao") if sys.modules.get(m) is not None]
print("loaded:", loaded)
""")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout


def test_a_command_that_needs_an_extra_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    done = _core_only(tmp_path, """
from tinykd.cli import main
main(["profile", "cnn_tiny", "--repeats", "2", "--batch", "2"])
""")
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'tinykd[edge]'" in lines[0], done.stderr


def test_missing_modules_map_to_their_extra() -> None:
    assert "tinykd[text]" in missing_extra(ModuleNotFoundError("x", name="transformers.models"))
    assert "tinykd[qat]" in missing_extra(ModuleNotFoundError("x", name="torchao"))
    assert "tinykd[xla]" in missing_extra(ModuleNotFoundError("x", name="torch_xla.core"))
    assert missing_extra(ModuleNotFoundError("x", name="some_typo_module")) is None
