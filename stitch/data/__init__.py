"""Data sets with a fast batched path, ``batches`` (see ``base``), and Lightning's dataloader hooks.

They do not import Lightning (seconds of start-up that only donor training needs):
``stitch.training.as_lightning`` adapts one for ``Trainer.fit``.

``build(name, **options)`` returns a data module by name; ``conf/data/<name>.yaml``
holds the defaults.
"""
from __future__ import annotations

import inspect
from typing import Any

from .base import ImageDataModule, StreamingDataModule
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


def in_memory_datasets() -> list[str]:
    """Data sets held in memory as uint8 tensors (``tensors()``); the others stream from disk."""
    return [n for n in list_datasets() if not issubclass(_REGISTRY[n], StreamingDataModule)]


def options_of(name: str) -> set[str]:
    """The keyword options a data set's module takes: its own and those of the bases it forwards
    ``**kwargs`` to (what ``conf/data/<name>.yaml`` may set, besides ``NOT_DATAMODULE_OPTIONS``)."""
    keys: set[str] = set()
    for klass in _REGISTRY[name].__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        keys |= {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return keys


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


__all__ = ["ImageDataModule", "build", "from_config", "in_memory_datasets", "list_datasets", "options_of"]
