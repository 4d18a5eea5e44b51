"""Tiny-10 (Kornblith et al. 2019), the small CNN of paper 1.

Eight conv-BN-ReLU layers, global average pool, linear. Two padding schemes:

* ``padding="kornblith"`` (default): every 3x3 conv is "same"-padded except the
  7th, as in the paper that named the network;
* ``padding="none"``: no padding anywhere and convs with bias, as in the released
  stitching code of paper 1 (spatial 30, 28, 13, 11, 9, 4, 2, 2 at 32x32 input).

Modules are named as in paper 1's released code (``conv1..8``, ``bn1..8``, ``fc``), so
its checkpoints load as they are. Every one of the 24 points is a cut point, in three
groups: ``conv`` (raw conv outputs), ``bn`` (after BatchNorm, *before* the ReLU: where
the released code cuts, e.g. ``bn3``) and ``relu`` (post-activation, the default
group; ``layer1..8`` are aliases, the names of earlier versions).
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from .base import StitchableNetwork, _Ref, pool_linear

# (out channels, kernel, stride) of the eight convolutions
_SPEC = [(16, 3, 1), (16, 3, 1), (32, 3, 2), (32, 3, 1), (32, 3, 1), (64, 3, 2), (64, 3, 1), (64, 1, 1)]
PADDINGS = ("kornblith", "none")


class Tiny10(StitchableNetwork):
    family = "tiny10"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, padding: str = "kornblith",
                 width: int = 1):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"tiny10 padding must be one of {PADDINGS}, got {padding!r}")
        stages: OrderedDict = OrderedDict()
        cin = in_channels
        for i, (cout, k, s) in enumerate(_SPEC, start=1):
            same = padding == "kornblith" and k == 3 and i != 7
            conv = nn.Conv2d(cin, cout * width, k, stride=s, padding=1 if same else 0, bias=padding == "none")
            bn = nn.BatchNorm2d(cout * width)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", bn)
            # not in-place: the BatchNorm output is a cut point and must survive the rest of the forward
            stages[f"conv{i}"], stages[f"bn{i}"], stages[f"relu{i}"] = conv, bn, nn.ReLU()
            cin = cout * width
        self.fc = nn.Linear(cin, num_classes)
        groups = {g: [f"{g}{i}" for i in range(1, 9)] for g in ("relu", "bn", "conv")}
        self._set_chain(stages, _Ref(self._head), register=False, groups=groups, default_group="relu",
                        aliases={f"layer{i}": f"relu{i}" for i in range(1, 9)})

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return pool_linear(self.fc, h)

    def upgrade_state_dict(self, state: dict) -> dict:
        """Keys of earlier versions (``stages.layer3.0.weight``, ``head.fc.weight``) to today's."""
        out = {}
        for k, v in state.items():
            k = re.sub(r"^stages\.layer(\d)\.0\.", r"conv\1.", k)
            k = re.sub(r"^stages\.layer(\d)\.1\.", r"bn\1.", k)
            out[re.sub(r"^head\.fc\.", "fc.", k)] = v
        return out


def tiny10(num_classes: int = 10, in_channels: int = 3, padding: str = "kornblith", width: int = 1) -> Tiny10:
    return Tiny10(num_classes, in_channels, padding, width)
