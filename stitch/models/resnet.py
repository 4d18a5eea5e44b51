"""CIFAR-style residual networks: ResNet-20 (He et al. 2016, width multiplier as in
paper 1 Fig. 3) and ResNet-18 (the CIFAR variant used by paper 2) with its
"same size" (stride 1 everywhere) and "same width" (64 channels everywhere) variants.

Stitchable layers are the residual block outputs (after the add and the ReLU),
named ``layer<stage>.<block>`` as in torchvision.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import GlobalPoolLinear, StitchableNetwork, conv_bn_relu


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # 1x1-conv projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(StitchableNetwork):
    def __init__(self, blocks: list[int], widths: list[int], strides: list[int], num_classes: int,
                 in_channels: int = 3, stem_width: int | None = None, family: str = "resnet"):
        super().__init__()
        self.family = family
        stem_width = widths[0] if stem_width is None else stem_width
        stages: OrderedDict = OrderedDict(stem=conv_bn_relu(in_channels, stem_width, 3, padding=1))
        cin = stem_width
        for s, (n, w, stride) in enumerate(zip(blocks, widths, strides), start=1):
            for b in range(n):
                stages[f"layer{s}.{b}"] = BasicBlock(cin, w, stride if b == 0 else 1)
                cin = w
        self._set_chain(stages, GlobalPoolLinear(cin, num_classes),
                        stitchable=[k for k in stages if k != "stem"])


def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1) -> CifarResNet:
    """ResNet-20: blocks [3,3,3], widths 16/32/64 times ``width``."""
    if width <= 0:
        raise ValueError(f"resnet20 width multiplier must be positive, got {width}")
    widths = [max(1, round(c * width)) for c in (16, 32, 64)]
    return CifarResNet([3, 3, 3], widths, [1, 2, 2], num_classes, in_channels, family="resnet20")


RESNET18_VARIANTS = ("standard", "same_size", "same_width")


def resnet18(num_classes: int = 10, in_channels: int = 3, variant: str = "standard") -> CifarResNet:
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, blocks [2,2,2,2].

    ``same_size``: stride 1 in every stage, so every block output is 32x32 at 32x32 input.
    ``same_width``: 64 channels in every stage.
    """
    if variant not in RESNET18_VARIANTS:
        raise ValueError(f"resnet18 variant must be one of {RESNET18_VARIANTS}, got {variant!r}")
    widths = [64] * 4 if variant == "same_width" else [64, 128, 256, 512]
    strides = [1] * 4 if variant == "same_size" else [1, 2, 2, 2]
    return CifarResNet([2, 2, 2, 2], widths, strides, num_classes, in_channels, stem_width=64, family="resnet18")
