"""Stitching layers: the small affine maps that join two half-networks.

* conv -> conv: optional bilinear resize of the source to the target's spatial
  size (no anti-aliasing, as in paper 2), then a 1x1 convolution with bias;
* tokens -> tokens: one linear map with bias applied to every token (CLS included);
* conv -> tokens (CNN -> ViT, as Bansal et al. 2021): bilinear resize of the map to the
  target's g x g patch grid, flattened row-major to g*g tokens (timm's patch order); a
  target with a CLS token (T = g*g + 1) gets a CLS *input* token first, the spatial mean
  of the resized map; then one linear map per token;
* tokens -> conv (ViT -> CNN): the CLS token (if any) is dropped, the g*g patch tokens
  are folded to a D x g x g map, bilinearly resized to the target's H x W, then a 1x1
  convolution;
* any kind with ``rank=k``: a bottleneck W = W1 W2 of rank k (paper 1 Sec. 7).

Every layer exposes its affine map as ``(W, b)`` with ``rows(A) @ W + b`` (rows:
:func:`stitch.activations.to_rows`), the
convention of :mod:`stitch.matching`, so direct matching can set it and
similarity code can read it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class StitchingLayer(nn.Module):
    """Base: ``prepare`` (e.g. resize) then an affine map on the channel/feature axis."""

    def __init__(self, c_in: int, c_out: int, rank: int | None = None):
        super().__init__()
        if rank is not None and not 1 <= rank <= min(c_in, c_out):
            raise ConfigError(f"stitching rank must be in 1..{min(c_in, c_out)}, got {rank}")
        self.c_in, self.c_out, self.rank = c_in, c_out, rank
        if rank is None:
            self.weight = nn.Parameter(torch.empty(c_in, c_out))
        else:
            self.w1 = nn.Parameter(torch.empty(c_in, rank))
            self.w2 = nn.Parameter(torch.empty(rank, c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the default init of nn.Linear / a 1x1 nn.Conv2d (fan_in = c_in)
        bound = 1.0 / self.c_in ** 0.5
        for p in ([self.weight] if self.rank is None else [self.w1, self.w2]):
            nn.init.uniform_(p, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def matrix(self) -> torch.Tensor:
        """The C_in x C_out stitching matrix W."""
        return self.weight if self.rank is None else self.w1 @ self.w2

    @torch.no_grad()
    def set_affine(self, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
        """Set the map to ``a @ W + b`` (for a rank-k layer W is factorised by SVD)."""
        W = torch.as_tensor(W)
        if tuple(W.shape) != (self.c_in, self.c_out):
            raise ValueError(f"stitching matrix must be {self.c_in} x {self.c_out}, got {tuple(W.shape)}")
        dev, dt = self.bias.device, self.bias.dtype
        if self.rank is None:
            self.weight.copy_(W.to(dev, dt))
        else:
            U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
            r = self.rank
            self.w1.copy_((U[:, :r] * S[:r].sqrt()).to(dev, dt))
            self.w2.copy_((S[:r].sqrt()[:, None] * Vh[:r]).to(dev, dt))
        self.bias.copy_(torch.zeros(self.c_out) if b is None else torch.as_tensor(b).to(dev, dt))

    @torch.no_grad()
    def set_identity(self) -> None:
        """W = I (C_in == C_out), the start of paper 1's CKA-penalty experiment; rectangular: partial identity."""
        self.set_affine(torch.eye(self.c_in, self.c_out), None)

    def prepare(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.prepare(h)
        if not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.bias.dtype)  # e.g. float16 cached activations, float32 parameters
        W = self.matrix
        if h.dim() == 4:  # a 1x1 convolution is a matmul on the channel axis
            return nn.functional.conv2d(h, W.t()[:, :, None, None], self.bias)
        return h @ W + self.bias


def _resize(h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize without anti-aliasing (paper 2's choice); a no-op at the same size."""
    if tuple(h.shape[-2:]) == tuple(size):
        return h
    return nn.functional.interpolate(h, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)


class ConvStitch(StitchingLayer):
    """1x1 convolution with bias; bilinear resize first when spatial sizes differ."""

    def __init__(self, c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int],
                 rank: int | None = None):
        super().__init__(c_in, c_out, rank)
        self.size_in, self.size_out = tuple(size_in), tuple(size_out)

    def prepare(self, h: torch.Tensor) -> torch.Tensor:
        return _resize(h, self.size_out)

    def extra_repr(self) -> str:
        return f"{self.c_in} -> {self.c_out}, {self.size_in} -> {self.size_out}, rank={self.rank}"


def token_grid(tokens: int, shape: tuple[int, ...] | None = None) -> tuple[int, bool]:
    """``(g, has_cls)`` for a sequence of ``tokens`` = g*g patch tokens, or g*g + 1 with a CLS token first.

    Raises ConfigError for any other count (e.g. several register tokens or a non-square grid):
    such a sequence cannot be folded to / unfolded from a feature map.
    """
    for cls in (False, True):
        g = round((tokens - cls) ** 0.5)
        if g >= 1 and g * g == tokens - cls:
            return g, cls
    raise ConfigError(f"incompatible layers: token activations {tuple(shape or (tokens,))} have {tokens} tokens, "
                      f"neither g*g (a square patch grid) nor g*g + 1 (a grid plus a CLS token), so they cannot "
                      f"be matched to the positions of a convolutional feature map")


class ConvToTokens(StitchingLayer):
    """CNN -> ViT: resize to the patch grid, one token per position (+ a pooled CLS token), a linear map per token."""

    def __init__(self, c_in: int, c_out: int, size_in: tuple[int, int], tokens: int, rank: int | None = None):
        super().__init__(c_in, c_out, rank)
        self.size_in, self.tokens = tuple(size_in), tokens
        self.grid, self.cls = token_grid(tokens)

    def prepare(self, h: torch.Tensor) -> torch.Tensor:
        h = _resize(h, (self.grid, self.grid))
        t = h.flatten(2).transpose(1, 2)  # N x g*g x C, row-major like timm's patch embedding
        if self.cls:
            # the CLS input is the global average pool of the resized map: a fixed rule, so the
            # shared affine map sends it to the target CLS and DM fits that row with the others
            t = torch.cat([t.mean(1, keepdim=True), t], 1)
        return t

    def extra_repr(self) -> str:
        return (f"{self.c_in} -> {self.c_out}, {self.size_in} -> {self.grid}x{self.grid} tokens"
                f"{' + CLS' if self.cls else ''}, rank={self.rank}")


class TokensToConv(StitchingLayer):
    """ViT -> CNN: drop the CLS token, fold patch tokens to a map, resize to the target, then a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, tokens: int, size_out: tuple[int, int], rank: int | None = None):
        super().__init__(c_in, c_out, rank)
        self.tokens, self.size_out = tokens, tuple(size_out)
        self.grid, self.cls = token_grid(tokens)

    def prepare(self, h: torch.Tensor) -> torch.Tensor:
        if self.cls:
            h = h[:, 1:]  # a CNN has no global position to receive it
        h = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], self.grid, self.grid)  # N x D x g x g
        return _resize(h, self.size_out)

    def extra_repr(self) -> str:
        return (f"{self.c_in} -> {self.c_out}, {self.grid}x{self.grid} tokens{' + CLS' if self.cls else ''}"
                f" -> {self.size_out}, rank={self.rank}")


class TokenStitch(StitchingLayer):
    """A linear map with bias applied to every token."""

    def extra_repr(self) -> str:
        return f"{self.c_in} -> {self.c_out} per token, rank={self.rank}"


def build_stitching_layer(src_shape: tuple[int, ...], dst_shape: tuple[int, ...], rank: int | None = None
                          ) -> StitchingLayer:
    """The stitching layer joining activations of shape ``src_shape`` to ``dst_shape`` (no batch dim)."""
    if len(src_shape) == 3 and len(dst_shape) == 3:
        return ConvStitch(src_shape[0], dst_shape[0], src_shape[1:], dst_shape[1:], rank)
    if len(src_shape) == 2 and len(dst_shape) == 2:
        if src_shape[0] != dst_shape[0]:
            raise ConfigError(f"cannot stitch token sequences of different lengths: {src_shape[0]} -> "
                              f"{dst_shape[0]} tokens (use the same image and patch size)")
        return TokenStitch(src_shape[1], dst_shape[1], rank)
    if len(src_shape) == 3 and len(dst_shape) == 2:
        token_grid(dst_shape[0], dst_shape)  # fail first, naming the whole shape
        return ConvToTokens(src_shape[0], dst_shape[1], src_shape[1:], dst_shape[0], rank)
    if len(src_shape) == 2 and len(dst_shape) == 3:
        token_grid(src_shape[0], src_shape)
        return TokensToConv(src_shape[1], dst_shape[0], src_shape[0], dst_shape[1:], rank)
    kinds = {3: "convolutional (C, H, W)", 2: "token (T, D)"}
    raise ConfigError(f"incompatible layers: source activations are {kinds.get(len(src_shape), src_shape)} "
                      f"{tuple(src_shape)}, target {kinds.get(len(dst_shape), dst_shape)} {tuple(dst_shape)}")
