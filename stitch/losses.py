"""Classification losses shared by donor training, task loss matching and evaluation.

Multi-label tasks (CelebA attributes) use a sigmoid per output instead of one softmax: their
"cross-entropy" is the binary cross-entropy averaged over the attributes.
"""
from __future__ import annotations

import torch
from torch import nn


def label_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Mean cross-entropy to hard labels (multi-label: BCE to the 0/1 attribute targets)."""
    if multilabel:
        return nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    return nn.functional.cross_entropy(logits, y)


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0,
                       multilabel: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` to the teacher's distribution ``softmax(target_logits / T)``.

    Both sides are divided by the temperature T and the loss is scaled by T^2 (Hinton et al.), so
    gradients keep their size. Multi-label: BCE to ``sigmoid(target_logits / T)``, averaged over
    the attributes. ``reduction``: ``"mean"`` over the batch (a scalar) or ``"none"`` (one value
    per sample).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    t = temperature
    if multilabel:
        if reduction == "mean":
            return nn.functional.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(target_logits / t)) * t * t
        return nn.functional.binary_cross_entropy_with_logits(
            logits / t, torch.sigmoid(target_logits / t), reduction="none").mean(1) * t * t
    per_sample = -(torch.softmax(target_logits / t, dim=1) * torch.log_softmax(logits / t, dim=1)).sum(1)
    return (per_sample.mean() if reduction == "mean" else per_sample) * t * t
