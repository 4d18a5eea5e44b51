"""Folding frozen BatchNorms into convolutions: the same activations within float32 rounding."""
from __future__ import annotations

import pytest
import torch

from stitch import models
from stitch.models.fold import fold_batchnorm


def _with_statistics(name, **options):
    torch.manual_seed(0)
    net = models.build(name, 10, **options).train()
    with torch.no_grad():  # non-trivial running statistics, as in a trained donor
        for _ in range(3):
            net(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return net.eval()


@pytest.mark.parametrize("name,options", [("tiny10", {"padding": "none"}), ("resnet20", {}),
                                          ("resnet18", {"variant": "same_width"})])
def test_folded_copy_matches_at_every_remaining_cut_point(name, options):
    net = _with_statistics(name, **options)
    fast = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
        for L in fast.layers:
            torch.testing.assert_close(fast.forward_to(x, L), net.forward_to(x, L), rtol=1e-5, atol=1e-5)
            h = net.forward_to(x, L)
            torch.testing.assert_close(fast.forward_from(h, L), net(x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in fast.parameters())


def test_conv_cut_points_are_kept_or_refused():
    net = _with_statistics("tiny10", padding="none")
    fast = fold_batchnorm(net, keep=["conv3"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the kept raw conv output is still the raw conv output
        torch.testing.assert_close(fast.forward_to(x, "conv3"), net.forward_to(x, "conv3"), rtol=1e-5, atol=1e-5)
    assert "conv3" in fast.layers and "conv4" not in fast.layers
    with pytest.raises(models.UnknownLayerError):  # folded away: an error, never the BatchNorm output instead
        fast.forward_to(x, "conv4")
    assert fast.check_layer("layer4") == "relu4"  # aliases of the remaining points still resolve


def test_other_families_are_returned_unchanged():
    vit = models.build("vit_tiny", 10, img_size=32, patch_size=8, depth=2)
    assert fold_batchnorm(vit) is vit
    tv = models.build("torchvision", 10, arch="resnet18")
    assert fold_batchnorm(tv) is tv
