"""Tiny-10 (Kornblith et al. 2019), the small CNN of paper 1.

Eight conv-BN-ReLU layers, global average pool, linear. Two padding schemes:

* ``padding="kornblith"`` (default): every 3x3 conv is "same"-padded except the
  7th, as in the paper that named the network;
* ``padding="none"``: no padding anywhere and convs with bias, as in the released
  stitching code of paper 1 (spatial 30, 28, 13, 11, 9, 4, 2, 2 at 32x32 input).
"""
from __future__ import annotations

from collections import OrderedDict

from .base import GlobalPoolLinear, StitchableNetwork, conv_bn_relu

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
            stages[f"layer{i}"] = conv_bn_relu(cin, cout * width, k, stride=s, padding=1 if same else 0,
                                               bias=padding == "none")
            cin = cout * width
        self._set_chain(stages, GlobalPoolLinear(cin, num_classes))


def tiny10(num_classes: int = 10, in_channels: int = 3, padding: str = "kornblith", width: int = 1) -> Tiny10:
    return Tiny10(num_classes, in_channels, padding, width)
