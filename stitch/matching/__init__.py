"""Direct matching of representations (stitching layers fitted from activations alone).

One-shot, on arrays that fit in memory (rows = samples):

>>> W, b = direct(A, B)                    # least squares with bias: A @ W + b ~ B
>>> W, b = direct(A, B, kind="rank", rank=8)

Streaming over a data set (conv activations N x C x H x W, tokens N x T x D, or rows x C):

>>> stats = MatchingStatistics()
>>> for a, b in batches:
...     stats.update(a, b)
>>> W, b = solve(stats, kind="ls")
>>> r2(stats, W, b)

All results are float64.  See ``stitch.matching.direct`` for the numerical design.
"""
from __future__ import annotations

import torch

from .direct import (
    KINDS,
    MatchingError,
    MatchingStatistics,
    lasso,
    least_squares,
    procrustes,
    r2,
    reduced_rank,
    relative_squared_error,
    residual,
    solve,
)

__all__ = [
    "direct",
    "KINDS",
    "MatchingError",
    "MatchingStatistics",
    "lasso",
    "least_squares",
    "procrustes",
    "r2",
    "reduced_rank",
    "relative_squared_error",
    "residual",
    "solve",
]


def direct(A, B, kind: str = "ls", rank: int | None = None, alpha: float | None = None,
           bias: bool = True, **options):
    """Fit a direct-matching stitching layer ``A @ W + b ~ B`` on in-memory activations.

    Args:
        A, B: numpy arrays or torch tensors with rows = samples (``n x C1``, ``n x C2``); the
            layouts of ``MatchingStatistics.update`` (tokens, N x C x H x W) are accepted too.
            Any real dtype; computation is float64, chunked, on the device of torch ``A``.
        kind, rank, alpha, bias, options: as in :func:`solve`.

    Returns:
        ``(W, b)`` with W of shape C1 x C2 and b of shape C2 (zeros without a bias), float64:
        numpy arrays when both inputs are numpy/array-likes, otherwise torch tensors on the
        device of the statistics (that of ``A`` when it is a tensor).

    Raises:
        ValueError (``MatchingError``): mismatched row counts, NaN/Inf values, fewer than two
        rows, unknown kind or bad solver arguments.
    """
    torch_out = isinstance(A, torch.Tensor) or isinstance(B, torch.Tensor)
    device = A.device if isinstance(A, torch.Tensor) else (
        B.device if isinstance(B, torch.Tensor) else torch.device("cpu"))
    stats = MatchingStatistics(device=device).update(A, B, check_finite=True)
    W, b = solve(stats, kind=kind, rank=rank, alpha=alpha, bias=bias, **options)
    if torch_out:
        return W, b
    return W.cpu().numpy(), b.cpu().numpy()
