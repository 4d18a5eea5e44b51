"""CIFAR-style residual networks: ResNet-20 (He et al. 2016, width multiplier as in
paper 1 Fig. 3) and ResNet-18 (the CIFAR variant used by paper 2) with its
"same size" (stride 1 everywhere) and "same width" (64 channels everywhere) variants.

Modules are named as in torchvision and in paper 1's released ResNet-20
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``), so those
checkpoints load as they are. Cut points, in three groups:

* ``blocks`` (the default group): residual block outputs ``layer<stage>.<block>``, after
  the add and the ReLU;
* ``pre``: the same points before that ReLU, ``layer<stage>.<block>.add`` (the released
  code's ``Add`` module);
* ``stem``: ``conv1``, ``bn1`` (before the ReLU) and ``relu``.

Points inside a block's residual branch are not cut points: the shortcut bypasses
them, so the rest of the network would still need the block's own input.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from .base import StitchableNetwork, _Ref, pool_linear


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # inside the residual branch: never a cut point
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:  # 1x1-conv projection shortcut
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch + shortcut, before the final ReLU."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return out + (x if self.downsample is None else self.downsample(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activation(x))


class CifarResNet(StitchableNetwork):
    def __init__(self, blocks: list[int], widths: list[int], strides: list[int], num_classes: int,
                 in_channels: int = 3, stem_width: int | None = None, family: str = "resnet"):
        super().__init__()
        self.family = family
        stem_width = widths[0] if stem_width is None else stem_width
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        # not in-place anywhere on the chain: the stage before each ReLU is a cut point
        stages: OrderedDict = OrderedDict(conv1=self.conv1, bn1=self.bn1, relu=nn.ReLU())
        cin, pre, post = stem_width, [], []
        for s, (n, w, stride) in enumerate(zip(blocks, widths, strides), start=1):
            layer = nn.Sequential(*(BasicBlock(cin if b == 0 else w, w, stride if b == 0 else 1) for b in range(n)))
            setattr(self, f"layer{s}", layer)
            for b, block in enumerate(layer):
                stages[f"layer{s}.{b}.add"] = _Ref(block.pre_activation)
                stages[f"layer{s}.{b}"] = nn.ReLU()
                pre.append(f"layer{s}.{b}.add")
                post.append(f"layer{s}.{b}")
            cin = w
        self.fc = nn.Linear(cin, num_classes)
        self._set_chain(stages, _Ref(self._head), register=False, default_group="blocks",
                        groups={"blocks": post, "pre": pre, "stem": ["conv1", "bn1", "relu"]})

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return pool_linear(self.fc, h)

    def upgrade_state_dict(self, state: dict) -> dict:
        """Keys of earlier versions (``stages.layer1_0.shortcut.0.weight``, ``stages.stem.0``) to today's."""
        out = {}
        for k, v in state.items():
            k = re.sub(r"^stages\.stem\.0\.", "conv1.", k)
            k = re.sub(r"^stages\.stem\.1\.", "bn1.", k)
            k = re.sub(r"^stages\.layer(\d+)_(\d+)\.", r"layer\1.\2.", k)
            k = re.sub(r"\.shortcut\.", ".downsample.", k)
            out[re.sub(r"^head\.fc\.", "fc.", k)] = v
        return out


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
