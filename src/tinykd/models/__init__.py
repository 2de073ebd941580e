"""Models by name: the distillation-benchmark family, small CNNs, timm and torchvision."""

from tinykd.models import cifar_resnet, detection, mobilenetv2, shufflenetv2, small_cnn, vgg, wrn  # noqa: F401
from tinykd.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
