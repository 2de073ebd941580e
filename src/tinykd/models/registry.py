"""The model registry and `create_model`, timm-style.

Every built-in constructor takes `num_classes` and `in_channels` (and may take
`image_size` and more keyword arguments). A spec is a registered name, `timm:NAME`,
`torchvision:NAME` or `hf:NAME_OR_DIR` (transformers; `in_channels` is ignored).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from tinykd.errors import TinykdError
from tinykd.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a wildcard (timm: and torchvision: specs are open-ended)."""
    return MODELS.list(pattern)


def create_model(spec: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a model from a spec. `None` kwargs are dropped so unset options keep the model's defaults."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if spec.startswith("timm:"):
        return _create_timm(spec[5:], num_classes, in_channels, kwargs)
    if spec.startswith("torchvision:"):
        return _create_torchvision(spec[12:], num_classes, in_channels, kwargs)
    if spec.startswith("hf:"):
        from tinykd.models.hf import create_hf_model  # imports transformers only when asked for

        _check_kwargs(spec, create_hf_model, kwargs)
        return create_hf_model(spec[3:], num_classes, **kwargs)
    constructor = MODELS.get(spec)
    _check_kwargs(spec, constructor, kwargs)
    return constructor(num_classes=num_classes, in_channels=in_channels, **kwargs)


def sized_for(spec: str, kwargs: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """`kwargs` with the data's `image_size` added for a registered constructor that takes one (an MLP's input
    width depends on it) and was not given one; other models adapt to the input size and are left alone."""
    if not image_size or "image_size" in kwargs or ":" in spec or spec not in MODELS:
        return kwargs
    takes = "image_size" in inspect.signature(MODELS.get(spec)).parameters
    return {**kwargs, "image_size": image_size} if takes else kwargs


def _check_kwargs(spec: str, constructor: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    params = inspect.signature(constructor).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n in params if n not in ("num_classes", "in_channels")]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise TinykdError(
            f"model '{spec}' takes no argument '{unknown[0]}'; allowed: {', '.join(allowed) or '(none)'}"
        )


def _create_timm(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.list_models(name):
        raise TinykdError(f"unknown timm model '{name}'; see timm.list_models() for the names")
    pretrained = bool(kwargs.pop("pretrained", False))
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as exc:
        raise TinykdError(f"timm model '{name}' rejected its arguments: {exc}") from None


def _create_torchvision(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise TinykdError(f"unknown torchvision model '{name}'; known: {', '.join(available)}")
    if in_channels != 3:
        raise TinykdError(
            f"torchvision:{name} takes 3 input channels and the data has {in_channels}; "
            "use a registered model or timm:NAME (which adapts in_chans)"
        )
    try:
        return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise TinykdError(f"torchvision model '{name}' rejected its arguments: {exc}") from None
