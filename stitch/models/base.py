"""The uniform interface every stitchable network implements.

A stitchable network is an ordered chain of *stages* followed by a *head*::

    x -> stage_0 -> stage_1 -> ... -> stage_k -> head -> logits

Some stages end at a stitchable layer (their output is a representation one can
cut at); others are internal glue (e.g. a max-pool). ``forward_to(x, L)`` runs the
chain up to and including the stage named ``L``; ``forward_from(h, L)`` runs the
rest. Because both halves call exactly the same modules in the same order as
``forward``, ``forward_from(forward_to(x, L), L) == forward(x)`` holds bit for bit,
with no forward hooks involved.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn


class UnknownLayerError(ValueError):
    """Raised for a layer name the network does not expose."""


class StitchableNetwork(nn.Module):
    """Base class: subclasses call ``_set_chain`` in ``__init__``."""

    #: registry name of the family (set by subclasses)
    family: str = ""

    def _set_chain(self, stages: "OrderedDict[str, nn.Module]", head: nn.Module,
                   stitchable: Iterable[str] | None = None, register: bool = True) -> None:
        # ``register=False`` when the stages are already owned by another submodule
        # (e.g. timm's ViT), so parameters are not listed twice in the state dict.
        if register:
            # ModuleDict keys cannot contain '.', layer names (``layer1.0``) can
            self.stages = nn.ModuleDict({k.replace('.', '_'): m for k, m in stages.items()})
            self.head = head
        self._stage_mods = dict(stages)
        self._head_mod = head
        names = list(stages.keys())
        self._stage_names = names
        stitchable = names if stitchable is None else list(stitchable)
        unknown = [n for n in stitchable if n not in names]
        if unknown:
            raise ValueError(f"stitchable layers {unknown} are not stages of {type(self).__name__}")
        self._layers = stitchable

    # ----------------------------------------------------------------- interface
    @property
    def layers(self) -> list[str]:
        """Stitchable layer names, in forward order."""
        return list(self._layers)

    def check_layer(self, layer: str) -> str:
        if layer not in self._layers:
            raise UnknownLayerError(
                f"unknown layer {layer!r} for model {self.family or type(self).__name__}; "
                f"valid layers are: {', '.join(self._layers)}")
        return layer

    def forward_to(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Representation map R_L: the activation at (after) ``layer``."""
        self.check_layer(layer)
        for name in self._stage_names:
            x = self._stage_mods[name](x)
            if name == layer:
                return x
        raise AssertionError("unreachable")

    def forward_from(self, h: torch.Tensor, layer: str) -> torch.Tensor:
        """Task map T_L: the logits given the activation at ``layer``."""
        self.check_layer(layer)
        start = self._stage_names.index(layer) + 1
        for name in self._stage_names[start:]:
            h = self._stage_mods[name](h)
        return self._head_mod(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._stage_names:
            x = self._stage_mods[name](x)
        return self._head_mod(x)

    @torch.no_grad()
    def layer_shapes(self, input_shape: tuple[int, ...]) -> "OrderedDict[str, tuple[int, ...]]":
        """Activation shape (without batch dim) of every stitchable layer for ``input_shape`` (C, H, W)."""
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(1, *input_shape, device=next(self.parameters()).device)
            shapes: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()
            for name in self._stage_names:
                x = self._stage_mods[name](x)
                if name in self._layers:
                    shapes[name] = tuple(x.shape[1:])
            return shapes
        finally:
            self.train(was_training)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 bias: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GlobalPoolLinear(nn.Module):
    """Global average pool + linear classifier (the head of the CNNs here)."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))
