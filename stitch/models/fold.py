"""Fold each frozen BatchNorm into the convolution before it: a faster copy of a donor for inference.

A frozen donor in eval mode computes ``bn(conv(x))`` with fixed statistics, which is one
convolution with rescaled weights and a bias. Folding removes a full pass over every
pre-activation tensor (paper 1 measured BatchNorm at about 12 % of a TLM step on a CPU).
The copy agrees with the original within float32 rounding (about 1e-6 relative), not bit for
bit: the split-exactness guarantees of the model zoo hold for the original network, and
results computed with folding are reproducible among themselves.

Folding ``conv3`` into ``bn3`` makes the raw conv output disappear, so a conv cut point that a
study uses is kept unfolded (``keep``); the folded conv points are no longer stitchable in the
copy (asking for one is an error, never a silently different activation).
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .base import StitchableNetwork
from .resnet import BasicBlock, CifarResNet
from .tiny10 import Tiny10


def _fuse_sequential(seq: nn.Sequential) -> None:
    mods = list(seq)
    for i in range(len(mods) - 1):
        if isinstance(mods[i], nn.Conv2d) and isinstance(mods[i + 1], nn.BatchNorm2d):
            seq[i] = fuse_conv_bn_eval(mods[i], mods[i + 1])
            seq[i + 1] = nn.Identity()


def fold_batchnorm(net: StitchableNetwork, keep: Iterable[str] = ()) -> StitchableNetwork:
    """An eval-mode copy of ``net`` with BatchNorms folded, except after the conv points in ``keep``.

    Families other than the zoo's conv chains (and residual blocks) are returned unchanged.
    """
    if not isinstance(net, (Tiny10, CifarResNet)):  # e.g. traced torchvision/timm graphs: left as they are
        return net
    keep = {net.check_layer(k) for k in keep}
    was_training = net.training
    net.eval()
    fast = copy.deepcopy(net).eval()
    net.train(was_training)
    names = fast._stage_names
    folded = []
    for a, b in zip(names, names[1:]):
        conv, bn = fast._stage_mods[a], fast._stage_mods[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and a not in keep:
            fused = fuse_conv_bn_eval(conv, bn)
            fast._stage_mods[a], fast._stage_mods[b] = fused, nn.Identity()
            for attr, mod in list(fast.named_children()):  # keep .to(device) and the parameter list in step
                if mod is conv:
                    setattr(fast, attr, fused)
                elif mod is bn:
                    setattr(fast, attr, nn.Identity())
            folded.append(a)
    for block in fast.modules():
        if isinstance(block, BasicBlock):
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                _fuse_sequential(block.downsample)
    if folded:
        fast.drop_cut_points(folded)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


def to_channels_last(net: StitchableNetwork) -> StitchableNetwork:
    """Channels-last (NHWC) weights, in place; callers feed NHWC inputs (see ``prefers_channels_last``).

    oneDNN's CPU convolutions are much faster in this layout (about 1.7x for a TLM step of paper 1's
    Tiny-10, bench/phases.py); the values agree within float32 rounding.
    """
    net.to(memory_format=torch.channels_last)
    net.prefers_channels_last = True
    return net


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """Channels-last for a 4-d channels-last tensor (what a channels-last network returns), else contiguous."""
    cl = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def as_input_for(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory format ``net`` runs fastest on."""
    if x.dim() == 4 and getattr(net, "prefers_channels_last", False):
        return x.contiguous(memory_format=torch.channels_last)
    return x
