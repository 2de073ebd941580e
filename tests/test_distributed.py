"""Several processes: torchrun with 2 CPU ranks (gloo) is one job, and equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tinykd

WORKER = Path(__file__).with_name("ddp_worker.py")


def recipe(folder: Path, batch_size: int) -> Path:
    path = folder / f"r{batch_size}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "ddp", "seed": 5,
        # no augmentation and an MLP (no batch statistics): the maths is then the same for any process count
        "data": {"name": "digits", "batch_size": batch_size, "val_size": 0.1, "augment": False},
        "student": {"name": "mlp", "kwargs": {"image_size": 8, "hidden": [32]}},
        "train": {"epochs": 2, "max_steps_per_epoch": 8, "log_every": 4,
                  "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "runtime": {"device": "cpu"}, "measure": {"enabled": False},
    }))  # fmt: skip
    return path


def launch(nproc: int, recipe_path: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(recipe_path), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_cpu_ranks_are_one_job_and_match_one_process(tmp_path: Path, tinykd_env: dict[str, str]) -> None:
    env = {**tinykd_env, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launch(1, recipe(tmp_path, 64), tmp_path / "single", env)
    proc = launch(2, recipe(tmp_path, 32), tmp_path / "double", env)

    infos = [json.loads((tmp_path / f"double-rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in infos] == [2, 2] and [i["rank"] for i in infos] == [0, 1]
    assert infos[0]["distributed_type"] == "MULTI_CPU" and infos[0]["backend"] == "gloo"
    assert "global batch 64 (32 per process x 2)" in proc.stdout
    rank0 = load_file(str(tmp_path / "double-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "double-rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks ended with different weights"
    single = load_file(str(tmp_path / "single-rank0.safetensors"))
    worst = max((rank0[k] - single[k]).abs().max().item() for k in single)
    assert worst < 1e-5, f"2 ranks x 32 differ from 1 process x 64 by {worst}"
    torch.manual_seed(5)
    start = tinykd.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=[32]).state_dict()
    assert min((single[k] - start[k]).abs().max().item() for k in single) > 1e-3, "nothing was trained"
    assert infos[0]["metrics"]["best_val_accuracy"] > 0.3
    assert not any(tmp_path.glob("double/*-rank1*")), "only rank 0 writes the run folder"
    assert (tmp_path / "double" / "report.json").is_file() and (tmp_path / "double" / "metrics.jsonl").is_file()
    assert os.path.getsize(tmp_path / "double" / "metrics.jsonl") > 0


def test_accelerate_launch_runs_two_ranks(tmp_path: Path, tinykd_env: dict[str, str]) -> None:
    env = {**tinykd_env, "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",  # a free port
           "-m", "tinykd", "train", str(recipe(tmp_path, 32)), "--out", "run"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cpu, 2 processes (GLOO), fp32;" in proc.stdout and "global batch 64 (32 per process x 2)" in proc.stdout
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_ranks_stop_together_on_a_signal_and_resume_exactly(tmp_path: Path, tinykd_env: dict[str, str]) -> None:
    """Each rank gets SIGTERM after step 5; they agree at the next log point (step 8, the epoch end), save one
    checkpoint with an RNG file per rank, stop; a resumed 2-rank job ends with the uninterrupted job's weights."""
    env = {**tinykd_env, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    path = recipe(tmp_path, 32)
    data = yaml.safe_load(path.read_text())
    data["train"]["checkpoint_every"] = 3
    data["data"]["augment"] = True
    path.write_text(yaml.safe_dump(data))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    killer = str(Path(__file__).with_name("kill_worker.py"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    whole = run("-m", "tinykd", "train", str(path), "--out", "whole")
    assert whole.returncode == 0, whole.stderr[-4000:]
    stopped = run(killer, "signal:5:SIGTERM", "--", "train", str(path), "--out", "run")
    assert stopped.returncode != 0
    assert "stopped on SIGTERM at epoch 1, step 8" in stopped.stderr, stopped.stderr[-4000:]
    saved = tmp_path / "run" / "checkpoints" / "resume" / "step-00000008"
    assert sorted(p.name for p in saved.iterdir()) == ["manifest.json", "rng-rank0.safetensors",
                                                        "rng-rank1.safetensors", "train_state.safetensors"]  # fmt: skip
    resumed = run("-m", "tinykd", "train", "--resume", "run")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    want = load_file(str(tmp_path / "whole" / "checkpoints" / "last.safetensors"))
    got = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


def _crd_rank(rank: int, world: int, port: int, folder: str) -> None:
    """One of two gloo ranks: a CRD step on this rank's own samples, then save the banks this rank holds."""
    import torch.distributed as dist

    from tinykd.data import Indexed
    from tinykd.distill import Distiller
    from tinykd.losses import build_loss_term

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same models and banks on both ranks, as after DDP's first broadcast
        nn = torch.nn
        student = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
        term = build_loss_term("crd", {"negatives": 4, "feat_dim": 4})
        distiller = Distiller(teacher, student, {"crd": term}, torch.randn(2, 3, 4), num_samples=16)
        torch.manual_seed(1 + rank)  # each rank its own batch: samples 0-3 on rank 0, 8-11 on rank 1
        index = torch.arange(4) + 8 * rank
        distiller(Indexed(torch.randn(4, 3, 4), index), torch.zeros(4, dtype=torch.long))
        torch.save({"student": term.bank_student, "teacher": term.bank_teacher}, f"{folder}/banks{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_crd_memory_banks_stay_identical_across_ranks(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_crd_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    banks = [torch.load(tmp_path / f"banks{r}.pt") for r in (0, 1)]
    written = [*range(4), *range(8, 12)]  # rank 0's samples and rank 1's
    for name in ("student", "teacher"):
        assert torch.equal(banks[0][name], banks[1][name]), f"the {name} banks differ between ranks"
        norms = banks[0][name].norm(dim=1)  # a written entry is renormalized to 1; the random start is not
        assert torch.allclose(norms[written], torch.ones(8))
        assert not torch.isclose(norms[[4, 5, 6, 7, 12, 13, 14, 15]], torch.ones(8)).any()
