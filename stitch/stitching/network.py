"""The stitched network F = T_{model2, M} o S o R_{model1, L}.

Both donors are frozen: their parameters never require gradients and they stay in
eval mode whatever ``train()`` is called with, so BatchNorm running statistics
never change (a known bug of one public stitching codebase).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import StitchableNetwork
from .layers import StitchingLayer, build_stitching_layer


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class StitchedNetwork(nn.Module):
    def __init__(self, front: StitchableNetwork, back: StitchableNetwork, layer: str, target_layer: str,
                 stitch: StitchingLayer | None = None, input_shape: tuple[int, ...] = (3, 32, 32),
                 rank: int | None = None):
        super().__init__()
        self.layer = front.check_layer(layer)
        self.target_layer = back.check_layer(target_layer)
        self.front = freeze(front)
        self.back = freeze(back)
        if stitch is None:
            src = front.layer_shapes(input_shape)[self.layer]
            dst = back.layer_shapes(input_shape)[self.target_layer]
            stitch = build_stitching_layer(src, dst, rank)
        self.stitch = stitch

    def train(self, mode: bool = True) -> "StitchedNetwork":
        self.training = mode
        self.stitch.train(mode)
        self.front.eval()
        self.back.eval()
        return self

    def source(self, x: torch.Tensor) -> torch.Tensor:
        """Model 1's activation at the source layer (A)."""
        return self.front.forward_to(x, self.layer)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Model 2's activation at the target layer (B)."""
        return self.back.forward_to(x, self.target_layer)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Model 2's task map from the target layer."""
        return self.back.forward_from(h, self.target_layer)

    def forward_from_source(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.stitch(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a = self.source(x)
        return self.forward_from_source(a)
