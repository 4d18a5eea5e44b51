"""Inception V1 (GoogLeNet, Szegedy et al. 2015) with BatchNorm, as used by paper 1
on CelebA (40 binary attributes: a multi-label head of 40 logits).

Stitchable layers: the three stem convolutions and the mixed (concatenation)
outputs ``mixed3a`` ... ``mixed5b``. Max-pools that sit between them belong to the
stage that follows, so cutting after a layer never skips a pool.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import StitchableNetwork, conv_bn_relu


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int):
        super().__init__()
        self.branch1 = conv_bn_relu(cin, c1, 1)
        self.branch2 = nn.Sequential(conv_bn_relu(cin, c3r, 1), conv_bn_relu(c3r, c3, 3, padding=1))
        # torchvision's GoogLeNet also uses a 3x3 here in place of the paper's 5x5
        self.branch3 = nn.Sequential(conv_bn_relu(cin, c5r, 1), conv_bn_relu(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), conv_bn_relu(cin, pool, 1))
        self.out_channels = c1 + c3 + c5 + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# name, (c1, c3r, c3, c5r, c5, pool), max-pool before the block
_MIXED = [
    ("mixed3a", (64, 96, 128, 16, 32, 32), True),
    ("mixed3b", (128, 128, 192, 32, 96, 64), False),
    ("mixed4a", (192, 96, 208, 16, 48, 64), True),
    ("mixed4b", (160, 112, 224, 24, 64, 64), False),
    ("mixed4c", (128, 128, 256, 24, 64, 64), False),
    ("mixed4d", (112, 144, 288, 32, 64, 64), False),
    ("mixed4e", (256, 160, 320, 32, 128, 128), False),
    ("mixed5a", (256, 160, 320, 32, 128, 128), True),
    ("mixed5b", (384, 192, 384, 48, 128, 128), False),
]


class _Head(nn.Module):
    def __init__(self, features: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)))


class InceptionV1(StitchableNetwork):
    family = "inception_v1"

    def __init__(self, num_classes: int = 40, in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True)  # noqa: E731
        stages: OrderedDict = OrderedDict()
        stages["conv1"] = conv_bn_relu(in_channels, 64, 7, stride=2, padding=3)
        stages["conv2"] = nn.Sequential(pool(), conv_bn_relu(64, 64, 1))
        stages["conv3"] = conv_bn_relu(64, 192, 3, padding=1)
        cin = 192
        for name, spec, pool_before in _MIXED:
            block = InceptionBlock(cin, *spec)
            stages[name] = nn.Sequential(pool(), block) if pool_before else block
            cin = block.out_channels
        self._set_chain(stages, _Head(cin, num_classes, dropout))


def inception_v1(num_classes: int = 40, in_channels: int = 3, dropout: float = 0.2) -> InceptionV1:
    return InceptionV1(num_classes, in_channels, dropout)
