"""Stitched networks, direct matching and TLM on real (tiny) donors."""
from __future__ import annotations

import copy
import math
import itertools

import numpy as np
import pytest
import torch

from stitch import data, models, store
from stitch.errors import ConfigError
from stitch.evaluation import evaluate
from stitch.matching.fitting import PairContext, fit_direct, fit_task_loss
from stitch.settings import DMSettings, TLMSettings
from stitch.features import ActivationCache, FeatureSource
from stitch.activations import to_rows
from stitch.stitching import ConvStitch, StitchedNetwork, TokenStitch, build_stitching_layer

from .conftest import SYNTH

TLM = {"kind": "tlm", "loss": "hard", "init": "random", "lr": 1e-2, "weight_decay": 1e-5, "batch_size": 64,
       "epochs": 3, "schedule": "constant"}


def _donors(root):
    out = []
    for seed in (0, 1):
        net, _ = store.load(store.DonorKey.make("synthetic", "tiny10", seed, {"padding": "kornblith"}), root)
        out.append(net)
    return out


def _ctx(m1, m2, L, M, cache=True, limits=None):
    dm = data.build("synthetic", **{k: v for k, v in SYNTH.items() if k != "name"})
    dm.setup()
    src = FeatureSource(m1, m2, L, M, dm, torch.device("cpu"), "32",
                        ActivationCache(2**30) if cache else None, batch_size=64, limits=limits)
    return PairContext(m1, m2, L, M, src, dm.input_shape), dm


def test_self_stitching_with_dm_is_exact(donor_store):
    m1, _ = _donors(donor_store)
    for layer in ("layer2", "layer6"):
        ctx, dm = _ctx(m1, m1, layer, layer)
        net, info = fit_direct(ctx, DMSettings(solver="ls"))
        assert info["rows"] == 384 * int(np.prod(m1.layer_shapes((3, 32, 32))[layer][1:]))  # every N*H*W row
        metrics = evaluate(net, ctx.source, multilabel=False)
        assert metrics["relative_acc"] == pytest.approx(1.0, abs=1e-12)
        assert metrics["agreement"] == pytest.approx(1.0, abs=1e-12)
        assert metrics["dm_structural"] < 1e-8


def test_least_squares_stitcher_matches_float64_reference(donor_store):
    m1, m2 = _donors(donor_store)
    ctx, dm = _ctx(m1, m2, "layer3", "layer5", cache=False)
    net, _ = fit_direct(ctx, DMSettings(solver="ls"))
    A = torch.cat([to_rows(b.a) for b in ctx.source.batches("train")]).double().numpy()
    B = torch.cat([to_rows(b.b) for b in ctx.source.batches("train")]).double().numpy()
    ref, *_ = np.linalg.lstsq(np.c_[A, np.ones(len(A))], B, rcond=None)
    got = np.r_[net.stitch.matrix.detach().double().numpy(), net.stitch.bias.detach().double().numpy()[None]]
    # the layer stores float32: compare the float64 solution the layer was set from
    from stitch.matching import solve

    W, b = solve(ctx.statistics(net, None), kind="ls")
    exact = np.r_[W.numpy(), b.numpy()[None]]
    assert np.linalg.norm(exact - ref) / np.linalg.norm(ref) < 1e-6
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5


def test_dm_sample_size_option_limits_rows(donor_store):
    m1, m2 = _donors(donor_store)
    ctx, _ = _ctx(m1, m2, "layer3", "layer3")
    _, info = fit_direct(ctx, DMSettings(solver="ls", samples=100))
    assert info["rows"] == 100 * 16 * 16


def test_tlm_trains_only_the_stitching_layer_and_keeps_donors_frozen(donor_store):
    m1, m2 = _donors(donor_store)
    before1, before2 = copy.deepcopy(m1.state_dict()), copy.deepcopy(m2.state_dict())
    ctx, _ = _ctx(m1, m2, "layer4", "layer4")
    net, info = fit_task_loss(ctx, TLMSettings(**{**TLM, "augment": True, "epochs": 10}), seed=0, multilabel=False)
    assert info["steps"] == 10 * 6
    assert info["above_chance"] is False and info["final_epoch_loss"] < info["chance_loss"] == pytest.approx(math.log(10))
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("stitch.") for n in trainable)
    net.train()
    assert not net.front.training and not net.back.training  # BatchNorm statistics can never move
    for ref, model in ((before1, m1), (before2, m2)):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref[k]), k  # including BatchNorm running statistics
    assert evaluate(net, ctx.source, multilabel=False)["relative_acc"] > 0.8


def test_tlm_from_dm_init_starts_at_the_dm_solution(donor_store):
    m1, m2 = _donors(donor_store)
    ctx, _ = _ctx(m1, m2, "layer3", "layer3")
    dm_net, _ = fit_direct(ctx, DMSettings(solver="ls"))
    tlm_net, info = fit_task_loss(ctx, TLMSettings(**{**TLM, "init": "dm", "epochs": 0}), seed=0, multilabel=False)
    assert info["steps"] == 0
    assert torch.allclose(tlm_net.stitch.matrix, dm_net.stitch.matrix)


def _assert_same_batches(got: list, want: list) -> None:
    """The same number of batches, of the same sizes, with equal tensors (a zip would stop at the shorter)."""
    assert len(got) == len(want), f"{len(got)} batches vs {len(want)}"
    assert [len(b.y) for b in got] == [len(b.y) for b in want]
    for i, (a, b) in enumerate(itertools.zip_longest(got, want)):
        for field in ("a", "b", "y", "z2"):
            assert torch.equal(getattr(a, field), getattr(b, field)), f"batch {i}: {field} differs"


def test_cached_and_recomputed_paths_give_the_same_batches(donor_store):
    m1, m2 = _donors(donor_store)
    cached, dm = _ctx(m1, m2, "layer2", "layer7", cache=True)
    live, _ = _ctx(m1, m2, "layer2", "layer7", cache=False)
    assert live.source._cached("test") is None
    assert cached.source._cached("test") is not None  # the fast path is really taken
    for kwargs in ({}, {"shuffle": True, "seed": 3}, {"batch_size": 50}):
        got, want = list(cached.source.batches("test", **kwargs)), list(live.source.batches("test", **kwargs))
        assert sum(len(b.y) for b in want) == dm.size("test") == 192  # every test image, once
        _assert_same_batches(got, want)
        assert all(b.x is None for b in got) and all(b.x is not None for b in want)  # paths as documented


def test_a_train_limit_means_the_same_images_cached_or_streamed(donor_store):
    """train_limit=N: the cache (when it fits) and the streaming path train on the same N images, in the
    same shuffled order; before, streaming drew N random images of the whole split."""
    m1, m2 = _donors(donor_store)
    cached, _ = _ctx(m1, m2, "layer2", "layer7", cache=True, limits={"train": 100})
    live, _ = _ctx(m1, m2, "layer2", "layer7", cache=False, limits={"train": 100})
    assert cached.source._cached("train") is not None and live.source._cached("train") is None
    for kwargs in ({}, {"shuffle": True, "seed": 5}):
        got, want = list(cached.source.batches("train", **kwargs)), list(live.source.batches("train", **kwargs))
        assert sum(len(b.y) for b in want) == 100
        _assert_same_batches(got, want)


def test_batch_comparison_rejects_a_cache_that_lost_images(donor_store, monkeypatch):
    """A test of the test: a cache missing its last images (what a zip would not see) fails the comparison."""
    m1, m2 = _donors(donor_store)
    cached, _ = _ctx(m1, m2, "layer2", "layer7", cache=True)
    live, _ = _ctx(m1, m2, "layer2", "layer7", cache=False)
    want = list(live.source.batches("test"))
    assert len(want) == 3
    _assert_same_batches(want, list(want))
    full = cached.source._cached("test")
    for keep in (128, 150):  # one batch less; a short last batch
        monkeypatch.setattr(cached.source, "_cached", lambda split, keep=keep: tuple(t[:keep] for t in full))
        with pytest.raises(AssertionError):
            _assert_same_batches(list(cached.source.batches("test")), want)
    with pytest.raises(AssertionError, match="batches vs"):
        _assert_same_batches(want, want[:-1])


def test_cpu_autocast_bf16_is_close_to_fp32(donor_store):
    m1, m2 = _donors(donor_store)
    ctx32, _ = _ctx(m1, m2, "layer3", "layer3", cache=False)
    net, _ = fit_direct(ctx32, DMSettings(solver="ls"))
    ref = evaluate(net, ctx32.source, multilabel=False)
    ctx16, _ = _ctx(m1, m2, "layer3", "layer3", cache=False)
    ctx16.source.precision = "bf16"
    got = evaluate(net, ctx16.source, multilabel=False)
    assert abs(got["stitched_acc"] - ref["stitched_acc"]) < 0.03
    assert abs(got["dm_structural"] - ref["dm_structural"]) < 0.05 * ref["dm_structural"] + 1e-3


def test_stitching_layer_kinds():
    conv = build_stitching_layer((16, 32, 32), (32, 16, 16))
    assert isinstance(conv, ConvStitch)
    assert conv(torch.randn(2, 16, 32, 32)).shape == (2, 32, 16, 16)  # bilinear resize, then 1x1 conv
    tok = build_stitching_layer((65, 192), (65, 96))
    assert isinstance(tok, TokenStitch) and tok(torch.randn(2, 65, 192)).shape == (2, 65, 96)
    low = build_stitching_layer((16, 8, 8), (16, 8, 8), rank=4)
    W = torch.randn(16, 16)
    low.set_affine(W, torch.zeros(16))
    assert torch.linalg.matrix_rank(low.matrix.detach()) == 4
    with pytest.raises(ConfigError, match="incompatible layers"):
        build_stitching_layer((16, 8, 8), (66, 192))  # 66 tokens: neither a square grid nor one plus CLS
    with pytest.raises(ConfigError, match="different lengths"):
        build_stitching_layer((65, 192), (17, 192))
    with pytest.raises(ConfigError, match="rank must be in 1..16"):
        build_stitching_layer((16, 8, 8), (32, 8, 8), rank=20)


def test_conv_stitch_equals_rows_times_matrix():
    torch.manual_seed(0)
    layer = build_stitching_layer((5, 4, 4), (3, 4, 4))
    W, b = torch.randn(5, 3), torch.randn(3)
    layer.set_affine(W, b)
    a = torch.randn(2, 5, 4, 4)
    out = layer(a)
    assert torch.allclose(to_rows(out), to_rows(a) @ W + b, atol=1e-5)


def test_identity_init_reproduces_model_two():
    torch.manual_seed(0)
    m = models.build("resnet20", 10).eval()
    net = StitchedNetwork(m, m, "layer2.1", "layer2.1")
    net.stitch.set_identity()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), m(x), atol=1e-5)


def test_nan_loss_raises_training_diverged(donor_store):
    from stitch.matching.task_loss import TrainingDiverged, train_task_loss

    m1, m2 = _donors(donor_store)
    ctx, _ = _ctx(m1, m2, "layer3", "layer3")
    net = ctx.new_network()
    with torch.no_grad():
        net.stitch.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="try a lower tlm.lr"):
        train_task_loss(net, ctx.source, TLMSettings(**{**TLM, "epochs": 1}), multilabel=False)


def test_the_activation_cache_shares_one_network_s_layers_and_keeps_within_its_budget(donor_store):
    """A layer x layer matrix: in self-stitching A at L is B at L (computed once), and however many layers
    pass through, the cache never holds more than its budget; served batches equal the streamed ones."""
    m1, _ = _donors(donor_store)
    dm = data.build("synthetic", **{k: v for k, v in SYNTH.items() if k != "name"})
    dm.setup()
    per_layer = {L: 384 * int(np.prod(s)) * 4 for L, s in m1.layer_shapes((3, 32, 32)).items()}
    budget = per_layer["relu2"] + per_layer["relu6"] + 2**16  # room for two layers (and labels, logits)
    cache = ActivationCache(budget)
    for L, M in [("relu2", "relu2"), ("relu2", "relu6"), ("relu6", "relu2"), ("relu6", "relu7"), ("relu7", "relu6")]:
        src = FeatureSource(m1, m1, L, M, dm, torch.device("cpu"), "32", cache, batch_size=64)
        cached = list(src.batches("train"))
        assert cache.nbytes() <= budget
        streamed = list(FeatureSource(m1, m1, L, M, dm, torch.device("cpu"), "32", None, batch_size=64)
                        .batches("train"))
        assert all(torch.equal(c.a, s.a) and torch.equal(c.b, s.b) and torch.equal(c.y, s.y)
                   for c, s in zip(cached, streamed))
        if L == M:  # the diagonal: one tensor serves as A and as B
            assert cached[0].a.data_ptr() == cached[0].b.data_ptr()
    layers = {k[1] for k in cache._items if isinstance(k[1], str) and k[1].startswith("relu")}
    assert layers == {"relu6", "relu7"}  # relu2 was evicted to make room, oldest first


def test_a_study_drops_the_activations_no_later_pair_needs_before_those_it_does(donor_store):
    """Between a matrix's rows the study drops the finished source layer, not the target layers the next row
    reads again: oldest-first eviction alone kept the source (used by every run of its row) and made each
    new row recompute its targets (ResNet-20 into layer3.x: 45–70 s a run)."""
    from types import SimpleNamespace

    from stitch.study.assembly import Donor, Study

    m1, m2 = _donors(donor_store)
    dm = data.build("synthetic", **{k: v for k, v in SYNTH.items() if k != "name"})
    dm.setup()
    shapes1, shapes2 = m1.layer_shapes((3, 32, 32)), m2.layer_shapes((3, 32, 32))
    targets = ["relu5", "relu6", "relu7"]
    # room for one row: a source and its three targets (the train split), plus logits and labels
    budget = 384 * 4 * (int(np.prod(shapes1["relu2"])) + sum(int(np.prod(shapes2[t])) for t in targets)) + 2**16
    key = store.DonorKey.make("synthetic", "tiny10", 0, {"padding": "kornblith"})
    pairs = [(source, t) for source in ("relu2", "relu3") for t in targets]
    settings = SimpleNamespace(batch_size=64, train_limit=None, test_limit=None, target_layer=targets)
    study = Study(settings, torch.device("cpu"), "32", dm,
                  Donor(m1, {}, key), Donor(m2, {}, key), pairs, ActivationCache(budget), torch.float32)
    computed = []
    real = m2.forward_to
    m2.forward_to = lambda x, layer: (computed.append(layer), real(x, layer))[1]
    try:
        for ctx in study.pairs():
            list(ctx.source.batches("train"))
            assert study.cache.nbytes() <= budget
    finally:
        del m2.forward_to
    per_pass = math.ceil(384 / 64)
    assert computed == [t for t in targets for _ in range(per_pass)]  # each target computed once, not once per row
    held = {k[1] for k in study.cache._items if len(k) == 4 and k[1] != "logits"}
    assert held == set()  # and nothing is left once no pair needs it


def test_dm_on_k_images_computes_those_alone_unless_the_split_is_cached(donor_store):
    """Paper 2's DM reads the first K = 100 training images: with nothing cached, a fit computes those K
    and caches nothing (not the 50,000-image split for 100); when the split is cached already (TLM ran on
    the pair), it reads the cache. Both ways give the same solve, within float32 rounding."""
    m1, m2 = _donors(donor_store)
    dm_settings = DMSettings(solver="ls", samples=100)
    ctx, _ = _ctx(m1, m2, "layer3", "layer5")
    streamed, info = fit_direct(ctx, dm_settings)
    assert info["rows"] == 100 * int(np.prod(m2.layer_shapes((3, 32, 32))["layer5"][1:]))
    assert ctx.source.cache.nbytes() == 0 and not ctx.source.holds("train")
    cached_ctx, _ = _ctx(m1, m2, "layer3", "layer5")
    list(cached_ctx.source.batches("train"))  # what a TLM run on the pair leaves behind
    assert cached_ctx.source.holds("train")
    held = cached_ctx.source.cache.nbytes()
    from_cache, _ = fit_direct(cached_ctx, dm_settings)
    assert cached_ctx.source.cache.nbytes() == held
    for p, q in zip(streamed.stitch.parameters(), from_cache.stitch.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_model_one_s_accuracy_is_measured_once_per_study_and_is_model_two_s_in_self_stitching(donor_store):
    """Model 1's accuracy depends on neither layer: a layer x layer study measures it with the first pair's
    evaluation and every later pair reads it (a 9 x 9 ResNet-20 matrix ran model 1's back half 81 times for
    it); when model 1 is model 2 it is model 2's accuracy, with no forward of its own. The value is the
    donor's accuracy on the test split, whichever layer measured it."""
    m1, m2 = _donors(donor_store)
    dm = data.build("synthetic", **{k: v for k, v in SYNTH.items() if k != "name"})
    dm.setup()
    with torch.no_grad():
        correct = sum(int((m1(x).argmax(1) == y).sum()) for x, y in dm.batches("test", 64))
    truth = correct / dm.size("test")
    cache, shared, seen = ActivationCache(2**30), {}, []
    real = m1.forward_from
    m1.forward_from = lambda h, layer: (seen.append(layer), real(h, layer))[1]
    try:
        for L, M in [("layer3", "layer5"), ("layer6", "layer2"), ("layer3", "layer3")]:
            src = FeatureSource(m1, m2, L, M, dm, torch.device("cpu"), "32", cache, batch_size=64, shared=shared)
            net, _ = fit_direct(PairContext(m1, m2, L, M, src, dm.input_shape), DMSettings(solver="ls", samples=64))
            assert evaluate(net, src, multilabel=False)["model1_acc"] == pytest.approx(truth, abs=1e-12)
    finally:
        del m1.forward_from
    assert seen == ["relu3"] * math.ceil(dm.size("test") / 64)  # layer3 is relu3: the first pair's evaluation only
    src = FeatureSource(m2, m2, "layer4", "layer6", dm, torch.device("cpu"), "32", cache, batch_size=64,
                        shared=shared)
    net, _ = fit_direct(PairContext(m2, m2, "layer4", "layer6", src, dm.input_shape), DMSettings(solver="ls"))
    metrics = evaluate(net, src, multilabel=False)
    assert metrics["model1_acc"] == metrics["model2_acc"]
    assert not any(k[1] == id(m2) for k in shared)  # measured with model 2's own logits, not a forward of its own


def test_a_run_whose_loss_stays_above_chance_is_flagged_in_the_table():
    from stitch.study.records import format_table

    base = {"layer": "bn1", "target_layer": "bn1", "method": "tlm", "status": "ok", "metrics": {"relative_acc": 0.21}}
    table = format_table([{**base, "fit": {"above_chance": True}}, {**base, "layer": "bn2", "fit": {"above_chance": False}}])
    lines = table.splitlines()
    assert lines[1].endswith("NOT CONVERGED (loss above chance)") and "NOT CONVERGED" not in lines[2]
