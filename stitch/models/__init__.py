"""Model zoo: every family exposes the same stitchable interface (see ``base``).

>>> from stitch import models
>>> net = models.build("resnet20", num_classes=10, width=2)
>>> net.layers[:2]
['layer1.0', 'layer1.1']
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from .base import StitchableNetwork, UnknownLayerError
from .external import timm_model, torchvision_model
from .inception_v1 import inception_v1
from .resnet import resnet18, resnet20
from .tiny10 import tiny10
from .vit import vit_tiny

_REGISTRY: dict[str, Callable[..., StitchableNetwork]] = {}


def register(name: str, builder: Callable[..., StitchableNetwork]) -> None:
    """Add a model family (a builder taking ``num_classes``, ``in_channels`` and options)."""
    _REGISTRY[name] = builder


for _name, _builder in [("tiny10", tiny10), ("resnet20", resnet20), ("resnet18", resnet18),
                        ("inception_v1", inception_v1), ("vit_tiny", vit_tiny),
                        ("torchvision", torchvision_model), ("timm", timm_model)]:  # any torchvision/timm classifier
    register(_name, _builder)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def options_of(name: str) -> dict[str, Any]:
    """The options a family accepts, with their defaults."""
    sig = inspect.signature(_builder_of(name))
    return {k: p.default for k, p in sig.parameters.items() if k not in ("num_classes", "in_channels")}


def _builder_of(name: str) -> Callable[..., StitchableNetwork]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _REGISTRY[name]


def build(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> StitchableNetwork:
    """Build a stitchable network by registry name.

    Unknown options raise a ``ValueError`` listing the valid ones.
    """
    valid = options_of(name)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for model {name!r}; valid options: {sorted(valid)}")
    return _builder_of(name)(num_classes=num_classes, in_channels=in_channels, **options)


# options that choose where a network may be cut, not the network: neither its stored weights nor a
# run's result depend on them (torchvision/timm ``layers=[...]``)
CUT_POINT_OPTIONS = frozenset({"layers"})


def model_tag(name: str, **options: Any) -> str:
    """A readable, unique key for a family plus its non-default options (used by the model store)."""
    defaults = options_of(name)
    extra = [f"{k}={options[k]}" for k in sorted(options) if k in defaults and options[k] != defaults[k]]
    return "-".join([name, *extra])


__all__ = ["CUT_POINT_OPTIONS", "StitchableNetwork", "UnknownLayerError", "build", "list_models", "model_tag", "options_of", "register"]
