"""Tests for stitch.ood: energy loss, OOD metrics, outliers, config checks, and the detector
pipeline end to end (train -> store -> reload -> score, reuse through an OODCache) on tiny
synthetic data."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from stitch import data as data_lib
from stitch import models, store
from stitch.errors import ConfigError
from stitch.features import FeatureSource
from stitch.ood import (ActivationDetector, DetectorSupply, OODCache, detector_config, energy, energy_loss, energy_regularizer,
                        get_detector, ood_metrics, ood_scores_metrics, resolve_sanity_data, sanity_check, sanity_config,
                        stitch_energies, train_detector)
from stitch.ood import registry
from stitch.ood.outliers import OutlierSampler, corrupt, noise_images, photo_crops, shuffle_patches
from stitch.stitching import StitchedNetwork, build_stitching_layer

# a detector small enough to train in a few seconds on 2 CPU cores
TINY = {"detector": {"epochs": 2, "batch_size": 32, "lr": 3e-3,
                     "conv": {"arch": "resnet20", "options": {"width": 0.25}, "input_size": 8}},
        "energy": {"epochs": 1}, "sanity": {"samples": 48}}


# ------------------------------------------------------------------------- energy
def test_energy_matches_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = energy(logits)
    expect0 = -math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert e[0].item() == pytest.approx(expect0, abs=1e-6)
    assert e[1].item() == pytest.approx(-math.log(3), abs=1e-6)
    # temperature: -T logsumexp(f / T)
    assert energy(logits, 2.0)[0].item() == pytest.approx(-2 * math.log(sum(math.exp(v / 2) for v in (1, 2, 3))),
                                                          abs=1e-6)


# Hand-computable logits: a row of K equal logits c has logsumexp = c + ln K, so E = -c - ln 4 for K = 4 and
# the cross-entropy of any label is ln 4; the row [c + ln 3, c, c, c] has logsumexp = c + ln 6, so E = -c - ln 6
# and the cross-entropy of label 0 is ln 6 - ln 3 = ln 2. Paper 2 / Liu et al. 2020: w = 0.1, m_in = -25,
# m_out = -7; hinge_in = relu(E_in + 25), hinge_out = relu(-7 - E_out).
LN2, LN3, LN4, LN6 = math.log(2), math.log(3), math.log(4), math.log(6)


def _flat(c: float) -> list[float]:
    return [c, c, c, c]


def _tilted(c: float) -> list[float]:
    return [c + LN3, c, c, c]


ENERGY_CASES = {
    # name: (logits_in, labels, logits_out, CE by hand, mean hinge_in^2 by hand, mean hinge_out^2 by hand)
    "both hinges active": (
        [_flat(0.0), _flat(10.0)], [0, 3], [_flat(20.0), _flat(8.0)],
        LN4,
        ((25 - LN4) ** 2 + (15 - LN4) ** 2) / 2,      # E_in = -ln4, -10-ln4: both above -25
        ((13 + LN4) ** 2 + (1 + LN4) ** 2) / 2),      # E_out = -20-ln4, -8-ln4: both below -7
    "both hinges inactive": (
        [_flat(30.0), _tilted(40.0)], [1, 0], [_flat(0.0), _flat(-5.0)],
        (LN4 + LN2) / 2,
        0.0,                                          # E_in = -30-ln4, -40-ln6: below -25
        0.0),                                         # E_out = -ln4, 5-ln4: above -7
    "only the in-distribution hinge": (
        [_tilted(0.0)], [0], [_flat(3.0), _flat(-3.0)],
        LN2,
        (25 - LN6) ** 2,                              # E_in = -ln6
        0.0),                                         # E_out = -3-ln4, 3-ln4: above -7
    "only the outlier hinge, one sample each way": (
        [_flat(26.0), _flat(20.0)], [2, 2], [_flat(10.0), _flat(0.0)],
        LN4,
        (0.0 + (5 - LN4) ** 2) / 2,                   # E_in = -26-ln4 (inactive), -20-ln4 (active)
        ((3 + LN4) ** 2 + 0.0) / 2),                  # E_out = -10-ln4 (active), -ln4 (inactive)
}


@pytest.mark.parametrize("case", sorted(ENERGY_CASES))
def test_energy_loss_matches_values_computed_by_hand(case):
    logits_in, y, logits_out, ce, reg_in, reg_out = ENERGY_CASES[case]
    logits_in, logits_out, y = torch.tensor(logits_in), torch.tensor(logits_out), torch.tensor(y)
    loss, parts = energy_loss(logits_in, y, logits_out)  # the defaults are paper 2's w = 0.1, -25, -7
    assert loss.item() == pytest.approx(ce + 0.1 * (reg_in + reg_out), rel=1e-5, abs=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5, abs=1e-6)
    assert parts["reg"] == pytest.approx(reg_in + reg_out, rel=1e-5, abs=1e-6)
    assert energy_regularizer(energy(logits_in), energy(logits_out)).item() == pytest.approx(
        reg_in + reg_out, rel=1e-5, abs=1e-6)
    # the weight and margins passed are the ones used: w = 1, m_in = -10 (hinge_in = relu(E_in + 10)) and
    # m_out = 100 (every outlier's hinge active: 100 - E_out); E by hand from the row shapes above
    loss2, parts2 = energy_loss(logits_in, y, logits_out, weight=1.0, m_in=-10.0, m_out=100.0)
    e_in = [-(row[1] + (LN6 if row[0] != row[1] else LN4)) for row in logits_in.tolist()]
    e_out = [-(row[0] + LN4) for row in logits_out.tolist()]
    reg2 = (sum(max(0.0, e + 10) ** 2 for e in e_in) / len(e_in)
            + sum((100 - e) ** 2 for e in e_out) / len(e_out))
    assert parts2["reg"] == pytest.approx(reg2, rel=1e-5)
    assert loss2.item() == pytest.approx(ce + reg2, rel=1e-5)


def test_energy_loss_reports_mean_energies():
    _, parts = energy_loss(torch.tensor([_flat(0.0), _tilted(10.0)]), torch.tensor([0, 0]),
                           torch.tensor([_flat(-1.0)]))
    assert parts["energy_in"] == pytest.approx((-LN4 - 10 - LN6) / 2, rel=1e-6)
    assert parts["energy_out"] == pytest.approx(1 - LN4, rel=1e-6)


def test_energy_loss_gradient_pushes_in_distribution_energy_down_and_outlier_energy_up():
    # both hinges active: E_in = -ln4 (> -25), E_out = -20-ln4 (< -7)
    logits_in = torch.tensor([_flat(0.0)], requires_grad=True)
    logits_out = torch.tensor([_flat(20.0)], requires_grad=True)
    y = torch.tensor([1])
    loss, _ = energy_loss(logits_in, y, logits_out)
    loss.backward()
    # by hand, with softmax = 1/4 everywhere: dE/dlogit = -1/4, dreg/dE_in = 2 (25 - ln4),
    # dreg/dE_out = -2 (13 + ln4); dCE/dlogit = 1/4 - onehot(y)
    g_in = 0.1 * 2 * (25 - LN4) * -0.25
    expect_in = torch.tensor([[0.25 + g_in, -0.75 + g_in, 0.25 + g_in, 0.25 + g_in]])
    expect_out = torch.full((1, 4), 0.1 * -2 * (13 + LN4) * -0.25)
    assert logits_in.grad is not None and logits_out.grad is not None
    assert torch.allclose(logits_in.grad, expect_in, rtol=1e-5, atol=1e-6)
    assert torch.allclose(logits_out.grad, expect_out, rtol=1e-5, atol=1e-6)
    # one gradient-descent step: the in-distribution energy goes down, the outlier energy goes up
    with torch.no_grad():
        e_in0, e_out0 = energy(logits_in).item(), energy(logits_out).item()
        e_in1 = energy(logits_in - 0.1 * logits_in.grad).item()
        e_out1 = energy(logits_out - 0.1 * logits_out.grad).item()
    assert e_in1 < e_in0 - 0.05 and e_out1 > e_out0 + 0.05
    # the regularizer alone: d/dE_in > 0 (descent lowers E_in), d/dE_out < 0 (descent raises E_out)
    e_in = torch.tensor([-LN4, -30.0], requires_grad=True)
    e_out = torch.tensor([-20 - LN4, 0.0], requires_grad=True)
    energy_regularizer(e_in, e_out).backward()
    assert torch.allclose(e_in.grad, torch.tensor([2 * (25 - LN4) / 2, 0.0]), rtol=1e-5)
    assert torch.allclose(e_out.grad, torch.tensor([-2 * (13 + LN4) / 2, 0.0]), rtol=1e-5)


def test_energy_loss_with_inactive_hinges_is_plain_cross_entropy():
    logits_in = torch.tensor([_flat(30.0)], requires_grad=True)   # E_in = -30-ln4 < -25
    logits_out = torch.tensor([_flat(0.0)], requires_grad=True)   # E_out = -ln4 > -7
    loss, parts = energy_loss(logits_in, torch.tensor([2]), logits_out)
    loss.backward()
    assert loss.item() == pytest.approx(LN4, rel=1e-6) and parts["reg"] == 0.0
    assert torch.allclose(logits_in.grad, torch.tensor([[0.25, 0.25, -0.75, 0.25]]), atol=1e-6)
    assert torch.equal(logits_out.grad, torch.zeros(1, 4))  # outliers already above m_out: no push


def test_energy_regularizer_rejects_inverted_margins():
    with pytest.raises(ValueError, match="m_in < m_out"):
        energy_regularizer(torch.zeros(2), torch.zeros(2), m_in=-5.0, m_out=-7.0)


# ------------------------------------------------------------------------ metrics
def test_auroc_identical_distributions_is_half():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, generator=g), torch.randn(4000, generator=g)
    m = ood_scores_metrics(a, b)
    assert m["auroc"] == pytest.approx(0.5, abs=0.03)
    assert m["fpr95"] == pytest.approx(0.95, abs=0.03)
    same = ood_scores_metrics(a, a.clone())  # exactly the same scores: all ties
    assert same["auroc"] == pytest.approx(0.5, abs=1e-6)


def test_auroc_separated_distributions_is_one_even_for_large_scores():
    g = torch.Generator().manual_seed(1)
    # energies of tens: a sigmoid (torchmetrics' default for scores outside [0, 1]) would saturate and tie them
    s_in = 30 + 0.1 * torch.randn(500, generator=g)
    s_out = 25 + 0.1 * torch.randn(500, generator=g)
    m = ood_scores_metrics(s_in, s_out)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["aupr"] == pytest.approx(1.0)
    assert m["fpr95"] == pytest.approx(0.0)
    flipped = ood_scores_metrics(s_out, s_in)
    assert flipped["auroc"] == pytest.approx(0.0)
    assert flipped["fpr95"] == pytest.approx(1.0)


def test_ood_scores_reject_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        ood_scores_metrics(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        ood_scores_metrics(torch.tensor([float("nan")]), torch.tensor([1.0]))


# ----------------------------------------------------------------------- outliers
def test_outlier_sources_shapes_and_content():
    g = torch.Generator().manual_seed(0)
    crops = photo_crops(5, (16, 16), 3, grayscale=True, generator=g)
    assert crops.shape == (5, 3, 16, 16) and crops.dtype == torch.uint8
    assert (crops == crops[:, :1]).all()  # grey outliers for grey data
    noise = noise_images(7, (8, 8), 3, generator=g)
    assert noise.shape == (7, 3, 8, 8) and noise.dtype == torch.uint8
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    sh = shuffle_patches(x, 4, g)
    # a permutation of the 2x2 tiles of each image: same multiset of values, per image
    assert torch.equal(sh.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(sh, x)
    c = corrupt(x, g)
    assert c.shape == x.shape


def test_outlier_sampler_matches_in_distribution_preprocessing():
    dm = data_lib.build("synthetic", train_size=32, test_size=16, normalize=False)
    s = OutlierSampler(dm, ["photos", "noise", "shuffle", "corrupt"])
    x = s.sample(12, None, torch.Generator().manual_seed(0))
    assert x.shape == (12, *dm.input_shape) and x.dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown outlier source"):
        OutlierSampler(dm, ["imagenet"])


# ------------------------------------------------------------------------- config
@pytest.mark.parametrize("ood, match", [
    ({"detectr": {}}, r"ood.detectr={}: unknown key \(did you mean detector\?\); ood keys are: enabled, split, detector"),
    ({"detector": {"foo": 1}}, "ood.detector.foo=1: unknown key; ood.detector keys are: conv, tokens, batch_size"),
    ({"detector": 5}, "ood.detector=5: expected a group of detector settings"),
    ({"detector": {"epochs": -1}}, "ood.detector.epochs=-1: expected an integer >= 0"),
    ({"detector": {"lr": 0}}, "ood.detector.lr=0: expected a finite number > 0"),
    ({"detector": {"batch_size": "big"}}, "ood.detector.batch_size='big': expected an integer >= 2"),
    ({"detector": {"augment": "maybe"}}, "ood.detector.augment='maybe': expected true or false"),
    ({"detector": {"tokens": {"heads": "many"}}}, "ood.detector.tokens.heads='many': expected auto or an integer"),
    ({"detector": {"conv": {"arch": "alexnet"}}}, "ood.detector.conv.arch='alexnet': expected a model .*resnet20"),
    ({"detector": {"conv": {"options": "abc"}}}, "ood.detector.conv.options='abc': expected a group of settings"),
    ({"detector": {"conv": {"arch": "resnet18", "options": {"width": 2}}}},
     "ood.detector.conv.options.width=2: unknown option of resnet18; its options are: variant"),
    ({"detector": {"conv": {"options": {"width": "abc"}}}},
     "ood.detector.conv.options.width='abc': expected a number"),
    ({"detector": {"conv": {"options": {"width": 0}}}},
     r"ood.detector.conv.options=\{width: 0\}: expected options that build resnet20 .*must be positive"),
    ({"detector": {"conv": {"arch": "resnet18", "options": {"variant": "wide"}}}},
     r"ood.detector.conv.options=\{variant: 'wide'\}: expected options that build resnet18"),
    ({"energy": {"m_in": -5, "m_out": -7}}, "ood.energy.m_in=-5.0: expected a number below ood.energy.m_out=-7.0"),
    ({"energy": {"weight": -0.1}}, "ood.energy.weight=-0.1: expected a finite number >= 0"),
    ({"outliers": {"sources": ["imagenet"]}}, r"ood.outliers.sources=\['imagenet'\]: expected a list of photos"),
    ({"outliers": {"sources": [], "datasets": []}}, r"ood.outliers.sources=\[\]: expected at least one"),
    ({"outliers": {"datasets": "svhn"}}, "ood.outliers.datasets='svhn': expected a list"),
    ({"outliers": {"datasets": ["svhn"]}}, r"ood.outliers.datasets\[0\]='svhn': expected a mapping with a name"),
    ({"outliers": {"datasets": [{"name": "nosuch"}]}},
     r"ood.outliers.datasets\[0\].name='nosuch': expected an in-memory data set, one of celeba, cifar10, digits, svhn, "
     r"synthetic$"),
    ({"outliers": {"datasets": [{"name": "imagenet"}]}},  # streams from disk: no tensors() to sample from
     r"ood.outliers.datasets\[0\].name='imagenet': expected an in-memory data set.*streams from disk"),
    ({"outliers": {"datasets": [{"name": "svhn", "rooot": "data/svhn"}]}},
     r"ood.outliers.datasets\[0\]=\{rooot: 'data/svhn'\}: expected options of data set svhn .*rooot"),
    ({"outliers": {"datasets": [{"name": "svhn", "split": "extra"}]}},
     r"ood.outliers.datasets\[0\].split='extra': expected one of train, val, test"),
    ({"outliers": {"grayscale": "grey"}}, "ood.outliers.grayscale='grey': expected auto, true or false"),
    ({"detector": {"epochs": 0}, "energy": {"epochs": 0}}, "ood.energy.epochs=0: expected .* untrained"),
    ({"split": "validation"}, "ood.split='validation': expected one of train, val, test"),
    ({"sanity": {"samples": 1}}, "ood.sanity.samples=1: expected an integer >= 2"),
    ({"sanity": {"data": "nosuch"}},
     r"ood.sanity.data='nosuch': expected a data-set name \(celeba, cifar10, digits, imagenet, svhn, synthetic\), "
     r"auto or null"),
    ({"sanity": {"data": 3}}, "ood.sanity.data=3: expected a data-set name"),
    ({"sanity": {"options": "abc"}}, "ood.sanity.options='abc': expected a group of settings"),
    ({"sanity": {"data": "svhn", "options": {"rooot": "x"}}},
     r"ood.sanity.options=\{rooot: 'x'\}: expected options of data set svhn"),
])
def test_bad_config_values_give_clear_errors(ood, match):
    """Every problem is one line, ``<key>=<value>: expected <what is allowed>``, naming the key."""
    with pytest.raises(ConfigError, match=match) as e:
        detector_config(ood)
        sanity_config(ood)
    assert "\n" not in str(e.value) and (": expected " in str(e.value) or ": unknown " in str(e.value))


def test_several_unknown_keys_give_one_line_each():
    with pytest.raises(ConfigError) as e:
        detector_config({"detector": {"foo": 1, "bar": 2}})
    lines = [ln.strip() for ln in str(e.value).splitlines()]
    assert lines[0] == "2 configuration problems:"
    assert [ln.split(":")[0] for ln in lines[1:]] == ["ood.detector.foo=1", "ood.detector.bar=2"]


def test_good_ood_data_settings_pass_and_validation_keeps_the_rng():
    state = torch.random.get_rng_state()
    cfg = detector_config({"outliers": {"datasets": [{"name": "svhn", "root": "data/svhn"}, {"name": "digits"}]},
                           "detector": {"augment": False, "conv": {"options": {"width": 0.3125}}}})  # width: unseen
    assert cfg.augment is False and cfg.outlier_datasets[1] == (("name", "digits"),)
    assert torch.equal(state, torch.random.get_rng_state())  # building the detector arch to check it draws nothing
    r18 = detector_config({"detector": {"conv": {"arch": "resnet18", "options": {"variant": "same_width"}}}})
    assert r18.conv_options == (("variant", "same_width"),)
    for data in ("auto", None, "none", "synthetic"):
        assert sanity_config({"sanity": {"data": data}})["data"] == data
    assert sanity_config({"sanity": {"data": "svhn", "options": {"root": "x"}}})["options"] == {"root": "x"}


def test_ood_mistakes_fail_study_validation_before_any_training():
    """``study_settings`` reports the OOD block's problems (one line each) before donors are trained."""
    from stitch.settings import study_settings

    base = {"enabled": True, "sanity": {"data": "nosuch"}, "detector": {"augment": "maybe"}}
    with pytest.raises(ConfigError) as e:
        study_settings({"ood": base})
    msg = str(e.value)
    assert "ood.detector.augment='maybe': expected true or false" in msg
    assert "ood.sanity.data='nosuch': expected a data-set name" in msg


def test_default_config_is_valid_and_hash_is_stable():
    cfg = detector_config({"enabled": True})
    assert cfg == detector_config(None)
    key = store.DonorKey.make("digits", "tiny10", 0)
    h1, _ = registry.detector_identity(cfg, key, "abc", "layer3", {"name": "digits", "batch_size": 64}, (3, 32, 32))
    h2, _ = registry.detector_identity(cfg, key, "abc", "layer3", {"name": "digits", "batch_size": 256}, (3, 32, 32))
    h3, _ = registry.detector_identity(cfg, key, "abd", "layer3", {"name": "digits"}, (3, 32, 32))
    assert h1 == h2  # batch size does not change the detector
    assert h1 != h3  # a retrained donor does
    r18 = detector_config({"detector": {"conv": {"arch": "resnet18", "options": None}}})
    assert r18.conv_arch == "resnet18" and r18.conv_options == ()  # no resnet20 preset carried over
    assert cfg.conv_options == (("width", 0.5),)


def test_token_detector_on_vit_shaped_activations():
    cfg = detector_config({"detector": {"tokens": {"depth": 1}}})
    d = ActivationDetector((17, 192), 10, cfg)
    assert d.backbone.blocks[0].attn.num_heads == 3  # ViT-Ti: 192 / 64
    assert d(torch.randn(4, 17, 192)).shape == (4, 10)
    with pytest.raises(ConfigError, match="must divide"):
        ActivationDetector((5, 10), 10, detector_config({"detector": {"tokens": {"heads": 3}}}))


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A synthetic data set, a (random, frozen) Tiny-10 as model 2 saved in a temporary store."""
    root = tmp_path_factory.mktemp("ood_store")
    torch.manual_seed(0)
    dm = data_lib.build("synthetic", train_size=96, test_size=48, batch_size=32, normalize=False, augment=False)
    dm.setup()
    net = models.build("tiny10", dm.num_classes, 3, width=1).eval()
    key = store.DonorKey.make("synthetic", "tiny10", 0)
    store.save(key, net, {"num_classes": 10, "in_channels": 3, "metrics": {"test_acc": 0.1}}, root)
    return dm, net, key, root


def test_detector_trains_caches_reloads_and_scores(tiny_setup, monkeypatch):
    dm, net, key, root = tiny_setup
    cache = OODCache()
    data_cfg = {"name": "synthetic"}
    det, meta = get_detector(DetectorSupply(key, dm, TINY, data_cfg, root, cache), net, "layer3")
    assert meta["trained_now"] is True
    pt = Path(meta["path"])
    assert pt.is_file() and pt.with_suffix(".json").is_file()
    # stored under the canonical name of layer3
    assert pt.parent == key.directory(root) / "ood" and pt.name.startswith("relu3-")
    assert 0.0 <= meta["sanity_auroc"] <= 1.0 and meta["metrics"]["samples"] == 48
    assert "digits" in next(iter(meta["sanity"]))  # synthetic in-distribution: the digits are the OOD set

    # from here on training is forbidden and store reads are counted
    def no_training(*a, **k):
        raise AssertionError("retrained a cached detector")

    loads = []
    load = registry._load
    monkeypatch.setattr(registry, "train_detector", no_training)
    monkeypatch.setattr(registry, "_load", lambda *a: loads.append(a[0]) or load(*a))

    # the same cache: the very same detector, without reading the store
    det_again, meta_again = get_detector(DetectorSupply(key, dm, TINY, data_cfg, root, cache), net, "layer3")
    assert det_again is det and meta_again["trained_now"] is False and meta_again["path"] == meta["path"]
    assert loads == []
    # a fresh cache, or none, shares nothing: the detector is read from the store (not retrained)
    det2, meta2 = get_detector(DetectorSupply(key, dm, TINY, data_cfg, root, OODCache()), net, "layer3")
    assert det2 is not det and meta2["trained_now"] is False and meta2["sanity_auroc"] == meta["sanity_auroc"]
    assert loads == [pt]
    det3, meta3 = get_detector(DetectorSupply(key, dm, TINY, data_cfg, root), net, "layer3")
    assert det3 is not det2 and meta3["trained_now"] is False and loads == [pt, pt]
    h = net.forward_to(next(dm.batches("test", 16))[0], "layer3")
    with torch.no_grad():
        assert torch.allclose(det(h), det2(h), atol=1e-5)
        assert torch.equal(det2(h), det3(h))

    # scoring a stitch: the self-stitch identity reproduces B exactly -> AUROC 0.5
    shape = net.layer_shapes(dm.input_shape)["layer3"]
    layer = build_stitching_layer(shape, shape)
    layer.set_identity()
    stitched = StitchedNetwork(net, net, "layer3", "layer3", layer)
    source = FeatureSource(net, net, "layer3", "layer3", dm, torch.device("cpu"))
    m = ood_metrics(stitched, source, DetectorSupply(key, dm, TINY, data_cfg, str(root), cache))
    assert m["ood/auroc"] == pytest.approx(0.5, abs=1e-6)
    assert m["ood/energy_in_mean"] == pytest.approx(m["ood/energy_stitched_mean"], abs=1e-4)
    for k in ("ood/aupr", "ood/fpr95", "ood/detector_acc", "ood/sanity_auroc", "ood/samples"):
        assert m[k] is not None
    assert m["ood/sanity_auroc"] == meta["sanity_auroc"] and m["ood/samples"] == 48
    # a badly scaled stitch is scored too (values in range; no claim on a barely trained detector)
    with torch.no_grad():
        layer.weight.mul_(25.0)
    m2 = ood_metrics(stitched, source, DetectorSupply(key, dm, TINY, data_cfg, str(root), cache))
    assert 0.0 <= m2["ood/auroc"] <= 1.0 and m2["ood/energy_stitched_mean"] != m["ood/energy_stitched_mean"]
    assert m2["ood/energy_in_mean"] == m["ood/energy_in_mean"]  # B is the same: the same energies
    assert loads == [pt, pt]  # the study's cache served the detector to both runs
    e = stitch_energies(stitched, source, det2)
    assert len(e["in"]) == len(e["stitched"]) == 48
    assert e["in"].mean().item() == pytest.approx(m["ood/energy_in_mean"], abs=1e-4)  # det2 is det, reloaded


def test_in_distribution_energies_are_computed_once_per_cache(tiny_setup):
    """B's energies depend on (detector, model 2, layer, split) only: one cache computes them once for all
    stitches; another cache, or none, recomputes them."""
    dm, net, key, root = tiny_setup
    det, _ = get_detector(DetectorSupply(key, dm, TINY, {"name": "synthetic"}, root), net, "layer3")
    batch_sizes: list[int] = []  # one entry per detector forward call
    det.register_forward_pre_hook(lambda module, args: batch_sizes.append(len(args[0])))
    shape = net.layer_shapes(dm.input_shape)["layer3"]
    identity, scaled = build_stitching_layer(shape, shape), build_stitching_layer(shape, shape)
    identity.set_identity()
    with torch.no_grad():
        scaled.set_identity()
        scaled.weight.mul_(25.0)
    same = StitchedNetwork(net, net, "layer3", "layer3", identity)
    other = StitchedNetwork(net, net, "layer3", "layer3", scaled)
    source = FeatureSource(net, net, "layer3", "layer3", dm, torch.device("cpu"), batch_size=16)

    def calls(fn):
        batch_sizes.clear()
        result = fn()
        return result, len(batch_sizes)

    cache = OODCache()
    r1, n = calls(lambda: stitch_energies(same, source, det, cache=cache))
    assert n == 6  # 48 test images in 3 batches: B and S(A) each
    assert torch.allclose(r1["stitched"], r1["in"], atol=1e-5)  # identity stitch: S(A) = B
    r2, n = calls(lambda: stitch_energies(other, source, det, cache=cache))
    assert n == 3  # only S(A): B's energies come from the cache
    assert r2["in"] is r1["in"] and r2["pred_in"] is r1["pred_in"]
    assert not torch.allclose(r2["stitched"], r1["stitched"])  # ... while the stitched side is new
    # another split, layer or model 2 is another entry in the same cache
    r_train, n = calls(lambda: stitch_energies(same, source, det, "train", cache))
    assert n == 2 * 6 and len(r_train["in"]) == 96  # 96 training images in 6 batches
    layer4 = FeatureSource(net, net, "layer3", "layer4", dm, torch.device("cpu"), batch_size=16)  # shape of layer3
    r_l4, n = calls(lambda: stitch_energies(same, layer4, det, cache=cache))
    assert n == 6 and not torch.allclose(r_l4["in"], r1["in"])
    twin = FeatureSource(net, copy.deepcopy(net), "layer3", "layer3", dm, torch.device("cpu"), batch_size=16)
    r_twin, n = calls(lambda: stitch_energies(same, twin, det, cache=cache))
    assert n == 6 and torch.allclose(r_twin["in"], r1["in"], atol=1e-6)
    _, n = calls(lambda: stitch_energies(other, source, det, cache=cache))
    assert n == 3  # the first entry is still there
    # a different cache shares nothing with the first: recomputed, same values
    r3, n = calls(lambda: stitch_energies(other, source, det, cache=OODCache()))
    assert n == 6 and r3["in"] is not r1["in"] and torch.allclose(r3["in"], r1["in"], atol=1e-6)
    # no cache: computed on every call
    _, n = calls(lambda: (stitch_energies(other, source, det), stitch_energies(other, source, det)))
    assert n == 12


def test_changed_config_gets_its_own_detector(tiny_setup):
    dm, net, key, root = tiny_setup
    other = {**TINY, "energy": {"epochs": 1, "m_out": -6.0}}
    _, meta = get_detector(DetectorSupply(key, dm, other, store_root=root), net, "layer8")
    _, meta_b = get_detector(DetectorSupply(key, dm, {**other, "sanity": {"samples": 40}}, store_root=root), net, "layer8")
    assert meta["path"] == meta_b["path"]  # the sanity settings do not retrain ...
    assert len(meta_b["sanity"]) == 2      # ... they add a second sanity result
    _, meta_c = get_detector(DetectorSupply(key, dm, TINY, store_root=root), net, "layer8")
    assert meta_c["path"] != meta["path"]


def test_sanity_check_function(tiny_setup):
    dm, net, key, root = tiny_setup
    det, _ = get_detector(DetectorSupply(key, dm, TINY, store_root=root), net, "layer3")
    r = sanity_check(det, net, "layer3", dm, {"name": "digits"}, samples=32)
    assert r["data"] == "digits" and 0.0 <= r["auroc"] <= 1.0 and r["samples_out"] == 32
    assert resolve_sanity_data("digits", {"data": "auto"}) == {"name": "synthetic"}
    assert resolve_sanity_data("digits", {"data": None}) is None


# ----------------------------------------------------------------- through stitch.py
@pytest.mark.slow
def test_stitch_cli_with_ood_enabled(tmp_path, donor_store):
    """`stitch.py ood.enabled=true`: records get ood/* metrics, the detector is cached in the store
    and reused by the next study; DM's self-stitching diagonal is exactly in-distribution."""
    from stitch import matrices
    from stitch.results import load_records

    from .conftest import SYNTH_OVERRIDES, run_script

    tiny = ["ood.enabled=true", "ood.detector.epochs=2", "ood.detector.batch_size=32", "ood.energy.epochs=1",
            "ood.detector.conv.input_size=8", "ood.detector.conv.options={width:0.25}", "ood.sanity.samples=48"]

    def stitch(res, *args):
        return run_script("stitch.py", f"store={donor_store}", f"results_dir={tmp_path}/{res}", *SYNTH_OVERRIDES,
                          "similarity.indices=[cka]", "similarity.samples=64", "tlm.epochs=1", "model2.seed=0",
                          f"hydra.run.dir={tmp_path}/out", *tiny, *args)

    r = stitch("a", "layer=[layer6,layer8]", "target_layer=layer8", "method=dm")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = load_records(tmp_path / "a", status=None)
    assert len(recs) == 2 and all(x["status"] == "ok" for x in recs)
    diag = next(x for x in recs if x["layer"] == "relu8")["metrics"]  # layer8 is an alias of relu8
    assert diag["ood/auroc"] == pytest.approx(0.5, abs=1e-6) and diag["ood/sanity_auroc"] is not None
    assert list((donor_store / "synthetic" / "tiny10" / "seed0" / "ood").glob("relu8-*.pt"))
    mats = matrices.similarity_matrices(recs)
    assert mats["dm/ood_auroc"].shape == (2, 1)
    # a second study reuses the cached detector
    r = stitch("b", "layer=layer8", "method=tlm")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded from" in r.stdout + r.stderr and "training the OOD detector" not in r.stdout + r.stderr


def test_a_narrow_detector_trains_in_channels_last_without_corrupting_the_heap(tmp_path):
    """The shape that aborted the suite ("corrupted double-linked list"): a quarter-width ResNet-20 detector
    on 8x8 activations, trained in channels-last, in a child process with glibc's heap checks (its debugging
    allocator where installed): a stray write aborts the child, so the guard failing fails here, not in a
    later test. (Without the guard the child aborts: "corrupted size vs. prev_size".)"""
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "from stitch.ood.networks import ActivationDetector\n"
        "from stitch.ood.settings import DetectorConfig\n"
        "torch.manual_seed(0); torch.set_num_threads(1)\n"
        "det = ActivationDetector((4, 8, 8), 10, DetectorConfig(conv_options=(('width', 0.25),), input_size=8))\n"
        "opt = torch.optim.SGD(det.parameters(), lr=0.01)\n"
        "for _ in range(20):\n"
        "    loss = torch.nn.functional.cross_entropy(det(torch.randn(16, 4, 8, 8)), torch.randint(0, 10, (16,)))\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n"
        "print('trained', det.layout)\n")
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.check=3", "MALLOC_PERTURB_": "165",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # glibc >= 2.34 checks the heap this closely only with its debugging allocator preloaded
    debug = [p for p in ("/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0", "/lib64/libc_malloc_debug.so.0",
                         "/usr/lib64/libc_malloc_debug.so.0") if Path(p).exists()]
    if debug:
        env["LD_PRELOAD"] = debug[0]
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "trained torch.channels_last" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_the_detector_runs_in_one_layout_whatever_model_2_runs_in():
    """The study's fast path makes model 2 channels-last, other paths NCHW; both reach the detector. A
    mixed-layout oneDNN convolution's backward pass can segfault on CPU (issue: `stitch.py ood.enabled=true`
    died with exit 139): every convolution sees its weights' layout, channels-last (faster) in training and
    scoring, and neither the scores nor the gradients depend on the layout: they equal a plain NCHW copy's."""
    from stitch.ood.networks import ActivationDetector

    det = ActivationDetector((16, 30, 30), 10, detector_config(TINY), (32, 32))
    ref = copy.deepcopy(det)  # the same weights, computing in plain NCHW (the layout detectors trained in before)
    ref.backbone.to(memory_format=torch.contiguous_format)
    ref.layout = torch.contiguous_format
    convs = [m for m in det.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    seen = []

    def layout(m, args):  # weights and input both channels-last (a 1x1 kernel is in both)
        cl = torch.channels_last
        seen.append(m.weight.is_contiguous(memory_format=cl) and args[0].is_contiguous(memory_format=cl))
    hooks = [conv.register_forward_pre_hook(layout) for conv in convs]
    h = torch.randn(4, 16, 30, 30)
    for d in (det, ref):
        d.train()
        d(h.contiguous(memory_format=torch.channels_last)).logsumexp(1).mean().backward()
        d(h).logsumexp(1).mean().backward()
    assert seen == [True] * (2 * len(convs))
    for (name, p), q in zip(det.backbone.named_parameters(), ref.backbone.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for hook in hooks:
        hook.remove()
    det.eval()
    ref.eval()
    with torch.no_grad():
        out_nchw, out_cl = det(h), det(h.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(out_cl, out_nchw)
        torch.testing.assert_close(ref(h), out_cl, rtol=1e-4, atol=1e-5)


def test_narrow_strided_pointwise_convs_compute_in_nchw_and_match_plain_ones():
    """oneDNN's channels-last weight gradient of a 1x1 stride-2 convolution with few input channels writes
    past its buffer (torch 2.14 CPU): those convolutions (a narrow ResNet's projection shortcuts) compute
    in NCHW, with the same values and gradients as a plain convolution, and hand back the input's layout."""
    from stitch.ood.networks import NCHWStridedPointwiseConv, guard_strided_pointwise_convs

    torch.manual_seed(0)
    net = models.build("resnet20", 10, in_channels=4, width=0.25)
    plain = copy.deepcopy(net)
    net.to(memory_format=torch.channels_last)
    assert guard_strided_pointwise_convs(net) == 2
    guarded = [n for n, m in net.named_modules() if isinstance(m, NCHWStridedPointwiseConv)]
    assert guarded == ["layer2.0.downsample.0", "layer3.0.downsample.0"], guarded  # 4 -> 8 and 8 -> 16 channels
    assert net.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 4, 8, 8)
    out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, plain(x), rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    plain(x).square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    shortcut = net.layer2[0].downsample[0]
    seen = []
    plain_conv = shortcut._conv_forward
    shortcut._conv_forward = lambda x, w, b: seen.append((x.stride(), w.stride())) or plain_conv(x, w, b)
    y = shortcut(torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last))
    y1 = shortcut(torch.randn(2, 4, 1, 1).contiguous(memory_format=torch.channels_last))
    # oneDNN picks its kernel from the strides: plain NCHW ones for input and weight (a 1x1 kernel's
    # channels-last strides (4, 1, 4, 4) would also pass as contiguous, and so would a 1x1 input's)
    assert seen == [((256, 64, 8, 1), (4, 1, 1, 1)), ((4, 1, 1, 1), (4, 1, 1, 1))], seen
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() and y1.shape == (2, 8, 1, 1)


@pytest.mark.slow
def test_the_default_ood_path_on_the_digits_end_to_end(tmp_path):
    """`python stitch.py ood.enabled=true` on the defaults (digits, channels-last, folded BatchNorm), cut to
    seconds: exit 0, a record with an AUROC, the detector's sanity verdict and Fig. 1(c)'s energy percentiles."""
    from stitch.results import load_records

    from .conftest import run_script

    r = run_script("stitch.py", "ood.enabled=true", "layer=relu1", "method=tlm", "model2.seed=0", "donor.epochs=2",
                   "donor.allow_chance=true",
                   "tlm.epochs=1", "ood.detector.epochs=1", "ood.energy.epochs=1", "ood.detector.train_limit=256",
                   "ood.sanity.samples=64", "similarity.indices=[cka]", "similarity.samples=64",
                   f"store={tmp_path}/models", f"results_dir={tmp_path}/res", f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = load_records(tmp_path / "res", status=None)
    m = rec["metrics"]
    assert rec["status"] == "ok" and 0 <= m["ood/auroc"] <= 1 and m["ood/detector_trusted"] in (0.0, 1.0)
    e = rec["ood_energies"]
    assert e["percentiles"] == list(range(101)) and len(e["in"]) == len(e["stitched"]) == len(e["sanity"]) == 101
    assert e["in"] == sorted(e["in"]) and e["sanity_data"] == "synthetic"
