"""Distillation: the Distiller, feature taps and adapters."""

from tinykd.distill.distiller import Distiller, call_model
from tinykd.distill.taps import FeatureTaps, find_module, first_tensor

__all__ = ["Distiller", "FeatureTaps", "call_model", "find_module", "first_tensor"]
