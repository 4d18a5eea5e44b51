"""ViT-Ti (Dosovitskiy et al. 2021) built with timm, as used by paper 2.

Defaults follow timm's ``vit_tiny_patch16_224`` (embed 192, depth 12, 3 heads, CLS
token); ``img_size``/``patch_size`` are options so the same network runs on 32x32
images (e.g. patch 4 -> 64 + 1 tokens). Stitchable layers are the residual stream
after every block, ``blocks.0`` ... ``blocks.11``: tensors of shape (tokens, 192).
Weights are never downloaded (``pretrained`` is not an option here).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .base import StitchableNetwork


class _Embed(nn.Module):
    """Patch embedding, CLS token and position embedding (timm's own methods)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = [vit]  # a plain list: do not register the whole ViT twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit[0]
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)


class _Head(nn.Module):
    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = [vit]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        vit = self.vit[0]
        return vit.forward_head(vit.norm(h))


class ViT(StitchableNetwork):
    family = "vit_tiny"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 3, drop_path_rate: float = 0.0):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        # the timm module owns every parameter; stages only reference it
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_channels,
                                     num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                                     num_heads=num_heads, drop_path_rate=drop_path_rate)
        stages: OrderedDict = OrderedDict(embed=_Embed(self.vit))
        for i, block in enumerate(self.vit.blocks):
            stages[f"blocks.{i}"] = block
        blocks = [k for k in stages if k != "embed"]
        self._set_chain(stages, _Head(self.vit), stitchable=blocks, groups={"blocks": blocks},
                        register=False)


def vit_tiny(num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, patch_size: int = 16,
             depth: int = 12, drop_path_rate: float = 0.0) -> ViT:
    return ViT(num_classes, in_channels, img_size, patch_size, 192, depth, 3, drop_path_rate)
