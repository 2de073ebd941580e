"""How much does tinykd cost per distillation step, against a minimal hand-written PyTorch loop?

Both loops do the same work: the same teacher and student (fresh copies of the same weights), the same
batches (already in memory), SGD with the same settings, 0.1 x CE + 0.9 x KD(T=4). They run in one process,
alternating windows, and the median img/s of each is compared. Goal: tinykd / hand >= 0.97.

    python bench/overhead.py                 # resnet8x4 -> cnn_small, batch 128, 1x28x28
    python bench/overhead.py --windows 9 --steps 30 --teacher resnet20 --student cnn_tiny
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from tinykd import Distiller, create_model
from tinykd.engine import Engine
from tinykd.losses import build_loss_term, kd_loss
from tinykd.recipes.schema import RuntimeSpec, TrainSpec
from tinykd.tasks import Task


def hand_loop(teacher, student, batches, lr: float) -> float:
    """The reference: what a careful user would write by hand. Returns img/s."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    teacher.eval()
    student.train()
    start = time.perf_counter()
    for x, y in batches:
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd_loss(s, t, 4.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sum(len(y) for _, y in batches) / (time.perf_counter() - start)


def tinykd_loop(engine: Engine, teacher, student, batches, lr: float) -> float:
    """The same steps through tinykd's Distiller and Engine.fit (no validation, no checkpoints). Returns img/s."""
    terms = {"ce": (build_loss_term("ce", {}), 0.1), "kd": (build_loss_term("kd", {"temperature": 4.0}), 0.9)}
    distiller = Distiller(teacher, student, terms, example_inputs=batches[0][0][:2])
    spec = TrainSpec(epochs=1, log_every=len(batches), schedule={"name": "constant"},
                     optimizer={"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})
    start = time.perf_counter()
    engine.fit(distiller, student, Task(), batches, None, spec)  # a list of batches is a valid loader
    return sum(len(y) for _, y in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet8x4")
    parser.add_argument("--student", default="cnn_small")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per window")
    parser.add_argument("--windows", type=int, default=5, help="windows per loop (alternating)")
    args = parser.parse_args()

    torch.manual_seed(0)
    teacher = create_model(args.teacher, num_classes=10, in_channels=1)
    student = create_model(args.student, num_classes=10, in_channels=1)
    batches = [(torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))) for _ in range(args.steps)]
    engine = Engine(RuntimeSpec(device="cpu"))
    results: dict[str, list[float]] = {"hand": [], "tinykd": []}
    hand_loop(copy.deepcopy(teacher), copy.deepcopy(student), batches[:3], 0.05)  # warm-up both paths
    tinykd_loop(engine, copy.deepcopy(teacher), copy.deepcopy(student), batches[:3], 0.05)
    for _ in range(args.windows):
        results["hand"].append(hand_loop(copy.deepcopy(teacher), copy.deepcopy(student), batches, 0.05))
        results["tinykd"].append(tinykd_loop(engine, copy.deepcopy(teacher), copy.deepcopy(student), batches, 0.05))
    hand, ours = statistics.median(results["hand"]), statistics.median(results["tinykd"])
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, {args.steps} steps x {args.windows} windows, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"hand-written loop: {hand:8.1f} img/s (windows: {', '.join(f'{v:.0f}' for v in results['hand'])})")
    print(f"tinykd Engine.fit: {ours:8.1f} img/s (windows: {', '.join(f'{v:.0f}' for v in results['tinykd'])})")
    print(f"ratio tinykd / hand: {ours / hand:.3f}  (goal >= 0.97)")


if __name__ == "__main__":
    main()
