"""Tests for stitch.probing (Ding et al. 2021 specificity / sensitivity tests) and
stitch.matrices (layer x layer matrices from records, paper 2's pathology flag)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stitch import data as data_lib
from stitch import matrices, models, probing
from stitch.errors import ConfigError
from stitch.fileio import write_json
from stitch.results import load_records
from stitch.sorting import natural_key


# ------------------------------------------------------------- rank correlations
def test_rank_correlation_on_constructed_data():
    x = [1, 2, 3, 4, 5, 6]
    assert probing.rank_correlation(x, [10, 20, 30, 40, 50, 60])["spearman"] == pytest.approx(1.0)
    assert probing.rank_correlation(x, [1, 4, 9, 16, 25, 36])["kendall"] == pytest.approx(1.0)  # monotone
    r = probing.rank_correlation(x, [6, 5, 4, 3, 2, 1])
    assert r["spearman"] == pytest.approx(-1.0) and r["kendall"] == pytest.approx(-1.0) and r["n"] == 6
    # one swapped neighbour pair: tau = 1 - 2 * 1 / 15, rho = 1 - 6 * 2 / (6 * 35)
    r = probing.rank_correlation(x, [1, 3, 2, 4, 5, 6])
    assert r["kendall"] == pytest.approx(1 - 2 / 15)
    assert r["spearman"] == pytest.approx(1 - 12 / 210)
    assert probing.rank_correlation(x, [1] * 6)["spearman"] is None  # undefined, not NaN
    assert probing.rank_correlation([1, float("nan"), 3, 4], [1, 2, 3, 4])["n"] == 3


def test_specificity_on_constructed_matrix():
    layers = [f"layer{i}" for i in range(1, 7)]
    acc = dict(zip(layers, [0.25, 0.375, 0.5, 0.625, 0.75, 1.0]))  # exact in binary: ties stay ties
    # a "good" index: similarity decreases with the functional difference
    good = pd.DataFrame({t: {s: 1 - abs(acc[s] - acc[t]) for s in layers} for t in layers})
    res = probing.specificity_test(good, acc)
    assert res["spearman"] == pytest.approx(1.0) and res["kendall"] == pytest.approx(1.0)
    assert len(res["pairs"]) == 30  # diagonal left out
    # a distance given as such (higher = farther) behaves the same with higher_is_similar=False
    dist = 1 - good
    assert probing.specificity_test(dist, acc, higher_is_similar=False)["spearman"] == pytest.approx(1.0)
    # an index that prefers functionally different pairs is anti-correlated
    bad = pd.DataFrame({t: {s: abs(acc[s] - acc[t]) for s in layers} for t in layers})
    assert probing.specificity_test(bad, acc)["spearman"] == pytest.approx(-1.0)
    per = probing.specificity_test(good, acc, by_reference=True)
    assert per["mean_spearman"] == pytest.approx(1.0) and set(per["per_reference"]) == set(layers)
    with pytest.raises(ValueError, match="no probe accuracy"):
        probing.specificity_test(good, {"layer1": 0.3})


# ------------------------------------------------------------ component deletion
def _spectrum_data(n=400, c=6, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(c, c)))
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])[:c]
    return torch.tensor(rng.normal(size=(n, c)) * scales @ q.T + 1.5), q, scales


def test_delete_principal_components_removes_the_right_variance():
    X, _, scales = _spectrum_data()
    mean, comps, var = probing.pca_basis(X)
    assert torch.all(var[:-1] >= var[1:])  # sorted by decreasing variance
    total = ((X - X.mean(0)) ** 2).sum()
    for k in range(0, 7):
        low = probing.delete_principal_components(X, k, "lowest")
        kept = ((low.double() - mean) ** 2).sum()
        assert kept == pytest.approx(float(total * var[:6 - k].sum() / var.sum()), rel=1e-6)
        assert torch.allclose(low.mean(0), X.mean(0), atol=1e-6)  # the mean is kept
    top = probing.delete_principal_components(X, 2, "highest")
    assert ((top.double() - mean) ** 2).sum() == pytest.approx(float(total * var[2:].sum() / var.sum()), rel=1e-6)
    assert torch.equal(probing.delete_principal_components(X, 0), X)
    # conv layout: components of the channel axis, per position
    h = torch.randn(5, 4, 3, 3)
    assert probing.delete_principal_components(h, 4).allclose(h.mean((0, 2, 3), keepdim=True).expand_as(h),
                                                              atol=1e-5)
    with pytest.raises(ConfigError, match="lowest or highest"):
        probing.delete_principal_components(X, 1, "random")
    with pytest.raises(ValueError, match="0..6"):
        probing.delete_principal_components(X, 7)


def test_sensitivity_test_on_constructed_data():
    # class information lives in the two *lowest*-variance directions: deleting low-variance
    # components (Ding et al.'s low-rank approximations) destroys the probe, CKA hardly moves
    rng = np.random.default_rng(1)
    n, c = 600, 6
    y = rng.integers(0, 4, n)
    centers = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]]) * 0.6
    X = np.concatenate([rng.normal(size=(n, 4)) * [6, 5, 4, 3], centers[y] + 0.1 * rng.normal(size=(n, 2))], 1)
    X = torch.tensor(X, dtype=torch.float32)
    tr, te = slice(0, 400), slice(400, 600)
    kept_fraction = lambda a, b: float(a.var(0).sum() / b.var(0).sum())  # noqa: E731 (tracks the deletion)
    res = probing.sensitivity_test(X[tr], X[te], y[tr], y[te], [0, 1, 2, 3, 4],
                                   {"cka": probing.index_similarity("cka"), "kept": kept_fraction})
    curve = res["curve"]
    assert list(curve["k"]) == [0, 1, 2, 3, 4]
    assert curve["probe_acc"].iloc[0] > 0.95 and curve["probe_acc"].iloc[-1] < 0.6
    assert curve["cka"].iloc[0] == pytest.approx(1.0)
    assert res["correlations"]["kept"]["spearman"] > 0.8
    assert curve["cka"].iloc[2] > 0.99  # insensitive to the deletion that removed all task information


def test_linear_probe_and_probe_layers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = np.eye(3)[y] * 3 + 0.3 * rng.normal(size=(300, 3))
    assert probing.linear_probe_accuracy(X[:200], y[:200], X[200:], y[200:]) > 0.95
    torch.manual_seed(0)
    dm = data_lib.build("synthetic", train_size=64, test_size=32, normalize=False, augment=False)
    net = models.build("tiny10", 10, 3).eval()
    accs = probing.probe_layers(net, dm, ["layer2", "layer8"], max_iter=100)
    assert set(accs) == {"layer2", "layer8"} and all(0 <= v <= 1 for v in accs.values())
    acts, labels = probing.collect_activations(net, dm, ["layer8", "layer2"], "test", pooled=False)
    x = next(dm.batches("test", 32))[0]
    with torch.no_grad():
        assert torch.allclose(acts["layer8"], net.forward_to(x, "layer8"), atol=1e-5)
    # DM stitch of a representation onto itself through model 2's head = model 2's accuracy
    head = lambda h: net.forward_from(h, "layer8")  # noqa: E731
    a_tr, _ = probing.collect_activations(net, dm, ["layer8"], "train", pooled=False)
    dm_acc = probing.direct_matching_accuracy(a_tr["layer8"], a_tr["layer8"], acts["layer8"], labels, head)
    with torch.no_grad():
        own = float((net(x).argmax(1) == labels).float().mean())
    assert dm_acc == pytest.approx(own, abs=1e-6)


# ---------------------------------------------------------------------- matrices
def _records():
    layers = ["layer1", "layer2", "layer10"]
    recs = []
    # TLM: layer1 -> layer10 beats the diagonal layer10 -> layer10 (paper 2's pathology)
    tlm = {("layer1", "layer10"): 0.99, ("layer10", "layer10"): 0.90, ("layer2", "layer10"): 0.80}
    for s in layers:
        for t in layers:
            for method in ("tlm", "dm"):
                rel = tlm.get((s, t), 1.0 if s == t else 0.5) if method == "tlm" else (1.0 if s == t else 0.4)
                recs.append({"layer": s, "target_layer": t, "method": method, "kind": method, "status": "ok",
                             "model1": {"key": "digits/tiny10/seed0"}, "model2": {"key": "digits/tiny10/seed0"},
                             "metrics": {"relative_acc": rel, "ood/auroc": 0.5 if s == t else 0.9,
                                         "dm_structural": 0.0 if s == t else 0.3, "sim_raw/cka": 1.0 if s == t else
                                         0.6, "sim_raw/opd": 0.0 if s == t else 0.7, "sim_raw/pwcca": None}})
    return recs


def test_matrices_from_records():
    mats = matrices.similarity_matrices(_records())
    assert {"tlm/relative_acc", "dm/relative_acc", "tlm/ood_auroc", "dm/ood_auroc", "dm/dm_structural", "cka",
            "opd"} <= set(mats)
    assert "pwcca" not in mats  # no values at all: dropped
    m = mats["tlm/relative_acc"]
    assert list(m.index) == ["layer1", "layer2", "layer10"] == list(m.columns)  # natural layer order
    assert m.index.name == "source" and m.columns.name == "target"
    assert m.at["layer1", "layer10"] == 0.99
    # seeds average
    recs = _records() + [dict(r, metrics={**r["metrics"], "relative_acc": 0.0}) for r in _records()[:1]]
    assert matrices.metric_matrix(recs, "relative_acc", method="tlm").at["layer1", "layer1"] == pytest.approx(0.5)


def test_pathology_flag_on_constructed_matrix():
    mats, flags = matrices.matrices_and_flags(_records())
    tlm = flags["tlm/relative_acc"]
    assert [(f["target"], f["source"]) for f in tlm] == [("layer10", "layer1")]
    f = tlm[0]
    assert f["value"] == 0.99 and f["diagonal_value"] == 0.90 and f["margin"] == pytest.approx(0.09)
    assert flags["dm/relative_acc"] == [] and flags["opd"] == [] and flags["cka"] == []
    assert "tlm/ood_auroc" not in flags  # no better/worse direction
    assert matrices.pathology_flags(mats["tlm/relative_acc"], tol=0.1) == []
    # distances: lower is better
    d = pd.DataFrame([[0.0, 0.3], [0.2, 0.4]], index=["a", "b"], columns=["a", "b"])
    out = matrices.pathology_flags(d, higher_is_better=False)
    assert [(x["target"], x["source"]) for x in out] == [("b", "a")]
    # an explicit diagonal mapping (different architectures)
    m2 = pd.DataFrame([[0.9, 0.1], [0.8, 0.95]], index=["x1", "x2"], columns=["y1", "y2"])
    assert matrices.pathology_flags(m2, diagonal={"y1": "x2", "y2": "x2"})[0]["source"] == "x1"
    with pytest.raises(ValueError, match="no better/worse"):
        matrices.pathology_flags(d, None)


def test_natural_key_orders_numbers_as_numbers():
    names = ["layer10", "fc", "layer2", "layer1.1", "blocks.10", "layer1.0", "blocks.2", "layer1", "1x"]
    assert sorted(names, key=natural_key) == ["1x", "blocks.2", "blocks.10", "fc", "layer1", "layer1.0", "layer1.1",
                                              "layer2", "layer10"]
    assert sorted([10, "2", 1.5], key=natural_key) == [1.5, "2", 10]  # any value, by its text; never int vs str


def test_load_and_select_records(tmp_path):
    for i, r in enumerate(_records()[:4]):
        write_json(tmp_path / "records" / f"r{i}.json", r)
    write_json(tmp_path / "records" / "bad.json", {"status": "failed"})
    recs = load_records(tmp_path)
    assert len(recs) == 4
    other = dict(recs[0], model2={"key": "digits/tiny10/seed1"})
    with pytest.raises(ValueError, match="several model pairs"):
        matrices.select_records(recs + [other])
    assert len(matrices.select_records(recs + [other], model2="seed0")) == 4
    with pytest.raises(ValueError, match="unknown matrix metric"):
        matrices.similarity_matrices(recs, ["accuracy"])


def test_specificity_for_every_matrix():
    mats = matrices.similarity_matrices(_records())
    acc = {"layer1": 0.5, "layer2": 0.75, "layer10": 1.0}
    table = probing.specificity_for_matrices(mats, acc)
    assert "tlm/ood_auroc" not in set(table["matrix"])  # no direction
    assert {"tlm/relative_acc", "dm/relative_acc", "cka", "opd", "dm/dm_structural"} <= set(table["matrix"])
    assert (table["n"] == 6).all()
    assert "mean_spearman" in probing.specificity_for_matrices(mats, acc, by_reference=True)


# ----------------------------------------------------------------- the probing step (stitch.py step=probing)
@pytest.mark.slow
def test_probing_step_tests_every_index_of_a_finished_study_and_draws_them(tmp_path, donor_store):
    """step=probing reads the study's layer x layer records, probes the layers, runs specificity over the
    pairs and sensitivity by PC deletion for TLM, DM, CKA, PWCCA and OPD, writes one record; sweep draws it."""
    import json

    from .conftest import SYNTH_OVERRIDES, run_script

    common = [f"store={donor_store}", f"results_dir={tmp_path}/res", f"hydra.run.dir={tmp_path}/out",
              *SYNTH_OVERRIDES, "layer=[relu6,relu7,relu8]", "target_layer=all", "model2.seed=0", "tlm.epochs=1",
              "similarity.indices=[cka,pwcca,opd]", "similarity.samples=64"]
    early = run_script("stitch.py", *common, "step=probing")
    assert early.returncode == 2 and "run the study first" in early.stderr  # nothing to probe yet
    r = run_script("stitch.py", *common, "target_layer=[relu6,relu7,relu8]")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_script("stitch.py", *common, "target_layer=[relu6,relu7,relu8]", "step=probing",
                   "probing.train_limit=256", "probing.levels=3", "probing.layers=[relu8]")
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = (tmp_path / "res" / "probing").glob("*.json")
    rec = json.loads(path.read_text())
    assert set(rec["probe_acc_model1"]) == {"relu6", "relu7", "relu8"}
    assert all(0 <= v <= 1 for v in rec["probe_acc_model1"].values())
    assert [row["index"] for row in rec["specificity"]] == ["dm relative accuracy", "tlm relative accuracy",
                                                             "CKA", "PWCCA", "OPD"]
    assert [row["n"] for row in rec["specificity"]][:3] == [6, 6, 6]  # the 3 x 3 matrix without its diagonal
    (sens,) = rec["sensitivity"]
    assert sens["layer"] == "relu8" and set(sens["correlations"]) == {"cka", "pwcca", "opd", "dm", "tlm"}
    assert sens["ks"][0] == 0 and len(sens["curve"]["probe_acc"]) == 3
    # deleting no component leaves the representation itself: CKA 1, OPD 0
    assert sens["curve"]["cka"][0] == pytest.approx(1.0, abs=1e-4) and sens["curve"]["opd"][0] == pytest.approx(0, abs=1e-3)
    assert "specificity rho" in r.stdout
    s = run_script("sweep.py", f"inputs=[{tmp_path}/res]", "figures=[p2_probing]", f"out={tmp_path}/fig")
    assert s.returncode == 0, s.stderr[-2000:]
    assert (tmp_path / "fig" / "fig-p2-probing.png").is_file()


def test_claim_numbers_count_cells_above_the_diagonal_and_separable_aurocs():
    """Paper 2's claims as numbers: off-diagonal cells at or above their column's diagonal, targets with a
    better source than themselves, and AUROC on/off the diagonal (separability counts both directions)."""
    layers = ["l1", "l2", "l3"]
    acc = {("l1", "l1"): 0.9, ("l2", "l1"): 0.95, ("l3", "l1"): 0.5,   # l2 rated closer to l1 than l1 itself
           ("l1", "l2"): 0.6, ("l2", "l2"): 1.0, ("l3", "l2"): 1.0,    # a tie with the diagonal counts as at/above
           ("l1", "l3"): 0.2, ("l2", "l3"): 0.3, ("l3", "l3"): 1.0}
    recs = [{"layer": L, "target_layer": M, "method": "tlm", "variant": "paper2", "status": "ok",
             "model1": {"key": "d/tiny10/in0"}, "model2": {"key": "d/tiny10/in0"},
             "metrics": {"relative_acc": acc[L, M], "ood/auroc": 0.5 if L == M else 0.1,
                         "ood/detector_trusted": float(M != "l3")}} for L in layers for M in layers]
    (row,) = matrices.claim_numbers(recs)
    assert row["off_diagonal_cells"] == 6 and row["at_or_above_diagonal"] == 2
    assert row["targets_with_better_source"] == 1  # l1 (the tie at l2 is not better)
    assert row["auroc_diagonal"] == pytest.approx(0.5) and row["auroc_off_diagonal"] == pytest.approx(0.1)
    assert row["separability_off_diagonal"] == pytest.approx(0.4) and row["separability_diagonal"] == 0
    assert row["trusted_auroc_off_diagonal_cells"] == 4  # the two cells into l3 have an untrusted detector
