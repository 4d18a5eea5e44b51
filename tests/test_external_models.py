"""torchvision and timm models as stitchable networks (``stitch.models.external``): cut points
found on the fx graph are dominators, every split is exact, checkpoints keep native keys."""
from __future__ import annotations

import functools
import pickle

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from stitch import models
from stitch.errors import ConfigError
from stitch.models.external import ExternalModelError, TracedNetwork

from .conftest import ROOT

# (family, arch, img_size option, input size, expected cut points, a module that must not be one)
CASES = [
    ("torchvision", "resnet18", None, 32, ["conv1", "layer1.0", "layer2.0", "layer4.1", "avgpool"],
     "layer2.0.conv1"),  # inside a residual branch: the shortcut bypasses it
    ("torchvision", "vgg11_bn", None, 32, ["features.0", "features.3", "features.28", "classifier.0"],
     "classifier.2"),  # a Dropout: the identity at inference, skipped
    ("torchvision", "mobilenet_v2", None, 32, ["features.0", "features.4", "features.18"],
     "features.5.conv.0"),  # features.5 has a residual connection
    ("torchvision", "googlenet", None, 64, ["conv1", "inception3a", "inception4e", "inception5b"],
     "inception3a.branch1"),  # one of four parallel branches
    ("timm", "vit_tiny_patch16_224", 32, 32, ["patch_embed", "blocks.0", "blocks.3", "blocks.11", "norm"],
     "blocks.3.attn"),
    ("timm", "convnext_atto", None, 32, ["stem.0", "stages.0.blocks.0", "stages.1.blocks.0", "stages.3.blocks.1"],
     "stages.1.blocks.0.conv_dw"),  # stages are opened into their blocks; a block's conv is bypassed
    ("timm", "resnet18", None, 32, ["act1", "layer1.0", "layer2.0", "layer4.1"], "layer2.0.conv1"),
]
IDS = [f"{c[0]}-{c[1]}" for c in CASES]
NUM_CLASSES = 7


@functools.lru_cache(maxsize=None)
def _net(family: str, arch: str, img_size: int | None) -> TracedNetwork:
    torch.manual_seed(0)
    return models.build(family, num_classes=NUM_CLASSES, arch=arch, img_size=img_size).eval()


def _original(family: str, arch: str, img_size: int | None) -> nn.Module:
    """The library's own model, independently built (other random weights)."""
    torch.manual_seed(1)
    if family == "torchvision":
        import torchvision

        extra = {"aux_logits": False, "init_weights": False} if arch == "googlenet" else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=NUM_CLASSES, **extra).eval()
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES,
                             **({"img_size": img_size} if img_size else {})).eval()


def _hooked(net: TracedNetwork) -> list[nn.Module]:
    return [m for m in [*net.modules(), net.wrapped] if m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize("family,arch,img_size,size,expected,not_a_cut", CASES, ids=IDS)
def test_discovered_cut_points_are_dominating_block_outputs(family, arch, img_size, size, expected, not_a_cut):
    net = _net(family, arch, img_size)
    assert net.family == f"{family}:{arch}"
    layers = net.layers
    assert layers and len(set(layers)) == len(layers)
    assert set(expected) <= set(layers)
    assert [n for n in layers if n in expected] == expected  # forward order
    assert not_a_cut not in layers
    with pytest.raises(models.UnknownLayerError):
        net.check_layer(not_a_cut)
    assert net.select_layers("every") == layers


@pytest.mark.parametrize("family,arch,img_size,size,expected,not_a_cut", CASES, ids=IDS)
def test_split_is_exact_at_every_layer_and_keeps_the_activation(family, arch, img_size, size, expected, not_a_cut):
    net = _net(family, arch, img_size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        full = net(x)
        assert full.shape == (2, NUM_CLASSES)
        shapes = net.layer_shapes((3, size, size))
        assert list(shapes) == net.layers
        for layer in net.layers:
            h = net.forward_to(x, layer)
            kept = h.clone()
            assert tuple(h.shape[1:]) == shapes[layer], layer
            assert torch.equal(net.forward_from(h, layer), full), layer
            # an in-place op after the cut (ReLU(inplace=True)) must not write into the caller's tensor
            assert torch.equal(h, kept), layer
    assert not _hooked(net)


@pytest.mark.parametrize("family,arch,img_size,size,expected,not_a_cut", CASES, ids=IDS)
def test_state_dict_has_the_native_keys_both_ways(family, arch, img_size, size, expected, not_a_cut):
    net = _net(family, arch, img_size)
    original = _original(family, arch, img_size)
    assert list(net.state_dict()) == list(original.state_dict())
    x = torch.randn(2, 3, size, size)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        net.load_state_dict(original.state_dict(), strict=True)  # a library checkpoint loads as it is
        with torch.no_grad():
            assert torch.equal(net(x), original(x))
            layer = net.layers[len(net.layers) // 2]
            assert torch.equal(net.forward_from(net.forward_to(x, layer), layer), original(x))
    finally:
        net.load_state_dict(saved, strict=True)
    original.load_state_dict(net.state_dict(), strict=True)  # and the other way round
    with torch.no_grad():
        assert torch.equal(original(x), net(x))


def test_resnet18_explicit_layers_and_pre_activation_points():
    net = models.build("torchvision", num_classes=10, arch="resnet18",
                       layers=["layer3.0", "layer2.1.add", "bn1", "flatten"])
    assert net.layers == ["bn1", "layer2.1.add", "layer3.0", "flatten"]  # forward order
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = net(x)
        for layer in net.layers:
            assert torch.equal(net.forward_from(net.forward_to(x, layer), layer), full), layer
        pre = net.forward_to(x, "bn1")  # before the stem's in-place ReLU
        kept = pre.clone()
        assert (pre < 0).any()
        net.forward_from(pre, "bn1")
        assert torch.equal(pre, kept)
    with pytest.raises(ExternalModelError, match=r"layer2\.0\.conv1.*not a cut point.*Valid cut points: .*layer2\.0"):
        models.build("torchvision", num_classes=10, arch="resnet18", layers=["layer2.0", "layer2.0.conv1"])
    with pytest.raises(ExternalModelError, match="nope"):
        models.build("torchvision", num_classes=10, arch="resnet18", layers=["nope"])


def test_vit_explicit_layers_and_chained_segments():
    net = models.build("timm", num_classes=10, arch="vit_tiny_patch16_224", img_size=32,
                       layers=["blocks.1", "blocks.5", "blocks.9"]).eval()
    assert net.layer_groups == {"layers": ["blocks.1", "blocks.5", "blocks.9"]}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h, prev = x, None
        for layer in net.layers:  # forward_between continues from the previous cut
            h = net.forward_between(h, prev, layer)
            assert torch.equal(h, net.forward_to(x, layer))
            prev = layer
        assert torch.equal(net.forward_from(h, prev), net(x))
    with pytest.raises(ExternalModelError, match=r"\['blocks\.3\.attn'\] is not a cut point"):
        models.build("timm", num_classes=10, arch="vit_tiny_patch16_224", img_size=32, layers=["blocks.3.attn"])


def test_train_mode_is_traced_separately_and_stays_exact():
    net = _net("torchvision", "resnet18", None)
    x = torch.randn(4, 3, 32, 32)
    net.train()
    try:
        assert net.wrapped.training and net.layer1.training
        with torch.no_grad():  # batch statistics: the same batch gives the same output
            assert torch.equal(net.forward_from(net.forward_to(x, "layer3.0"), "layer3.0"), net(x))
    finally:
        net.eval()
    assert not net.wrapped.training


class _DataDependentRoot(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:  # Python control flow on a tensor value: fx cannot trace it
            x = x * 2
        return self.b(x)


class _Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else -x


class _DataDependentChild(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(4, 4), _Gate(), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.gate(self.a(x)))


def test_untraceable_forward_gives_a_clear_error():
    with pytest.raises(ExternalModelError) as info:
        TracedNetwork(_DataDependentRoot())
    msg = str(info.value)
    assert "could not be traced by torch.fx" in msg
    assert "symbolically traced variables cannot be used as inputs to control flow" in msg
    assert "model.options.layers=[...]" in msg and "cannot help" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)


def test_untraceable_submodule_is_called_as_one_opaque_module():
    net = TracedNetwork(_DataDependentChild()).eval()
    assert net.layers == ["a", "gate"]
    x = torch.randn(3, 4)
    with torch.no_grad():
        for layer in net.layers:
            assert torch.equal(net.forward_from(net.forward_to(x, layer), layer), net(x))


class _UnusedWriteAndChecks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        torch._assert(x.shape[1] == 4, "need 4 features")  # a check on the input: no path to the output
        y = self.a(x)
        y.mul_(2)  # an in-place write nobody uses: ``c`` reads its effect
        return self.b(self.c(y))


def test_unused_in_place_writes_and_checks_land_in_the_right_half():
    net = TracedNetwork(_UnusedWriteAndChecks()).eval()
    assert net.layers == ["a", "c"]
    x = torch.randn(3, 4)
    with torch.no_grad():
        for layer in net.layers:
            h = net.forward_to(x, layer)
            kept = h.clone()
            assert torch.equal(net.forward_from(h, layer), net(x)), layer
            assert torch.equal(h, kept), layer
        with pytest.raises(Exception, match="need 4 features"):
            net.forward_to(torch.randn(3, 5), "a")
        copy = pickle.loads(pickle.dumps(net)).double()  # generated code is rebuilt, on the live weights
        assert torch.equal(copy.forward_from(copy.forward_to(x.double(), "a"), "a"), copy(x.double()))


class _Block(nn.Module):
    def __init__(self, shortcut: bool):
        super().__init__()
        self.shortcut, self.body = shortcut, nn.Sequential(nn.Linear(8, 8), nn.ReLU())

    def forward(self, x):
        return x + self.body(x) if self.shortcut else self.body(x)


class _Stage(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks, self.norm = nn.Sequential(_Block(True), _Block(True)), nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.blocks(x))


class _Staged(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.stage, self.head = nn.Linear(4, 8), _Stage(), nn.Linear(8, 3)
        self.mix = nn.Sequential(_Block(False), _Block(True))

    def forward(self, x):
        return self.head(self.mix(self.stage(self.stem(x))))


def test_units_wrapping_blocks_are_opened_per_class():
    net = TracedNetwork(_Staged()).eval()
    # the stage is opened into its blocks; _Block is not, since one with a shortcut cannot be
    # (opening mix.0 alone would list mix.0.body.0 beside mix.1)
    assert net.layers == ["stem", "stage.blocks.0", "stage.blocks.1", "stage.norm", "mix.0", "mix.1"]
    assert net.layer_groups == {"blocks": ["stage.blocks.0", "stage.blocks.1", "mix.0", "mix.1"],
                                "top": ["stem", "stage.norm"]}
    x = torch.randn(3, 4)
    with torch.no_grad():
        for layer in net.layers:
            assert torch.equal(net.forward_from(net.forward_to(x, layer), layer), net(x)), layer


def test_registry_tag_options_and_configs():
    net = models.build("torchvision", num_classes=10, arch="resnet18")
    assert isinstance(net, models.StitchableNetwork) and net.family == "torchvision:resnet18"
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert models.model_tag("torchvision", arch="resnet50") == "torchvision-arch=resnet50"
    assert models.model_tag("timm", arch="vit_tiny_patch16_224", img_size=32) == "timm-img_size=32"
    for name in ("torchvision", "timm"):
        cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
        assert cfg.name == name
        assert OmegaConf.to_container(cfg.options) == models.options_of(name)


def test_unknown_architecture_says_how_to_list_the_names():
    with pytest.raises(ExternalModelError, match=r"resnet18.*torchvision\.models\.list_models"):
        models.build("torchvision", num_classes=10, arch="resnet1")
    with pytest.raises(ExternalModelError, match=r"not an image classifier"):
        models.build("torchvision", num_classes=10, arch="fasterrcnn_resnet50_fpn")
    with pytest.raises(ExternalModelError, match=r"timm\.list_models\(\)"):
        models.build("timm", num_classes=10, arch="no_such_net")


def test_cli_lists_the_discovered_layers(capsys):
    from stitch.models.__main__ import main

    main(["torchvision", "--option", "arch=resnet18", "--data", "imagenet"])
    out = capsys.readouterr().out
    assert "layer2.0" in out and "(128, 28, 28)" in out
