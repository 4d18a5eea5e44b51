"""Data sets with a fast batched path, ``batches`` (see ``base``), and Lightning's dataloader hooks.

They do not import Lightning (seconds of start-up that only donor training needs):
``stitch.training.as_lightning`` adapts one for ``Trainer.fit``.

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


# keys of conf/data/*.yaml read by other parts of the config (e.g. the TLM recipe), not data module options
NOT_DATAMODULE_OPTIONS = {"name", "tlm_lr"}


def from_config(data_cfg: dict[str, Any], **overrides: Any) -> ImageDataModule:
    """The data module of a ``conf/data`` entry (as a dict), with option overrides."""
    opts = {k: v for k, v in dict(data_cfg).items() if k not in NOT_DATAMODULE_OPTIONS}
    opts.update(overrides)
    return build(data_cfg["name"], **opts)


def build(name: str, **options: Any) -> ImageDataModule:
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(list_datasets())}")
    return _REGISTRY[name](**options)


__all__ = ["ImageDataModule", "build", "from_config", "list_datasets"]
