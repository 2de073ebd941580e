"""The training engine (Accelerate underneath): the loop, optimizers, schedules, devices, faults and resume."""

from tinykd.data.loader import make_loader
from tinykd.engine.engine import Engine
from tinykd.engine.resume import FitResult
from tinykd.engine.runtime import available_devices, make_accelerator, resolve_device
from tinykd.engine.schedule import build_optimizer, lr_at

__all__ = ["Engine", "FitResult", "available_devices", "build_optimizer", "lr_at", "make_accelerator", "make_loader",
           "resolve_device"]  # fmt: skip
