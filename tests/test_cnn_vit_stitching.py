"""CNN <-> ViT stitching: ConvToTokens / TokensToConv layers, DM exactness, TLM, and the CLI end to end."""
from __future__ import annotations

import math

import pytest
import torch

from stitch import models
from stitch.errors import ConfigError
from stitch.matching import MatchingStatistics, direct, solve
from stitch.results import load_records
from stitch.activations import to_rows
from stitch.stitching import StitchedNetwork, build_stitching_layer
from stitch.stitching.layers import ConvToTokens, TokensToConv

from .conftest import SYNTH_OVERRIDES, run_script


def test_shapes_both_ways_with_and_without_cls():
    a = torch.randn(2, 16, 12, 12)
    c2t = build_stitching_layer((16, 12, 12), (65, 24))  # 8x8 grid + CLS
    assert isinstance(c2t, ConvToTokens) and (c2t.grid, c2t.cls) == (8, True)
    assert c2t.prepare(a).shape == (2, 65, 16) and c2t(a).shape == (2, 65, 24)
    c2t = build_stitching_layer((16, 12, 12), (36, 24))  # 6x6 grid, no CLS
    assert (c2t.grid, c2t.cls) == (6, False) and c2t(a).shape == (2, 36, 24)

    t = torch.randn(2, 65, 24)
    t2c = build_stitching_layer((65, 24), (16, 12, 12))
    assert isinstance(t2c, TokensToConv) and (t2c.grid, t2c.cls) == (8, True)
    assert t2c.prepare(t).shape == (2, 24, 12, 12) and t2c(t).shape == (2, 16, 12, 12)
    assert build_stitching_layer((64, 24), (16, 8, 8))(t[:, 1:]).shape == (2, 16, 8, 8)


def test_cls_rule_and_token_order():
    # same spatial size: no resize, so patch tokens are exactly the positions in row-major order
    a = torch.randn(3, 4, 5, 5)
    p = build_stitching_layer((4, 5, 5), (26, 8)).prepare(a)
    assert torch.equal(p[:, 1:], a.flatten(2).transpose(1, 2))
    assert p[1, 1 + 2 * 5 + 3].tolist() == a[1, :, 2, 3].tolist()  # token 1 + i*g + j is position (i, j)
    assert torch.allclose(p[:, 0], a.mean((2, 3)))  # CLS input = global average pool
    # with a resize, tokens and CLS input come from the *resized* map (bilinear, no antialias)
    a10 = torch.randn(3, 4, 10, 10)
    resized = torch.nn.functional.interpolate(a10, size=(5, 5), mode="bilinear", align_corners=False)
    p = build_stitching_layer((4, 10, 10), (26, 8)).prepare(a10)
    assert torch.allclose(p[:, 1:], resized.flatten(2).transpose(1, 2))
    assert torch.allclose(p[:, 0], resized.mean((2, 3)))

    # tokens -> conv: the CLS token never reaches the map; folding inverts the flattening
    t = torch.randn(3, 26, 4)
    t2c = build_stitching_layer((26, 4), (8, 5, 5))
    folded = t2c.prepare(t)
    assert torch.equal(folded.flatten(2).transpose(1, 2), t[:, 1:])
    t_cls = t.clone()
    t_cls[:, 0] = 1e6
    assert torch.equal(t2c(t_cls), t2c(t))


def _check_dm_exact(layer, a, c_in, c_out, solver="direct"):
    """B = prepare(A) @ W0 + b0 per token/position: DM must recover (W0, b0) and the stitch must give B."""
    g = torch.Generator().manual_seed(1)
    W0 = torch.randn(c_in, c_out, generator=g, dtype=torch.float64)
    b0 = torch.randn(c_out, generator=g, dtype=torch.float64)
    pa = layer.prepare(a).double()
    rows_b = to_rows(pa) @ W0 + b0
    # B in the target layout: tokens stay N x T x D; a map is rebuilt as N x C x H x W
    b = rows_b.reshape(pa.shape[0], -1, c_out) if pa.dim() == 3 else \
        rows_b.reshape(pa.shape[0], pa.shape[2], pa.shape[3], c_out).permute(0, 3, 1, 2)
    if solver == "direct":
        W, bias = direct(to_rows(pa), to_rows(b))
    else:  # the streaming path of matching.fitting.fit_direct, batch by batch
        stats = MatchingStatistics()
        for i in range(0, len(a), 3):
            stats.update(to_rows(layer.prepare(a[i:i + 3])), to_rows(b[i:i + 3]), check_finite=False)
        W, bias = solve(stats, kind="ls")
    assert torch.allclose(W, W0, atol=1e-6) and torch.allclose(bias, b0, atol=1e-6)
    layer.set_affine(W.float(), bias.float())
    with torch.no_grad():
        out = layer(a)
    assert out.shape == b.shape and torch.allclose(out.double(), b, atol=1e-4)


@pytest.mark.parametrize("solver", ["direct", "stream"])
def test_dm_exact_conv_to_tokens(solver):
    torch.manual_seed(0)
    for dst in [(17, 12), (16, 12)]:  # 4x4 grid with and without CLS
        _check_dm_exact(build_stitching_layer((6, 7, 7), dst), torch.randn(10, 6, 7, 7), 6, 12, solver)


@pytest.mark.parametrize("solver", ["direct", "stream"])
def test_dm_exact_tokens_to_conv(solver):
    torch.manual_seed(0)
    for src in [(17, 6), (16, 6)]:
        _check_dm_exact(build_stitching_layer(src, (12, 6, 6)), torch.randn(10, src[0], 6), 6, 12, solver)


@pytest.mark.parametrize("reverse", [False, True])
def test_task_loss_training_decreases_loss(reverse):
    torch.manual_seed(0)
    cnn = models.build("resnet18", 10)
    vit = models.build("vit_tiny", 10, img_size=32, patch_size=4, depth=4)
    front, back, L, M = (vit, cnn, "blocks.1", "layer2.0") if reverse else (cnn, vit, "layer2.0", "blocks.1")
    net = StitchedNetwork(front, back, L, M)
    assert isinstance(net.stitch, TokensToConv if reverse else ConvToTokens)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    with torch.no_grad():
        a = net.source(x)
    opt = torch.optim.Adam(net.stitch.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(net.forward_from_source(a), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.05, losses
    assert not any(p.grad is not None for p in [*front.parameters(), *back.parameters()])  # donors frozen


def test_rank_k():
    for src, dst, a, out in [((16, 8, 8), (17, 12), torch.randn(2, 16, 8, 8), (2, 17, 12)),
                             ((17, 12), (16, 8, 8), torch.randn(2, 17, 12), (2, 16, 8, 8))]:
        layer = build_stitching_layer(src, dst, rank=3)
        assert layer.rank == 3 and torch.linalg.matrix_rank(layer.matrix.detach()) == 3
        layer.set_affine(torch.randn(layer.c_in, layer.c_out), torch.zeros(layer.c_out))  # SVD-truncated
        assert torch.linalg.matrix_rank(layer.matrix.detach()) == 3 and layer(a).shape == out
    with pytest.raises(ConfigError, match="rank must be in 1..12"):
        build_stitching_layer((16, 8, 8), (17, 12), rank=13)


def test_bad_token_count_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"\(66, 192\) have 66 tokens, neither g\*g .* nor g\*g \+ 1"):
        build_stitching_layer((16, 8, 8), (66, 192))
    with pytest.raises(ConfigError, match="have 66 tokens"):
        build_stitching_layer((66, 192), (16, 8, 8))
    with pytest.raises(ConfigError, match="different lengths"):  # token -> token still needs equal lengths
        build_stitching_layer((65, 192), (17, 192))


# -------------------------------------------------------------------- CLI end to end
TINY = ["data.train_size=64", "data.test_size=32", "donor.epochs=1", "donor.allow_chance=true", "similarity.samples=32", "tlm.epochs=1",
        "method=[tlm,dm]"]


def _cli(tmp_path, store, *args):
    return run_script("stitch.py", f"store={store}", f"results_dir={tmp_path}/res", *SYNTH_OVERRIDES, *TINY,
                      f"hydra.run.dir={tmp_path}/out", *args)


def test_cli_resnet18_vit_both_directions(tmp_path):  # ~30 s on one CPU core: not marked slow
    store = tmp_path / "store"
    # the same two donors both ways: resnet18 seed 0 and vit seed 1, trained once by the first run
    runs = {"cnn_to_vit": ["model@model1=resnet18", "model@model2=vit_tiny_32", "layer=layer2.0",
                           "target_layer=blocks.3"],
            "vit_to_cnn": ["model@model1=vit_tiny_32", "model@model2=resnet18", "layer=blocks.3",
                           "target_layer=layer2.0", "model1.seed=1", "model2.seed=0"]}
    for name, args in runs.items():
        r = _cli(tmp_path / name, store, *args)
        assert r.returncode == 0, r.stderr[-3000:]
        recs = load_records(tmp_path / name / "res", status=None)
        assert sorted(x["method"] for x in recs) == ["dm", "tlm"]
        for rec in recs:
            assert rec["status"] == "ok", rec.get("error")
            assert rec["layer"] == args[2].split("=")[1] and rec["target_layer"] == args[3].split("=")[1]
            m = rec["metrics"]  # similarity indices undefined at 32 samples are None, not NaN
            assert all(math.isfinite(m[k]) for k in ("relative_acc", "stitched_acc", "cross_entropy", "dm_structural",
                                                      "sim/cka")), m
            assert all(math.isfinite(v) for v in m.values() if isinstance(v, (int, float))), m
