"""Every architecture builds and splits exactly at every layer, with no hooks."""
from __future__ import annotations

import pytest
import torch

from stitch import models

# (name, options, input size): small geometries keep the suite fast on 2 cores
CASES = [
    ("tiny10", {}, 32),
    ("tiny10", {"padding": "none"}, 32),
    ("resnet20", {"width": 1}, 32),
    ("resnet20", {"width": 2}, 32),
    ("resnet18", {}, 32),
    ("resnet18", {"variant": "same_size"}, 16),
    ("resnet18", {"variant": "same_width"}, 32),
    ("inception_v1", {}, 64),
    ("vit_tiny", {"img_size": 32, "patch_size": 8}, 32),
]


def test_every_registered_family_is_split_tested():
    """The split test below (and its traced twin for torchvision/timm, tests/test_external_models.py) covers
    every family in the registry: registering a new one without a case fails here."""
    from .test_external_models import CASES as EXTERNAL

    covered = {c[0] for c in CASES} | {c[0] for c in EXTERNAL}
    assert set(models.list_models()) <= covered, sorted(set(models.list_models()) - covered)


@pytest.mark.parametrize("name,options,size", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_split_is_exact_at_every_layer(name, options, size):
    torch.manual_seed(0)
    net = models.build(name, num_classes=7, **options).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        full = net(x)
        assert full.shape == (3, 7)
        shapes = net.layer_shapes((3, size, size))
        assert list(shapes) == net.layers
        for layer in net.layers:
            h = net.forward_to(x, layer)
            assert tuple(h.shape[1:]) == shapes[layer]
            assert torch.equal(net.forward_from(h, layer), full), layer
    hooks = [m for m in net.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooks


def test_resnet18_layer_names_and_spatial_sizes():
    net = models.build("resnet18", 10)
    blocks = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert net.select_layers("all") == blocks
    shapes = {L: s for L, s in net.layer_shapes((3, 32, 32)).items() if L in blocks}
    assert list(shapes) == blocks
    assert [s[1] for s in shapes.values()] == [32, 32, 16, 16, 8, 8, 4, 4]
    assert [s[0] for s in shapes.values()] == [64, 64, 128, 128, 256, 256, 512, 512]
    same_size = models.build("resnet18", 10, variant="same_size").layer_shapes((3, 32, 32))
    assert {s[1] for s in same_size.values()} == {32}
    same_width = models.build("resnet18", 10, variant="same_width").layer_shapes((3, 32, 32))
    assert {s[0] for s in same_width.values()} == {64}


def test_tiny10_paddings_match_the_references():
    unpadded = models.build("tiny10", 10, padding="none").layer_shapes((3, 32, 32))
    for group in ("conv", "bn", "relu"):  # the same geometry before and after BatchNorm and ReLU
        assert [unpadded[f"{group}{i}"][1] for i in range(1, 9)] == [30, 28, 13, 11, 9, 4, 2, 2]  # released code
    padded = models.build("tiny10", 10).layer_shapes((3, 32, 32))
    relu = [padded[f"relu{i}"] for i in range(1, 9)]
    assert [s[1] for s in relu] == [32, 32, 16, 16, 16, 8, 6, 6]  # all "same" but the 7th
    assert [s[0] for s in relu] == [16, 16, 32, 32, 32, 64, 64, 64]


def test_resnet20_width_multiplier_scales_channels():
    assert models.build("resnet20", 10, width=2).layer_shapes((3, 32, 32))["layer3.2"] == (128, 8, 8)
    net = models.build("resnet20", 10)
    assert len(net.select_layers("all")) == 9 and len(net.layers) == 9 + 9 + 3


def test_vit_layers_are_the_residual_stream():
    net = models.build("vit_tiny", 10, img_size=32, patch_size=4)
    assert net.layers == [f"blocks.{i}" for i in range(12)]
    assert net.layer_shapes((3, 32, 32))["blocks.5"] == (65, 192)
    # parameters are owned once (by timm's module), not duplicated in the state dict
    assert not [k for k in net.state_dict() if k.startswith("stages.")]


def test_inception_layers():
    net = models.build("inception_v1", 40)
    assert net.layers[:3] == ["conv1", "conv2", "conv3"] and net.layers[-1] == "mixed5b"
    assert net.layer_shapes((3, 224, 224))["mixed5b"] == (1024, 7, 7)


def test_unknown_layer_lists_valid_layers():
    net = models.build("tiny10", 10)
    with pytest.raises(models.UnknownLayerError,
                       match="valid layers are: relu: relu1, relu2.*relu8; bn: bn1.*bn8; conv: conv1.*aliases: layer1=relu1"):
        net.forward_to(torch.zeros(1, 3, 32, 32), "conv9")


def test_unknown_model_and_option_errors():
    with pytest.raises(ValueError, match="available models: .*resnet18.*tiny10"):
        models.build("resnet50", 10)
    with pytest.raises(ValueError, match=r"valid options: \['padding', 'width'\]"):
        models.build("tiny10", 10, depth=3)
    with pytest.raises(ValueError, match="variant must be one of"):
        models.build("resnet18", 10, variant="wide")


def test_model_tag_names_non_default_options():
    assert models.model_tag("resnet20", width=1) == "resnet20"
    assert models.model_tag("resnet20", width=2) == "resnet20-width=2"


def test_list_layers_command(capsys):
    from stitch.models.__main__ import main

    main(["resnet18", "--data", "synthetic", "--option", "variant=same_width"])
    out = capsys.readouterr().out
    assert "layer4.1" in out and "(64, 4, 4)" in out


def test_list_layers_command_takes_config_names_and_reports_bad_input(capsys):
    from stitch.models.__main__ import main

    main(["tiny10_unpadded", "--data", "cifar10"])
    out = capsys.readouterr().out
    assert "[bn]" in out and "bn3" in out and "(32, 13, 13)" in out and "aliases: layer1 = relu1" in out
    for bad in (["tiny10", "--option", "depth=3"], ["vit_tiny", "--data", "cifar10"]):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
    assert "cannot take cifar10 inputs" in capsys.readouterr().err
