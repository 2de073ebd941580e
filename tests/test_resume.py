"""Runs that survive crashes: kill a run at many points, resume it, and get the same student bit for bit.

The killed runs are subprocesses (tests/kill_worker.py) ended by SIGKILL at a chosen step or in the middle
of a checkpoint file; the resumed runs use the real CLI. Both, and the reference, use one thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import tinykd
from conftest import examples, run_here, shared_folder
from tinykd.engine.state import capture_rng, complete_checkpoints, flatten_optimizer, restore_rng, unflatten_optimizer
from tinykd.errors import TinykdError
from tinykd.losses import LossTerm, register_loss
from tinykd.models.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "kill_worker.py"
EPOCHS, STEPS = 3, 7  # 21 steps; resume checkpoints at steps 3, 6, 7 (epoch end), 9, 12, 14, 15, 18, 21


def _recipe(teacher: Path) -> dict[str, Any]:
    return {
        "name": "resume-test",
        "seed": 3,
        "data": {"name": "digits", "batch_size": 32, "val_size": 0.15, "augment": True},
        "teacher": {"name": "cnn_small", "checkpoint": str(teacher)},
        "student": {"name": "cnn_tiny"},
        "loss_terms": {
            "ce": {"weight": 0.5},
            "kd": {"weight": 0.5, "temperature": 4.0},
            "hint": {"type": "fitnet", "weight": 0.1, "student": "stage2", "teacher": "stage2"},
        },
        "train": {
            "epochs": EPOCHS, "max_steps_per_epoch": STEPS, "log_every": 2, "checkpoint_every": 3,
            "keep_checkpoints": 2, "optimizer": {"lr": 0.05},
        },
        "runtime": {"threads": 1},
        "measure": {"enabled": False},
    }


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def make(folder: Path) -> None:
        torch.manual_seed(0)
        teacher = tinykd.create_model("cnn_small", num_classes=10, in_channels=1)
        meta = {"model": "cnn_small", "num_classes": 10, "in_channels": 1}
        save_model(teacher, folder / "teacher.safetensors", meta)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(_recipe(folder / "teacher.safetensors")))

    return shared_folder(tmp_path_factory, "resume-recipe", make) / "recipe.yaml"  # one for all xdist workers


def _env() -> dict[str, str]:
    env = dict(os.environ, TINYKD_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tinykd_cli(*args: str, kill: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    """`tinykd ARGS`: in a process of its own, killed at `kill` (tests/kill_worker.py), or else in this one."""
    if not kill:
        return run_here(*args, cwd=cwd)
    command = [sys.executable, str(WORKER), kill, "--", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(recipe_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (made once for all xdist workers)."""

    def make(folder: Path) -> None:
        proc = tinykd_cli("distill", str(recipe_file), "--out", str(folder / "reference"), cwd=recipe_file.parent)
        assert proc.returncode == 0, proc.stderr

    return shared_folder(tmp_path_factory, "resume-reference", make) / "reference"


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(run / "checkpoints" / f"{name}.safetensors")) for name in ("best", "last")}


def assert_same_run(run: Path, reference: Path) -> None:
    """Student weights bit for bit, the same best epoch, and the same logged losses."""
    got, want = _weights(run), _weights(reference)
    for name in want:
        assert got[name].keys() == want[name].keys()
        different = [k for k in want[name] if not torch.equal(got[name][k], want[name][k])]
        assert not different, f"{name}: {different}"
    report, expected = (json.loads((r / "report.json").read_text()) for r in (run, reference))
    assert report["best_epoch"] == expected["best_epoch"]
    assert report["models"][1]["test_accuracy"] == expected["models"][1]["test_accuracy"]

    def losses(r: Path) -> list[tuple]:
        records = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
        return [(x["step"], x.get("loss"), x.get("val_accuracy")) for x in records if x["event"] in ("train", "epoch")]

    assert losses(run) == losses(reference)


# kill points: before any checkpoint, mid-epoch, just after an epoch end, late in the run; during the write of
# a resume checkpoint's files (the first one, and one at an epoch end); during the write of last.safetensors
KILLS = ["step:2", "step:5", "step:8", "step:16", "write:2", "write:5", "weights:1"]


@pytest.mark.parametrize("kill", KILLS)
def test_a_killed_run_resumes_bit_for_bit(kill: str, recipe_file: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = tinykd_cli("distill", str(recipe_file), "--out", str(out), kill=kill, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "report.json").exists()
    resumed = tinykd_cli("distill", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_a_step_with_a_checkpoint_and_says_how_to_resume(
    name: str, recipe_file: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    stopped = tinykd_cli("distill", str(recipe_file), "--out", str(out), kill=f"signal:5:{name}", cwd=tmp_path)
    assert stopped.returncode == {"SIGTERM": 143, "SIGINT": 130}[name], stopped.stderr
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"tinykd: error: stopped on {name} at epoch 1, step 5;"), last_line
    assert f"resume with: tinykd distill --resume {out}" in last_line
    assert [p.name for p in complete_checkpoints(out / "checkpoints" / "resume")] == ["step-00000003", "step-00000005"]
    assert "Traceback" not in stopped.stderr
    resumed = tinykd_cli("distill", str(recipe_file), "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)


def test_only_the_newest_checkpoints_are_kept(reference: Path) -> None:
    kept = complete_checkpoints(reference / "checkpoints" / "resume")
    assert [p.name for p in kept] == ["step-00000018", "step-00000021"]
    assert sorted(p.name for p in kept[-1].iterdir()) == ["manifest.json", "rng-rank0.safetensors",
                                                          "train_state.safetensors"]  # fmt: skip


def test_a_damaged_newest_checkpoint_is_passed_over(reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "report.json").unlink()
    state = run / "checkpoints" / "resume" / "step-00000021" / "train_state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    resumed = tinykd_cli("distill", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping damaged checkpoint" in resumed.stderr and str(state) in resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000018" in resumed.stderr
    assert_same_run(run, reference)


def test_resume_refuses_what_it_cannot_continue(recipe_file: Path, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "report.json").unlink()
    cases = {
        ("--set", "train.optimizer.lr=0.01"): "recipe differs from the one .* was started with: "
                                              "train.optimizer.lr: 0.05 -> 0.01",
        ("--overwrite",): "--resume continues a run and --overwrite starts it again",
        ("--out", str(tmp_path / "elsewhere")): "--resume writes into the run's own folder",
    }  # fmt: skip
    for extra, message in cases.items():
        proc = tinykd_cli("distill", str(recipe_file), "--resume", str(run), *extra, cwd=tmp_path)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert re.search(message, proc.stderr), proc.stderr
    finished = tinykd_cli("distill", "--resume", str(reference), cwd=tmp_path)
    assert finished.returncode == 2 and "already finished" in finished.stderr
    stranger = tinykd_cli("distill", "--resume", str(tmp_path), cwd=tmp_path)
    assert stranger.returncode == 2 and "not a tinykd run folder (no recipe.yaml)" in stranger.stderr
    assert _weights(run)["last"].keys() == _weights(reference)["last"].keys()  # nothing was touched


def test_memory_and_warm_up_terms_resume_bit_for_bit(recipe_file: Path, tmp_path: Path) -> None:
    """CRD's memory banks and Z (term state in the checkpoint) and DKD's warm-up (set again at each epoch): a run
    killed in its second epoch and resumed gives the uninterrupted run's student, bit for bit."""
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["loss_terms"] = {
        "ce": {"weight": 1.0},
        "dkd": {"weight": 1.0, "warmup": 2},
        "crd": {"weight": 0.8, "negatives": 64, "feat_dim": 16},
    }
    path = tmp_path / "memory.yaml"
    path.write_text(yaml.safe_dump(recipe))
    reference = tmp_path / "reference"
    assert tinykd_cli("distill", str(path), "--out", str(reference), cwd=tmp_path).returncode == 0
    out = tmp_path / "run"
    killed = tinykd_cli("distill", str(path), "--out", str(out), kill="step:11", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = tinykd_cli("distill", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference)
    state = load_file(str(next((out / "checkpoints" / "resume").glob("*/train_state.safetensors"))))
    assert {"task.terms.crd.bank_student", "task.terms.crd.bank_teacher", "task.terms.crd.z"} <= set(state)


# --- in-process cases -----------------------------------------------------------------------------------------

DIGITS = {
    "name": "digits-faults",
    "data": {"name": "digits", "batch_size": 64, "val_size": 0.15},
    "student": {"name": "cnn_tiny"},
    "train": {"epochs": 2, "log_every": 4, "max_steps_per_epoch": 8, "checkpoint_every": 3},
    "measure": {"enabled": False},
}


@register_loss("nan_on_calls", override=True)
class NanOnCalls(LossTerm):
    """A loss term that is NaN on chosen calls (1-based), zero otherwise."""

    needs_teacher = False
    calls_to_fail: tuple[int, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, student, teacher, targets):  # type: ignore[no-untyped-def]
        self.calls += 1
        return student.logits.sum() * (torch.nan if self.calls in NanOnCalls.calls_to_fail else 0.0)


def _with_nan(calls: tuple[int, ...], **train: Any) -> dict[str, Any]:
    NanOnCalls.calls_to_fail = calls
    return {**DIGITS, "loss_terms": {"ce": {}, "boom": {"type": "nan_on_calls"}},
            "train": {**DIGITS["train"], **train}}  # fmt: skip


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TinykdError, match=r"loss became nan or inf at epoch 1, step 7 \(term 'boom'\); the last "
                                          r"good checkpoint is .*step-00000006"):  # fmt: skip
        tinykd.run(_with_nan((7,)), out=tmp_path / "run")
    kept = complete_checkpoints(tmp_path / "run" / "checkpoints" / "resume")
    assert [p.name for p in kept] == ["step-00000003", "step-00000006"]
    state = load_file(str(kept[-1] / "train_state.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_skip_mode_skips_nan_steps_and_counts_them(tmp_path: Path) -> None:
    result = tinykd.run(_with_nan((3, 10), nonfinite="skip", max_skipped_steps=2), out=tmp_path / "run")
    assert result.metrics["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["skipped"] for r in train] == [1, 1, 2, 2]
    assert all(np.isfinite(r["loss"]) for r in train) and train[-1]["loss"] < train[0]["loss"]  # still learning
    with pytest.raises(TinykdError, match=r"2 steps had a non-finite loss or gradients, more than "
                                          r"train.max_skipped_steps=1; the last at epoch 2, step 10"):  # fmt: skip
        tinykd.run(_with_nan((3, 10), nonfinite="skip", max_skipped_steps=1), out=tmp_path / "limit")


def test_a_full_disk_is_found_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, free=2**19))
    with pytest.raises(TinykdError, match=r"has 0.5 MiB free, but this run's checkpoints need about [\d.]+ MiB"):
        tinykd.run(DIGITS, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_during_training_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tinykd.engine.state as state

    real, calls = state.write_tensors, [0]

    def write(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 4:  # the second checkpoint's state file
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(state, "write_tensors", write)
    with pytest.raises(TinykdError, match=r"could not write checkpoint .*step-00000006: No space left on device; "
                                          r"the last complete checkpoint is .*step-00000003"):  # fmt: skip
        tinykd.run(DIGITS, out=tmp_path / "run")
    resume_dir = tmp_path / "run" / "checkpoints" / "resume"
    assert [p.name for p in resume_dir.iterdir()] == ["step-00000003"]


def test_optimizer_state_round_trips_through_tensors_and_json() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(8, 4)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = flatten_optimizer(opt.state_dict())
    meta = json.loads(json.dumps(meta))  # it really is JSON
    clone = torch.nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(clone.parameters(), lr=0.1)
    saved = {k.split(".", 1)[1]: v.clone() for k, v in tensors.items()}  # as if read back from the file
    opt2.load_state_dict(unflatten_optimizer(saved, meta))
    x = torch.randn(8, 4)
    for m, o in ((model, opt), (clone, opt2)):
        m(x).square().sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters(), strict=True))


def test_rng_states_round_trip() -> None:
    import random

    tensors, meta = capture_rng()
    meta = json.loads(json.dumps(meta))
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(tensors, meta)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


# --- damaged run folders ---------------------------------------------------------------------------------------

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TINY = {
    "name": "tiny", "seed": 1,
    "data": {"name": "digits", "batch_size": 32, "val_size": 0.1},
    "student": {"name": "cnn_tiny"},
    "train": {"epochs": 2, "max_steps_per_epoch": 3, "log_every": 1, "checkpoint_every": 2, "keep_checkpoints": 3},
    "runtime": {"device": "cpu"}, "measure": {"enabled": False},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with 3 resume checkpoints (steps 3, 4, 6) whose end was lost (no report.json)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    tinykd.run(TINY, out=out, mode="train")
    (out / "report.json").unlink()
    return out


damage = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 200), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.integers(0, 200), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 200)),
    st.tuples(st.just("garbage"), st.integers(0, 200), st.binary(max_size=64)),
    st.tuples(st.just("mkdir"), st.sampled_from(["step-00000099", "step-x", "step-00000001.tmp", "step-00000004/x"])),
    st.tuples(st.just("recipe"), st.sampled_from(["", "name: [", "{}", "seed: 2", "- 1", "data: 3", "\x00"])),
)


def _apply(run: Path, op: tuple) -> None:
    files = sorted(p for p in run.rglob("*") if p.is_file())
    kind = op[0]
    if kind == "mkdir":
        (run / "checkpoints" / "resume" / op[1]).mkdir(parents=True, exist_ok=True)
        return
    if kind == "recipe":
        (run / "recipe.yaml").write_text(op[1])
        return
    file = files[op[1] % len(files)]
    if kind == "delete":
        file.unlink()
    elif kind == "garbage":
        file.write_bytes(op[2])
    else:
        data = bytearray(file.read_bytes())
        at = min(int(op[2] * len(data)), max(len(data) - 1, 0))
        if kind == "truncate":
            file.write_bytes(bytes(data[:at]))
        elif data:
            data[at] ^= op[3]
            file.write_bytes(bytes(data))


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])  # fmt: skip
@given(ops=st.lists(damage, min_size=1, max_size=3))
def test_damaged_run_folders_resume_or_fail_in_one_line(tiny_run: Path, tmp_path: Path, ops: list) -> None:
    """Truncated, flipped, deleted or replaced files, stray folders, a broken recipe: `--resume` either
    continues (from the newest checkpoint that verifies, or from step 0) or says what is wrong in one line."""
    import contextlib
    import io
    import tempfile

    from tinykd.cli import main

    run = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    shutil.copytree(tiny_run, run)
    for op in ops:
        _apply(run, op)
    err = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["train", "--resume", str(run)])
            code = 0
        except SystemExit as exc:
            code = exc.code
    torch.set_num_threads(threads)
    text = err.getvalue()
    resumed_from = re.search(r"resuming from .*(step-\d+)", text)
    event(f"exit {code}, " + (resumed_from.group(1) if resumed_from else "from step 0" if code == 0 else "refused"))
    if code == 2:  # what was refused, without the paths
        event("error: " + re.sub(r"/\S+", "PATH", text.strip().splitlines()[-1])[15:90])
    assert "Traceback" not in text, (ops, text)
    assert code in (0, 2), (code, ops, text)
    if code == 2:
        assert text.strip().splitlines()[-1].startswith("tinykd: error: "), (ops, text)
    else:
        assert (run / "report.json").is_file()


def test_the_loss_scaler_is_saved_and_restored(tmp_path: Path) -> None:
    """fp16 needs a GPU, so the scaler here is torch's CPU GradScaler, in the place Accelerate keeps its own."""
    from tinykd.engine import Engine
    from tinykd.engine.resume import FitResult, Position, Tally, restore, save_resume
    from tinykd.engine.state import load_checkpoint
    from tinykd.recipes.schema import RuntimeSpec

    def engine_with_scaler(scale: float) -> Engine:
        engine = Engine(RuntimeSpec(device="cpu"))
        engine.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=3)
        return engine

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saver = engine_with_scaler(2.0**10)
    scaler = saver.accelerator.scaler
    for _ in range(4):  # grow the scale once, and move the growth tracker
        scaler.scale(model(torch.randn(4, 3)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    shape = {"num_processes": 1, "samples_per_step": 4, "steps_per_epoch": 5, "total_steps": 10}
    path = save_resume(saver.accelerator, tmp_path, model, optimizer, Tally(), Position(step=4), FitResult(
        -1.0, -1, None, None, 0.0, 0.0), shape, keep=1)  # fmt: skip
    loader = engine_with_scaler(1.0)
    restore(loader.accelerator, load_checkpoint(path, 0), optimizer, Tally(), Position(),
            FitResult(-1.0, -1, None, None, 0.0, 0.0), shape, None)  # fmt: skip
    assert loader.accelerator.scaler.state_dict() == scaler.state_dict()
    assert loader.accelerator.scaler.get_scale() == 2.0**11
