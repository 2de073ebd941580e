"""Distillation: the Distiller, feature taps and adapters."""

from tinykd.distill.distiller import Distiller
from tinykd.distill.taps import FeatureTaps, find_module, first_tensor
from tinykd.models.outputs import call_model

__all__ = ["Distiller", "FeatureTaps", "call_model", "find_module", "first_tensor"]
