"""Data sets as LightningDataModules with one extra fast path, ``batches`` (see ``base``).

``build(name, **options)`` returns a data module by name; ``conf/data/<name>.yaml``
holds the defaults.
"""
from __future__ import annotations

from typing import Any

from .base import ImageDataModule
from .celeba import CelebADataModule
from .cifar10 import CIFAR10DataModule
from .digits import DigitsDataModule
from .imagenet import ImageNetDataModule
from .svhn import SVHNDataModule
from .synthetic import SyntheticDataModule

_REGISTRY: dict[str, type[ImageDataModule]] = {
    "digits": DigitsDataModule,
    "synthetic": SyntheticDataModule,
    "cifar10": CIFAR10DataModule,
    "svhn": SVHNDataModule,
    "celeba": CelebADataModule,
    "imagenet": ImageNetDataModule,
}


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, **options: Any) -> ImageDataModule:
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(list_datasets())}")
    return _REGISTRY[name](**options)


__all__ = ["ImageDataModule", "build", "list_datasets"]
