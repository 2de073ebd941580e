"""Training img/s of one fixed distillation recipe on each backend present: cpu, xla (on CPU here), cuda.

Each backend runs in its own process (XLA in the .venv-xla environment, with PJRT_DEVICE=CPU unless set),
with the same recipe: the demo's fmnist-distill (resnet8x4 -> cnn_small), a fixed number of steps.

    python bench/devices.py                    # 60 steps of batch 128 per backend
    python bench/devices.py --steps 200 --set runtime.precision=bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def backends() -> list[tuple[str, str, dict[str, str]]]:
    """(name, python executable, extra environment) for each backend this machine has."""
    found = [("cpu", sys.executable, {"PJRT_DEVICE": ""})]
    xla_python = ROOT / ".venv-xla" / "bin" / "python"
    if xla_python.exists():
        found.append(("xla", str(xla_python), {"PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU")}))
    import torch

    if torch.cuda.is_available():
        found.append(("cuda", sys.executable, {}))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=f"runs/devices-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    rows = []
    for name, python, extra in backends():
        out = Path(args.out) / name
        cmd = [python, "-m", "tinykd", "distill", "fmnist-distill", "--out", str(out),
               "--set", f"runtime.device={name}", "--set", "train.epochs=1",
               "--set", f"train.max_steps_per_epoch={args.steps}", "--set", f"data.train_subset={args.steps * 128}",
               "--set", "measure.enabled=false", *[a for o in args.overrides for a in ("--set", o)]]  # fmt: skip
        env = {**os.environ, **extra}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"backend": name, "error": proc.stderr.strip().splitlines()[-1]})
            continue
        report = json.loads((out / "report.json").read_text())
        xla = report.get("xla", {})
        rows.append({"backend": name, "device": report["device"], "train_img_per_s": report["train_samples_per_s"],
                     "train_seconds": report["train_seconds"], "wall_seconds": round(time.perf_counter() - start, 1),
                     "compilations": xla.get("compilations"), "executions": xla.get("executions"),
                     "steps": xla.get("train_steps", args.steps)})  # fmt: skip
    print(f"fmnist-distill, {args.steps} steps of batch 128, overrides {args.overrides or 'none'}\n")
    print("| backend | device | train img/s | train s | wall s | compilations | executions | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backend']} | error: {r['error']} |")
        else:
            print(f"| {r['backend']} | {r['device']} | {r['train_img_per_s']:.0f} | {r['train_seconds']} | "
                  f"{r['wall_seconds']} | {r['compilations'] or '-'} | {r['executions'] or '-'} | {r['steps']} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "devices.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
