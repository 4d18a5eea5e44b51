"""stitch.losses: the soft cross-entropy (to a teacher's softmax / sigmoids) and the label loss, by hand."""
from __future__ import annotations

import math

import pytest
import torch

from stitch.losses import label_loss, soft_cross_entropy


def test_soft_cross_entropy_equals_hand_computed_values():
    # teacher p = (1/2, 1/2), student q = (1/4, 3/4): CE = -(ln 1/4 + ln 3/4) / 2
    logits, target = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[0.0, 0.0]])
    want = -(math.log(1 / 4) + math.log(3 / 4)) / 2
    assert float(soft_cross_entropy(logits, target)) == pytest.approx(want, rel=1e-6)
    # T = 2: both sides divided by 2 (p = (1/3, 2/3), q = (1/4, 3/4)), the loss scaled by T^2 = 4
    hot_logits, hot_target = torch.tensor([[0.0, 2 * math.log(3)]]), torch.tensor([[0.0, 2 * math.log(2)]])
    want_t = -4 * (math.log(1 / 4) / 3 + 2 * math.log(3 / 4) / 3)
    assert float(soft_cross_entropy(hot_logits, hot_target, temperature=2.0)) == pytest.approx(want_t, rel=1e-6)


def test_soft_cross_entropy_per_sample_and_batch_mean():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    per = soft_cross_entropy(logits, target, reduction="none")
    manual = -(torch.softmax(target, 1) * torch.log_softmax(logits, 1)).sum(1)
    assert per.shape == (5,) and torch.equal(per, manual)  # the evaluation's per-sample values, bit for bit
    assert torch.equal(soft_cross_entropy(logits, target), manual.mean())
    with pytest.raises(ValueError, match="reduction"):
        soft_cross_entropy(logits, target, reduction="sum")


def test_multilabel_soft_cross_entropy_is_bce_to_the_teacher_sigmoids():
    # attribute 1: teacher sigmoid(0) = 1/2, student sigmoid(ln 3) = 3/4; attribute 2: both sigmoid(0) = 1/2
    logits, target = torch.tensor([[math.log(3), 0.0]]), torch.tensor([[0.0, 0.0]])
    a1 = -(0.5 * math.log(3 / 4) + 0.5 * math.log(1 / 4))
    a2 = math.log(2)
    assert float(soft_cross_entropy(logits, target, multilabel=True)) == pytest.approx((a1 + a2) / 2, rel=1e-6)
    per = soft_cross_entropy(logits.repeat(3, 1), target.repeat(3, 1), multilabel=True, reduction="none")
    assert per.shape == (3,) and torch.allclose(per, torch.full((3,), (a1 + a2) / 2))


def test_label_loss():
    logits = torch.tensor([[0.0, math.log(3)]])  # softmax (1/4, 3/4)
    assert float(label_loss(logits, torch.tensor([1]), False)) == pytest.approx(-math.log(3 / 4), rel=1e-6)
    # multi-label: BCE to 0/1 targets, averaged over the attributes
    want = -(math.log(1 / 2) + math.log(3 / 4)) / 2  # 1 - sigmoid(0) = 1/2 for a 0; sigmoid(ln 3) = 3/4 for a 1
    assert float(label_loss(logits, torch.tensor([[0, 1]]), True)) == pytest.approx(want, rel=1e-6)
