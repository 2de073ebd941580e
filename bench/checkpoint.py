"""What a resume checkpoint costs: its size on disk, the time to write it (fsync included) and to read it back.

The state is that of a real fit: the trained module's weights and the optimizer's slots after some steps.
Compare the write time with the time of the steps between two checkpoints (`train.checkpoint_every`).

    python bench/checkpoint.py                          # cnn_compact (the demo student) and resnet8x4, SGD
    python bench/checkpoint.py --models resnet32x4 --optimizer adamw --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinykd import create_model
from tinykd.engine.schedule import build_optimizer
from tinykd.engine.state import flatten_optimizer, load_checkpoint, save_checkpoint
from tinykd.recipes.schema import OptimizerSpec


def measure(name: str, optimizer_name: str, repeats: int, folder: Path) -> dict[str, float]:
    model = create_model(name, num_classes=10, in_channels=1)
    optimizer = build_optimizer(model.parameters(), OptimizerSpec(name=optimizer_name, lr=0.01))
    for _ in range(2):  # the optimizer's slots exist after a step
        model(torch.randn(8, 1, 28, 28)).logsumexp(1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = {f"task.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    meta = {"optimizer": opt_meta, "position": {"step": 0}}
    writes, reads = [], []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        path = save_checkpoint(folder / name, step, tensors, meta, 0, True, lambda: None, keep=2)
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_checkpoint(path, 0)
        reads.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in path.iterdir())
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "mib": size / 2**20, "write_ms": 1000 * statistics.median(writes),
            "read_ms": 1000 * statistics.median(reads)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn_compact", "resnet8x4"])
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{'model':14s} {'params':>10s} {'size MiB':>9s} {'write ms':>9s} {'read ms':>8s}  ({args.optimizer})")
        for name in args.models:
            r = measure(name, args.optimizer, args.repeats, Path(tmp))
            print(f"{name:14s} {r['params']:>10,d} {r['mib']:>9.2f} {r['write_ms']:>9.1f} {r['read_ms']:>8.1f}")


if __name__ == "__main__":
    main()
