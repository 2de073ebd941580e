"""The training engine (Accelerate underneath): loops, optimizers, schedules, devices."""

from tinykd.engine.engine import Engine, FitResult, make_loader
from tinykd.engine.runtime import available_devices, make_accelerator, resolve_device
from tinykd.engine.schedule import build_optimizer, lr_at

__all__ = ["Engine", "FitResult", "available_devices", "build_optimizer", "lr_at", "make_accelerator", "make_loader",
           "resolve_device"]  # fmt: skip
