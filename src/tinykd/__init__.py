"""tinykd: make deep-learning models small by knowledge distillation, and train them anywhere."""

import logging as _logging

from tinykd.distill import Distiller, FeatureTaps
from tinykd.losses import LOSSES, LossTerm, Outputs, register_loss
from tinykd.models import create_model, list_models, register_model
from tinykd.recipes import Recipe, load_recipe
from tinykd.run import RunResult, run
from tinykd.version import __version__

# transformers imports torchao whenever it is installed (the `qat` extra), and torchao 0.18 registers enums that
# torch 2.14 warns about: two lines on every text run that say nothing about the run. Only those are dropped.
_logging.getLogger("torch.utils._pytree").addFilter(
    lambda record: "is an Enum subclass and is now natively supported" not in str(record.msg)
)

__all__ = ["LOSSES", "Distiller", "FeatureTaps", "LossTerm", "Outputs", "Recipe", "RunResult", "__version__",
           "create_model", "list_models", "load_recipe", "register_loss", "register_model", "run"]  # fmt: skip
