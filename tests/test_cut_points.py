"""Faithful cut points: pre-activation points (after BatchNorm, before ReLU), aliases, groups,
native checkpoint key names, and the in-place ReLU trap."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stitch import models


def _reference_tiny10_unpadded(state: dict) -> nn.Module:
    """A plain re-implementation of paper 1's released Tiny-10 (conv -> bn -> relu x 8, no padding)."""
    spec = [(3, 16, 3, 1), (16, 16, 3, 1), (16, 32, 3, 2), (32, 32, 3, 1), (32, 32, 3, 1), (32, 64, 3, 2),
            (64, 64, 3, 1), (64, 64, 1, 1)]

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            for i, (cin, cout, k, s) in enumerate(spec, 1):
                setattr(self, f"conv{i}", nn.Conv2d(cin, cout, k, stride=s))
                setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
            self.fc = nn.Linear(64, 10)

        def forward(self, x, stop=None):
            for i in range(1, 9):
                x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
                if stop == f"bn{i}":
                    return x
                x = torch.relu(x)
            return self.fc(x.mean(dim=(-2, -1)))

    ref = Ref()
    ref.load_state_dict(state)
    return ref.eval()


def test_tiny10_exposes_conv_bn_relu_points_in_forward_order():
    net = models.build("tiny10", 10, padding="none")
    assert net.layers[:4] == ["conv1", "bn1", "relu1", "conv2"] and len(net.layers) == 24
    assert net.select_layers("bn") == [f"bn{i}" for i in range(1, 9)]
    assert net.select_layers("all") == [f"relu{i}" for i in range(1, 9)]  # the default group
    assert net.select_layers("every") == net.layers
    assert net.select_layers(["bn3", "layer6"]) == ["bn3", "relu6"]  # an alias resolves to its canonical name
    assert net.check_layer("layer3") == "relu3"


def test_pre_activation_point_is_not_rectified_and_survives_the_back_half():
    torch.manual_seed(0)
    net = models.build("tiny10", 10, padding="none").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        b = net.forward_to(x, "bn3")
        kept = b.clone()
        assert (b < 0).any()  # before the ReLU
        assert (net.forward_to(x, "relu3") >= 0).all()
        net.forward_from(b, "bn3")
    # the in-place ReLU trap: running the rest of the network must not overwrite the cut activation
    assert torch.equal(b, kept)


def test_resnet_pre_activation_block_points():
    torch.manual_seed(0)
    net = models.build("resnet20", 10).eval()
    assert net.select_layers("pre")[0] == "layer1.0.add" and net.select_layers("stem") == ["conv1", "bn1", "relu"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre = net.forward_to(x, "layer2.1.add")
        kept = pre.clone()
        assert (pre < 0).any()
        assert torch.equal(torch.relu(pre), net.forward_to(x, "layer2.1"))
        net.forward_from(pre, "layer2.1.add")
    assert torch.equal(pre, kept)
    with pytest.raises(models.UnknownLayerError, match="pre: layer1.0.add"):
        net.check_layer("layer1.0.conv1")  # inside the residual branch: the shortcut bypasses it


def test_native_checkpoint_keys_follow_the_released_and_torchvision_names():
    tiny = set(models.build("tiny10", 10, padding="none").state_dict())
    assert {"conv1.weight", "conv1.bias", "bn3.running_mean", "fc.weight"} <= tiny and len(tiny) == 58
    res = set(models.build("resnet20", 10).state_dict())
    assert {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight", "layer3.2.bn2.bias",
            "fc.bias"} <= res and len(res) == 128


@pytest.mark.parametrize("name,options", [("tiny10", {}), ("tiny10", {"padding": "none"}), ("resnet20", {}),
                                          ("resnet18", {"variant": "same_width"})])
def test_checkpoints_of_earlier_versions_are_upgraded(name, options):
    """Donors saved before the cut-point rework (keys ``stages.layer1.0.weight``) still load."""
    import re

    torch.manual_seed(0)
    net = models.build(name, 10, **options).eval()
    old = {}
    for k, v in net.state_dict().items():  # write the earlier layout by hand
        k2 = re.sub(r"^conv(\d)\.", r"stages.layer\1.0.", k) if name == "tiny10" else k
        k2 = re.sub(r"^bn(\d)\.", r"stages.layer\1.1.", k2) if name == "tiny10" else k2
        if name != "tiny10":
            k2 = re.sub(r"^conv1\.", "stages.stem.0.", k2)
            k2 = re.sub(r"^bn1\.", "stages.stem.1.", k2)
            k2 = re.sub(r"^layer(\d+)\.(\d+)\.", r"stages.layer\1_\2.", k2).replace(".downsample.", ".shortcut.")
        old[re.sub(r"^fc\.", "head.fc.", k2)] = v
    fresh = models.build(name, 10, **options)
    fresh.load_state_dict(fresh.upgrade_state_dict(old))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


RELEASED = models.__file__ and __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "released-drfrankenstein"


@pytest.mark.skipif(not (RELEASED / "tiny10-cifar10" / "in0" / "110000.pt").is_file(),
                    reason="paper 1's released networks (shared/data/released-drfrankenstein) are not here")
def test_released_tiny10_loads_natively_and_matches_a_plain_reimplementation():
    state = torch.load(RELEASED / "tiny10-cifar10" / "in0" / "110000.pt", weights_only=True, map_location="cpu")
    net = models.build("tiny10", 10, padding="none")
    net.load_state_dict(state)  # strict: every key by its released name
    ref = _reference_tiny10_unpadded(state)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.forward_to(x, "bn3"), ref(x, stop="bn3"), rtol=0, atol=0)


def test_a_layer_and_its_alias_make_one_pair():
    from stitch.study import layer_pairs

    net = models.build("tiny10", 10)
    assert layer_pairs(["relu3", "layer3", "bn3"], None, net, net) == [
        ("relu3", "relu3"), ("bn3", "bn3")]
