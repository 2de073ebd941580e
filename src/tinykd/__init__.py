"""tinykd: make deep-learning models small by knowledge distillation, and train them anywhere."""

from tinykd.distill import Distiller, FeatureTaps
from tinykd.losses import LOSSES, LossTerm, Outputs, register_loss
from tinykd.models import create_model, list_models, register_model
from tinykd.recipes import Recipe, load_recipe
from tinykd.run import RunResult, run
from tinykd.version import __version__

__all__ = ["LOSSES", "Distiller", "FeatureTaps", "LossTerm", "Outputs", "Recipe", "RunResult", "__version__",
           "create_model", "list_models", "load_recipe", "register_loss", "register_model", "run"]  # fmt: skip
