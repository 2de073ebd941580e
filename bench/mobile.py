"""Phone runtimes: a teacher (fp32) and its student (fp32 and int8) in ExecuTorch, ONNX Runtime and LiteRT, each
file verified by its runtime, then timed there at batch 1 with 1 and 2 threads (phones are thread-poor).

Every file is made by the tools a user runs (`tinykd export --format executorch|litert`, `tinykd export` and
`tinykd quantize` for ONNX), accuracy is on the whole test set in the file's runtime, and the speed-up is the
teacher's latency over the student's in the same runtime and thread count. LiteRT lives in its own environment
(.venv-litert, see the Makefile): when this one lacks it, that part runs there, as a subprocess.

    make demo                                             # the teacher and the distilled student (runs/demo)
    python bench/mobile.py --teacher src/tinykd/recipes/builtin/weights/fmnist-teacher.safetensors \\
        --student runs/demo/distill --out runs/bench-mobile
    TINYKD_DATA=../shared/data python bench/mobile.py --student runs/pt2/tiny-0 --out runs/bench-mobile-sst2
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUNTIMES = ("executorch", "onnx", "litert")
LITERT_PYTHON = Path(__file__).resolve().parents[1] / ".venv-litert" / "bin" / "python"


def make_file(source: str, runtime: str, precision: str, out: Path) -> Path:
    """The file a user would ship, verified by its runtime."""
    if runtime == "onnx":
        if precision == "fp32":
            from tinykd.compress.export import export_checkpoint

            return export_checkpoint(source, "onnx", out / "model.onnx", overwrite=True)[0]
        from tinykd.compress.quantize import quantize_model

        return quantize_model(source, "auto", out=out / "model.int8.onnx", overwrite=True)[0]
    from tinykd.compress.mobile import FORMATS, export_mobile

    name = f"model{'.int8' if precision == 'int8' else ''}{FORMATS[runtime]}"
    return export_mobile(source, runtime, precision, out / name, overwrite=True)[0]


def measure_file(path: Path, source: str, threads: list[int], repeats: int) -> dict[str, Any]:
    """Accuracy on the whole test set, size on disk, and batch-1 latency (p50) per thread count."""
    from tinykd.compress.predictors import evaluate, open_predictor, speed
    from tinykd.compress.source import dataset_arrays
    from tinykd.loading import load_model, recipe_from_checkpoint
    from tinykd.measure import timing_input

    loaded = load_model(source)
    recipe = recipe_from_checkpoint(loaded.meta, loaded.path)
    inputs, labels = dataset_arrays(recipe, "test")
    predictor = open_predictor(path, threads[0])
    row: dict[str, Any] = {"file": str(path), "format": predictor.describe(), "size_bytes": predictor.size_bytes(),
                           "test_accuracy": evaluate(predictor, (inputs, labels))["accuracy"]}  # fmt: skip
    example = timing_input(inputs, recipe.measure.sequence_length)
    with paused(PAUSE):
        for count in threads:
            predictor.threads = count
            if hasattr(predictor, "_session"):
                predictor._session = None  # ONNX Runtime fixes its threads when the session is made
            row[f"latency_ms_{count}t"] = speed(predictor, example, repeats, batch=1)["latency_ms_p50"]
    return row


PAUSE: list[int] = []  # --pause: processes stopped while a file is timed (a long training run beside the bench)


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP `pids` (and their children) for the block, SIGCONT after: timings on a quiet machine."""
    groups = [p for pid in pids for p in [pid, *children(pid)]]
    for pid in groups:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in groups:
            os.kill(pid, signal.SIGCONT)


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [n for c in found for n in [int(c), *children(int(c))]]


def run_runtime(runtime: str, models: dict[str, str], threads: list[int], repeats: int, out: Path) -> list[dict]:
    """Every model of `models` (role: source) in one runtime: teacher fp32, student fp32 and int8."""
    rows = []
    for role, source in models.items():
        for precision in ("fp32",) if role == "teacher" else ("fp32", "int8"):
            folder = out / runtime / f"{role}-{precision}"
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            path = make_file(source, runtime, precision, folder)
            row = {"runtime": runtime, "role": role, "precision": precision,
                   "export_seconds": round(time.perf_counter() - start, 1),
                   **measure_file(path, source, threads, repeats)}  # fmt: skip
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], threads: list[int]) -> str:
    lines = ["| runtime | model | format | test accuracy | size | " + " | ".join(f"latency b1 {t}t" for t in threads)
             + " | " + " | ".join(f"teacher / student {t}t" for t in threads) + " |",
             "|---" * (5 + 2 * len(threads)) + "|"]  # fmt: skip
    teachers = {r["runtime"]: r for r in rows if r["role"] == "teacher"}
    for r in rows:
        t = teachers.get(r["runtime"])
        ratios = [f"{t[f'latency_ms_{n}t'] / r[f'latency_ms_{n}t']:.1f}x" if t and r["role"] != "teacher" else "-"
                  for n in threads]  # fmt: skip
        lines.append(f"| {r['runtime']} | {r['role']} {r['precision']} | {r['format']} | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['size_bytes'] / 1024:.1f} KiB | "
                     + " | ".join(f"{r[f'latency_ms_{n}t']:.3f} ms" for n in threads) + " | " + " | ".join(ratios)
                     + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="the teacher: a checkpoint or run folder (left out: the student alone)")
    parser.add_argument("--student", required=True, help="the student: a run folder or checkpoint")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=500, help="timed calls at batch 1")
    parser.add_argument("--out", default="runs/bench-mobile")
    parser.add_argument("--json", help="write this runtime's rows here and stop (the LiteRT subprocess)")
    parser.add_argument("--pause", type=int, nargs="*", default=[], help="processes to stop while timing")
    args = parser.parse_args()
    PAUSE.extend(args.pause)
    out = Path(args.out)
    models = {**({"teacher": args.teacher} if args.teacher else {}), "student": args.student}
    rows: list[dict[str, Any]] = []
    for runtime in args.runtimes:
        if runtime == "litert" and importlib.util.find_spec("litert_torch") is None:
            if not LITERT_PYTHON.is_file():
                print("LiteRT: no .venv-litert (make .venv-litert/.tinykd-installed); its rows are left out")
                continue
            part = out / "litert.json"
            command = [str(LITERT_PYTHON), __file__, "--student", args.student, "--runtimes", "litert", "--threads",
                       *map(str, args.threads), "--repeats", str(args.repeats), "--out", str(out), "--json", str(part),
                       "--pause", *map(str, args.pause)]
            if args.teacher:
                command += ["--teacher", args.teacher]
            subprocess.run(command, check=True)
            rows += json.loads(part.read_text())
            continue
        rows += run_runtime(runtime, models, args.threads, args.repeats, out)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        return
    text = table(rows, args.threads)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mobile.md").write_text(text + "\n")
    (out / "mobile.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
