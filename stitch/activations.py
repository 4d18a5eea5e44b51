"""Activations as rows: one row per sample and spatial position (or token), one column per channel.

This is the layout of a 1x1 stitching layer (``rows(A) @ W + b``), of direct matching and of
the similarity indices that need more samples than features. Torch tensors and numpy arrays
alike; reshaping only, so values are unchanged. :func:`pool_activations` gives one row per
sample instead (spatial mean, CLS or mean token).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import ConfigError

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences


def to_rows(act: ArrayLike) -> ArrayLike:
    """Reshape activations so that each spatial position / token is one sample (row).

    * ``N x C x H x W`` (conv) -> ``(N*H*W) x C``; row ``n*H*W + h*W + w`` is ``act[n, :, h, w]``.
    * ``N x T x D`` (tokens)   -> ``(N*T) x D``; row ``n*T + t`` is ``act[n, t, :]``.
    * ``N x D`` is returned unchanged.

    Returns the same type (torch tensor or numpy array) as given; anything else raises ``ValueError``.
    """
    is_torch = isinstance(act, torch.Tensor)
    a = act if is_torch else np.asarray(act)
    if a.ndim == 4:
        c = a.shape[1]
        moved = a.permute(0, 2, 3, 1) if is_torch else np.transpose(a, (0, 2, 3, 1))
        return moved.reshape(-1, c)
    if a.ndim == 3:
        return a.reshape(-1, a.shape[2])
    if a.ndim == 2:
        return a
    raise ValueError(
        f"to_rows expects N x C x H x W, N x T x D or N x D activations; got shape {tuple(a.shape)}"
    )


def from_rows(rows: ArrayLike, like: ArrayLike) -> ArrayLike:
    """The inverse of :func:`to_rows`: rows back to the layout (and shape) of ``like``."""
    if like.ndim == 4:
        n, c, h, w = like.shape
        r = rows.reshape(n, h, w, c)
        if isinstance(r, torch.Tensor):
            return r.permute(0, 3, 1, 2).contiguous()
        return np.ascontiguousarray(np.transpose(r, (0, 3, 1, 2)))
    return rows.reshape(like.shape)


def pool_activations(h: torch.Tensor, tokens: str = "cls") -> torch.Tensor:
    """One float row per sample: N x C x H x W -> N x C (spatial mean); N x T x D -> N x D
    (``tokens="cls"``: token 0, ``"mean"``: the mean token); N x D as is."""
    if h.dim() == 4:
        return h.float().mean((2, 3))
    if h.dim() == 3:
        if tokens == "cls":
            return h[:, 0].float()
        if tokens == "mean":
            return h.float().mean(1)
        raise ConfigError(f"token pooling must be cls or mean, got {tokens!r}")
    if h.dim() == 2:
        return h.float()
    raise ValueError(f"cannot pool activations of shape {tuple(h.shape)}")
