"""Every figure of sweep.py drawn from synthetic records with the shapes real studies write.

Fast (no training): the figures' data handling and layout. The smoke experiments that
produce such records for real are run by tests/test_resume.py::test_smoke_experiments.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stitch.sweep.collect import aggregate, collect
from stitch.sweep.figures import FIGURES, FigureContext, draw, fill_sparsity
from stitch.sweep.report import run_sweep

from .figure_checks import assert_real_figure, kept_figures, panels  # noqa: F401 - kept_figures: a fixture

TINY = [f"layer{i}" for i in range(1, 9)]


@pytest.fixture(autouse=True)
def _close_kept_figures():
    """Figures kept open for inspection (FigureContext.keep) are closed after each test."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def rec(run, layer, method="tlm", variant=None, seed=0, m1=0, m2=1, model="tiny10", options=None, target=None,
        mcfg=None, metrics=None, history=None, fit=None, stitch_file=None, status="ok", extra_cfg=None):
    options = options or ({"padding": "kornblith"} if model == "tiny10" else {})
    tag = model + "".join(f"-{k}={v}" for k, v in sorted(options.items()) if k != "padding")
    kind = "tlm" if method == "tlm" else "dm"
    mcfg = {"kind": kind, "name": variant, "epochs": 5, **(mcfg or {})}
    md = lambda s: {"name": model, "options": options, "seed": s, "key": f"digits/{tag}/seed{s}"}  # noqa: E731
    r = {"run": run, "study": "synthetic", "layer": layer, "target_layer": target or layer, "method": method,
         "kind": kind, "variant": variant, "seed": seed, "data": "digits", "self_stitch": m1 == m2,
         "status": status, "model1": md(m1), "model2": md(m2),
         "config": {"data": {"name": "digits"}, "method_config": mcfg, "seed": seed, "model1": md(m1),
                    "model2": md(m2), **(extra_cfg or {})},
         "metrics": metrics or {}, "fit": fit or {"steps": 20}, "history": history or []}
    if stitch_file:
        r["stitch_file"] = stitch_file
    return r


def _energies(stitched_centre: float) -> dict:
    """A record's ``ood_energies``: percentiles of normal energies (in: -10, sanity set: -3)."""
    from statistics import NormalDist

    pct = list(range(101))
    q = lambda mu, sd: [NormalDist(mu, sd).inv_cdf(min(max(p / 100, 1e-4), 1 - 1e-4)) for p in pct]  # noqa: E731
    return {"percentiles": pct, "in": q(-10, 1.5), "stitched": q(stitched_centre, 1.5), "sanity": q(-3, 1.5),
            "sanity_data": "svhn"}


def dump(d: Path, records: list[dict]) -> Path:
    (d / "records").mkdir(parents=True, exist_ok=True)
    for r in records:
        (d / "records" / f"{r['run']}.json").write_text(json.dumps(r))
    return d


def _records(tmp: Path) -> dict[str, list[dict]]:
    rng = np.random.default_rng(0)
    out: dict[str, list[dict]] = {k: [] for k in FIGURES}
    # Fig. 2: per-layer TLM (paper 1 recipe) vs least squares, 3 donor pairs, one failed run
    for m1 in (0, 2, 3):
        for i, L in enumerate(TINY):
            for method, variant, base in (("tlm", "paper1", 0.97), ("dm", "least_squares", 0.9 - 0.05 * (i % 4))):
                out["p1_fig2"].append(rec(f"f2-{method}-{L}-{m1}", L, method, variant, m1=m1, metrics={
                    "relative_acc": base + 0.02 * rng.standard_normal(), "cross_entropy": 0.3 + 0.2 * i / 8
                    + 0.05 * rng.random()}))
    out["p1_fig2"].append(rec("f2-failed", "layer3", status="failed", m1=4))
    # Fig. 3: ResNet-20 widths
    for w in (0.5, 1, 2):
        for L in ("layer1.0", "layer2.0", "layer3.0"):
            for s in (0, 1):
                out["p1_fig3"].append(rec(f"f3-{w}-{L}-{s}", L, "tlm", "paper1", seed=s, model="resnet20",
                                          options={"width": w}, metrics={"relative_acc": 0.85 + 0.05 * w
                                                                         + 0.01 * rng.standard_normal()}))
    # Fig. 4: tracked TLM from least squares
    for s in range(3):
        hist = [{"step": t, "cka": 0.9 - 0.01 * t + 0.02 * rng.random(), "r2": 0.6 - 0.005 * t,
                 "cross_entropy": 1.0 / (1 + 0.2 * t), "stitched_acc": 0.8 + 0.005 * t} for t in range(0, 31, 3)]
        out["p1_fig4"].append(rec(f"f4-{s}", "layer3", "tlm", "paper1", seed=s, mcfg={"init": "dm", "track_every": 3},
                                  history=hist, metrics={"relative_acc": 0.95}))
    # Fig. 5: CKA penalty, self-stitch
    for w in (0.0, 2.0):
        for s in range(2):
            hist = [{"step": t, "cka": 1.0 - (0.02 * t if w else 0.001 * t), "cross_entropy": 0.1,
                     "stitched_acc": 0.95 - 0.001 * t} for t in range(0, 41, 2)]
            out["p1_fig5"].append(rec(f"f5-{w}-{s}", "layer2.0", "tlm", "paper2", seed=s, m1=0, m2=0,
                                      model="resnet20", options={"width": 1},
                                      mcfg={"init": "identity", "cka_penalty": w, "track_every": 2},
                                      history=hist, metrics={"relative_acc": 0.99}))
    # Fig. 6: initialisations
    for init, mu in (("random", 0.7), ("identity", 0.85), ("dm", 0.97)):
        for s in range(12):
            out["p1_fig6"].append(rec(f"f6-{init}-{s}", "layer5", "tlm", "paper2", seed=s, mcfg={"init": init},
                                      metrics={"relative_acc": float(np.clip(mu + 0.08 * rng.standard_normal(),
                                                                             0, 1))}))
    # Fig. 7: low rank + full-rank references
    for L in ("layer3", "layer6"):
        for k in (4, 8, 16):
            for s in (0, 1):
                out["p1_fig7"].append(rec(f"f7-tlm-{L}-{k}-{s}", L, "tlm", "paper1", seed=s, mcfg={"rank": k},
                                          extra_cfg={"rank": k}, metrics={"relative_acc": 1 - 0.5 / k}))
                out["p1_fig7"].append(rec(f"f7-dm-{L}-{k}-{s}", L, "dm", "reduced_rank", seed=s,
                                          mcfg={"solver": "rank", "rank": k}, extra_cfg={"rank": k},
                                          metrics={"relative_acc": 1 - 2.0 / k}))
        out["p1_fig7"].append(rec(f"f7-ls-{L}", L, "dm", "least_squares", mcfg={"solver": "ls"},
                                  metrics={"relative_acc": 0.93}))
    # Fig. 8: sparsity, with saved stitching layers for the example matrices
    (tmp / "p1_fig8" / "stitches").mkdir(parents=True)
    for kind, strengths in (("tlm", (0.0, 1e-3, 1e-2)), ("dm", (1e-3, 1e-2, 1e-1))):
        for j, a in enumerate(strengths):
            W = torch.randn(32, 32)
            W[torch.rand(32, 32) < 0.3 * j] = 0
            name = f"f8-{kind}-{j}"
            torch.save({"weight": W, "bias": torch.zeros(32)}, tmp / "p1_fig8" / "stitches" / f"{name}.pt")
            mcfg = {"l1": a} if kind == "tlm" else {"solver": "lasso", "alpha": a, "zero_threshold": 1e-4}
            fit = {"steps": 10} if a == 0 else {"steps": 10, "sparsity": float((W.abs() < 1e-4).float().mean())}
            out["p1_fig8"].append(rec(name, "layer4", kind, "paper2" if kind == "tlm" else "lasso", mcfg=mcfg,
                                      fit=fit, stitch_file=f"stitches/{name}.pt",
                                      metrics={"relative_acc": 0.95 - (0.1 if kind == "tlm" else 0.4) * j / 2}))
    # linear mode connectivity: TLM from 3 seeds and least squares, and the LMC step's records
    # (<results_dir>/lmc/*.json, written by stitch.py step=lmc) that the figure only reads
    (tmp / "p1_lmc" / "lmc").mkdir(parents=True)
    grid = [i / 10 for i in range(11)]
    for L in ("layer2", "layer6"):
        ends = [rec(f"lmc-tlm-{L}-{s}", L, "tlm", "paper1", seed=s, stitch_file=f"stitches/lmc-tlm-{L}-{s}.pt",
                    metrics={"relative_acc": 0.95}) for s in range(3)]
        ends.append(rec(f"lmc-dm-{L}", L, "dm", "least_squares", stitch_file=f"stitches/lmc-dm-{L}.pt",
                        metrics={"relative_acc": 0.9}))
        out["p1_lmc"] += ends
        for k, (ptype, a, b, dip) in enumerate([("seeds", 0, 1, 0.6), ("seeds", 0, 2, 0.5), ("methods", 0, 3, 0.2),
                                                ("methods", 1, 3, 0.25)]):
            acc = [0.95 - dip * 4 * x * (1 - x) + 0.01 * rng.standard_normal() for x in grid]
            lmc = {"lmc": f"{L}-{k}", "status": "ok", "pair_type": ptype, "run0": ends[a]["run"],
                   "run1": ends[b]["run"], "method0": ends[a]["method"], "method1": ends[b]["method"],
                   "variant0": ends[a]["variant"], "variant1": ends[b]["variant"], "layer": L, "target_layer": L,
                   "model1": ends[a]["model1"], "lambdas": grid, "relative_acc": acc,
                   "stitched_acc": [0.9 * v for v in acc], "cross_entropy": [1 - v for v in acc]}
            (tmp / "p1_lmc" / "lmc" / f"{L}-{k}.json").write_text(json.dumps(lmc))
    # Paper 2: layer x layer matrices, intra and inter network, TLM and DM, with OOD AUROC
    layers = ["layer1", "layer3", "layer5", "layer7"]
    for m2 in (0, 1):
        for i, L in enumerate(layers):
            for j, M in enumerate(layers):
                for method, variant in (("tlm", "paper2"), ("dm", "paper2")):
                    acc = 0.95 - (0.05 if method == "tlm" else 0.2) * abs(i - j)
                    auroc = 0.5 + (0.1 * abs(i - j) + 0.2 if method == "tlm" else 0.02 * abs(i - j))
                    r = rec(f"p2-{m2}-{L}-{M}-{method}", L, method, variant, m2=m2, target=M,
                            metrics={"relative_acc": acc, "ood/auroc": min(auroc, 1.0),
                                     "ood/sanity_auroc": 0.97,
                                     # each network its own detectors: model 2 = seed 1 also fails at layer5
                                     "ood/detector_trusted": float(M != "layer7" and (m2, M) != (1, "layer5"))})
                    r["ood_energies"] = _energies(-10 + 3 * abs(i - j))
                    out["p2_fig2"].append(r)
    out["p2_fig1"] = [r for r in out["p2_fig2"] if r["self_stitch"] and r["method"] == "tlm"]
    out["p2_fig3"] = [json.loads(json.dumps(r).replace('"padding": "kornblith"', '"variant": "same_size"')
                                 .replace("tiny10", "resnet18")) for r in out["p2_fig2"] if r["self_stitch"]]
    vit = [f"blocks.{i}" for i in (0, 3, 7, 11)]
    for i, L in enumerate(vit):
        for j, M in enumerate(vit):
            for method in ("tlm", "dm"):
                out["p2_fig4"].append(rec(f"p4-{L}-{M}-{method}", L, method, "paper2", m2=0, model="vit_tiny",
                                          options={"img_size": 32, "patch_size": 4}, target=M,
                                          metrics={"relative_acc": 1 - 0.1 * abs(i - j)}))
    return out


def _probing_record() -> dict:
    """A step=probing record (stitch/study/probing.py): specificity rows and sensitivity at two layers."""
    corr = lambda rho: {"n": 4, "spearman": rho, "spearman_p": 0.1, "kendall": rho, "kendall_p": 0.1}  # noqa: E731
    spec = [{"index": name, "n": 12, "spearman": rho, "kendall": rho} for name, rho in
            [("dm relative accuracy", 0.6), ("tlm relative accuracy", 0.1), ("CKA", 0.5), ("PWCCA", 0.4),
             ("OPD", 0.45)]]
    sens = [{"layer": L, "target_layer": L, "ks": [0, 5, 10], "correlations": {
        "cka": corr(0.8), "pwcca": corr(0.7), "opd": corr(0.9), "dm": corr(0.95), "tlm": corr(0.2)}}
        for L in ("layer3", "layer5")]
    return {"model1": {"key": "digits/tiny10/seed0"}, "model2": {"key": "digits/tiny10/seed0"}, "self_stitch": True,
            "specificity": spec, "sensitivity": sens, "data": "digits", "records": 32, "study": "p2_probing_smoke",
            "settings": {"train_limit": 2000, "tlm_epochs": 3, "levels": 4, "layers": None}}


@pytest.fixture(scope="module")
def figure_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("figs")
    recs = _records(tmp)
    recs["p2_probing"] = recs["p2_fig2"]  # a probing record sits beside a layer x layer study's records
    dirs = {name: dump(tmp / name, records) for name, records in recs.items() if records}
    (dirs["p2_probing"] / "probing").mkdir()
    (dirs["p2_probing"] / "probing" / "pair.json").write_text(json.dumps(_probing_record()))
    return dirs


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_draws_png_and_pdf(name, figure_dirs, tmp_path):
    c = collect([figure_dirs[name]])
    assert FIGURES[name].applies(c.runs), f"{name} does not recognise its own records"
    formats = ("png", "pdf") if name in ("p1_fig2", "p2_fig2") else ("png",)  # PDF export is slow: twice is enough
    ctx = FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, FIGURES[name].stem, formats=formats,
                        keep={})
    paths = [p for p in draw(name, ctx) if p.suffix != ".csv"]  # paper 2's figures add their claim numbers
    assert {p.suffix for p in paths} == {f".{f}" for f in formats}
    assert all(p.is_file() for p in paths)
    for fig in ctx.keep.values():  # what a reader relies on: data drawn, labelled axes, a title
        assert_real_figure(fig)
    from matplotlib import image

    img = image.imread(paths[0])
    assert img.shape[0] > 300 and img.shape[1] > 500   # readable at print size (200 dpi)


def test_auto_picks_the_figures_the_records_support(figure_dirs, tmp_path):
    from stitch.sweep.report import _requested

    runs = collect([figure_dirs["p2_fig2"]]).runs
    auto = _requested("auto", runs)
    assert {"p2_fig1", "p2_fig2"} <= set(auto) and "p1_fig4" not in auto and "p1_fig3" not in auto
    runs4 = collect([figure_dirs["p1_fig4"]]).runs
    assert "p1_fig4" in _requested("auto", runs4) and "p1_fig5" not in _requested("auto", runs4)


def test_sparsity_filled_from_saved_stitching_layer(figure_dirs):
    runs = collect([figure_dirs["p1_fig8"]]).runs
    assert runs.loc[runs["run"] == "f8-tlm-0", "fit.sparsity"].isna().all()
    filled = fill_sparsity(runs)
    v = filled.loc[filled["run"] == "f8-tlm-0", "fit.sparsity"].iloc[0]
    assert math.isfinite(v) and 0 <= v < 0.05     # unregularised: hardly any exact zeros


def test_missing_data_draws_an_explaining_placeholder(figure_dirs, tmp_path, kept_figures):
    from stitch.sweep.figures import PLACEHOLDER

    out = tmp_path / "o"
    assert run_sweep({"inputs": [str(figure_dirs["p1_fig6"])], "figures": ["p1_fig3"], "out": str(out),
                      "formats": ["png"]}) == 0
    assert (out / "fig-p1-3.png").is_file()  # no stale image of an earlier study is left behind
    fig = kept_figures["fig-p1-3"]
    assert fig.get_label() == PLACEHOLDER and not panels(fig)  # it draws nothing, and says why:
    assert "width multiplier" in fig.axes[0].texts[0].get_text()
    with pytest.raises(AssertionError, match="placeholder"):  # the check every figure test relies on
        assert_real_figure(fig)


# ------------------------------------------------------------------------------------------
# The smoke experiments themselves: every conf/experiment/*_smoke.yaml, run for real with
# further reduced data, epochs, layers and sweep values, then drawn. What `make fig-… SCALE=smoke`
# runs, minus the sizes (those need minutes per figure on 2 CPU cores).
# ------------------------------------------------------------------------------------------
CONF = Path(__file__).resolve().parents[1] / "conf"
SMOKE = sorted(p.stem[:-len("_smoke")] for p in (CONF / "experiment").glob("*_smoke.yaml"))
# per study: what to shrink further (layers, data) beyond the common reductions
SHRINK = {
    "p1_fig2": ["layer=[layer6,layer8]"],
    "p1_fig3": ["layer=[layer3.0]", "train_limit=64"],
    "p1_fig5": ["train_limit=64"],
    "p1_fig7": ["layer=[layer6]"],
    "p1_lmc": ["layer=[layer6]"],
    "p2_fig1": ["layer=[layer5,layer7]", "target_layer=[layer5,layer7]"],
    "p2_fig2": ["layer=[layer5,layer7]", "target_layer=[layer5,layer7]"],
    "p2_probing": ["layer=[layer5,layer7]", "target_layer=[layer5,layer7]"],
    # the same-size ResNet-18 costs minutes per epoch even on 16 images here: the pipeline runs on
    # Tiny-10 instead, and test_p2_fig3_smoke_network_is_same_size checks the configured network
    "p2_fig3": ["model@model1=tiny10", "model@model2=tiny10", "layer=[layer5,layer7]",
                "target_layer=[layer5,layer7]"],
    "p2_fig4": ["layer=[blocks.7,blocks.11]", "target_layer=[blocks.7,blocks.11]", "data.train_subset=32"],
}
COMMON = ["donor.epochs=1", "donor.allow_chance=true", "data.train_subset=128", "data.test_subset=64", "tlm.epochs=1",
          "similarity.indices=[cka]", "similarity.samples=32", "ood.enabled=false"]
MAX_VALUES = {"tlm.init": 3}  # every initialisation of Fig. 6; 2 values of any other swept key


def _jobs(study: str, store: Path, results: Path) -> list[list[str]]:
    """The multirun's jobs as override lists, each swept key cut to its first values."""
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    base = [f"+experiment={study}_smoke", f"store={store}", f"results_dir={results}", *COMMON,
            *SHRINK.get(study, [])]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("stitch", overrides=base, return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params or {})
    parser = OverridesParser.create()
    axes = []
    for key, spec in params.items():
        values = list(parser.parse_override(f"{key}={spec}").sweep_string_iterator())
        axes.append([f"{key}={v}" for v in values[:MAX_VALUES.get(key, 2)]])
    return [base + list(combo) for combo in itertools.product(*axes)] if axes else [base]


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke_store")


@pytest.mark.slow
@pytest.mark.parametrize("study", SMOKE)
def test_smoke_experiment_runs_and_draws(study, smoke_store, tmp_path, kept_figures):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from stitch.study import run_study

    results = tmp_path / study
    for overrides in _jobs(study, smoke_store, results):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("stitch", overrides=overrides)
        recs = run_study(OmegaConf.to_container(cfg, resolve=True))
        assert all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    if study == "p1_lmc":  # the study's LMC step (stitch.py step=lmc) writes the records the figure draws
        from stitch.study import run_lmc

        step = [*_jobs(study, smoke_store, results)[0], "step=lmc", "lmc.min_relative_acc=0", "lmc.lambdas=3"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("stitch", overrides=step)
        pairs = run_lmc(OmegaConf.to_container(cfg, resolve=True))
        assert pairs and all(r["status"] == "ok" for r in pairs), [r.get("error") for r in pairs]
    if study == "p2_probing":  # the probing step (stitch.py step=probing) writes the record the figure draws
        from stitch.study.probing import run_probing

        step = [*_jobs(study, smoke_store, results)[0], "step=probing", "probing.train_limit=200",
                "probing.levels=3", "probing.layers=[layer7]"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("stitch", overrides=step)
        rec = run_probing(OmegaConf.to_container(cfg, resolve=True))
        assert len(rec["specificity"]) >= 3 and rec["sensitivity"][0]["layer"] == "relu7"  # TLM, DM, CKA (+ more)
    c = collect([results])
    name = study
    if study != "p2_fig3":  # (runs on Tiny-10 here, see SHRINK)
        assert FIGURES[name].applies(c.runs), f"{name}: the smoke records do not have the figure's data"
        # the contract between the record writer and the figure: every column it declares is in real records
        assert FIGURES[name].missing_columns(c.runs) == [], f"{name}: records lack columns the figure reads"
    out = tmp_path / "fig"
    assert run_sweep({"inputs": [str(results)], "figures": [name], "out": str(out), "formats": ["png"],
                      "strict": study != "p2_fig3"}) == 0
    assert (out / f"{FIGURES[name].stem}.png").is_file()
    assert_real_figure(kept_figures[FIGURES[name].stem])


def test_p2_fig3_smoke_network_is_same_size():
    """The p2_fig3 smoke config stitches the "same size" ResNet-18: every block output is 32 x 32."""
    from hydra import compose, initialize_config_dir

    from stitch import models

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("stitch", overrides=["+experiment=p2_fig3_smoke"])
    assert cfg.model1.name == cfg.model2.name == "resnet18" and cfg.model1.options.variant == "same_size"
    net = models.build("resnet18", num_classes=10, **cfg.model1.options)
    shapes = net.layer_shapes((3, 32, 32))
    assert {shapes[L][1:] for L in [*cfg.layer, *cfg.target_layer]} == {(32, 32)}


def test_every_figure_declares_the_columns_it_reads_by_their_one_name():
    """Figures name record columns through stitch.sweep.columns only: a declared column is one of its constants
    (or built by its helpers), so a renamed record field is renamed in one place."""
    import pandas as pd

    from stitch.sweep import columns as C

    names = {v for k, v in vars(C).items() if k.isupper() and isinstance(v, str)}
    derived = {C.identity(C.CROSS_ENTROPY_PAPER1)}
    for name, fig in FIGURES.items():
        assert fig.reads, f"{name} declares no columns"
        assert C.RECORD_PATH in fig.reads and set(fig.reads) <= names | derived, name
    assert FIGURES["p1_fig3"].missing_columns(pd.DataFrame({C.LAYER: ["relu1"]}))[:2] == [C.RUN, C.STUDY]


def test_layer_order_follows_the_recorded_forward_positions():
    """Figures order layers by the positions records carry (no network is built); older records
    without them fall back to natural order."""
    import pandas as pd

    from stitch.sweep.figures import layer_order

    df = pd.DataFrame({"layer": ["relu1", "bn1", "conv1", "bn10", "bn2"], "layer_index": [2, 1, 0, 28, 4]})
    assert layer_order(df) == ["conv1", "bn1", "relu1", "bn2", "bn10"]
    assert layer_order(df.drop(columns="layer_index")) == ["bn1", "bn2", "bn10", "conv1", "relu1"]


def test_p1_fig2_draws_accuracy_and_cross_entropy_in_separate_panels_with_honest_titles(figure_dirs, tmp_path):
    """Relative accuracy and cross-entropy no longer share twin axes (one hid the other, the baseline flattened
    both): accuracy above, cross-entropy below on a log scale with the no-transformation baseline, every
    method in both, a legend naming them, and a title that claims bands only where runs were repeated."""
    drawn = {}
    c = collect([figure_dirs["p1_fig2"]])
    ctx = FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, "fig-p1-2", formats=("png",), keep=drawn)
    draw("p1_fig2", ctx)
    fig = drawn["fig-p1-2"]
    acc, ce = fig.axes[0], fig.axes[1]
    assert acc.get_ylabel().startswith("relative accuracy") and ce.get_yscale() == "log"
    acc_lines = [line.get_label() for line in acc.get_lines()]
    ce_lines = [line.get_label() for line in ce.get_lines()]
    assert len(acc_lines) == 2 and acc_lines == ce_lines[:2]  # TLM and least squares in both panels
    # equal values must not hide a method: DM is dashed over TLM's solid line, with other markers
    tlm_line, dm_line = acc.get_lines()[:2]
    assert (tlm_line.get_linestyle(), dm_line.get_linestyle()) == ("-", "--")
    assert tlm_line.get_marker() != dm_line.get_marker()
    mean_tlm = np.nanmean(acc.get_lines()[0].get_ydata())
    assert 0.9 < mean_tlm < 1.05  # the drawn values are the records' (TLM around 0.97)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(acc_lines) <= set(legend)
    assert "bands: ±1 std over runs" in fig._suptitle.get_text()  # 3 donor pairs per point
    # one run per point: the title says so instead of promising bands
    one = c.runs[c.runs["model1.seed"].astype(str) == "0"]
    drawn.clear()
    draw("p1_fig2", FigureContext(one, aggregate(one), c.history, tmp_path, "fig-p1-2", formats=("png",), keep=drawn))
    title = drawn["fig-p1-2"]._suptitle.get_text()
    assert "bands" not in title and "1 run per point" in title


def test_p2_fig1_energy_panels_show_every_source_and_the_sanity_set(figure_dirs, tmp_path):
    """Fig. 1(c) is drawn from the records' energy percentiles: real and SVHN above, one curve per source below;
    the AUROC panel hatches the column whose detector failed its sanity check."""
    drawn = {}
    c = collect([figure_dirs["p2_fig1"]])
    ctx = FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, "fig-p2-1", formats=("png",), keep=drawn)
    paths = draw("p2_fig1", ctx)
    assert {p.name for p in paths} == {"fig-p2-1.png", "fig-p2-1-energies.png", "fig-p2-1-claims.csv"}
    top, bottom = drawn["fig-p2-1-energies"].axes[:2]
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert any("in-distribution" in t for t in labels) and any("SVHN" in t and "0.970" in t for t in labels)
    curves = [line.get_label() for line in bottom.get_lines()]
    assert curves[:4] == ["layer1 (AUROC 0.70)", "layer3 (AUROC 0.80)", "layer5 (AUROC 0.90)", "layer7 (AUROC 1.00)"]
    # the layer-1 -> layer-1 stitch is centred on the in-distribution energies, layer 7's far above them
    x, dens = bottom.get_lines()[0].get_data()
    assert abs(x[dens.argmax()] + 10) < 1.0
    x, dens = bottom.get_lines()[3].get_data()
    assert abs(x[dens.argmax()] - (-10 + 9)) < 1.0
    matrix = drawn["fig-p2-1"]
    assert "Hatched" in matrix._suptitle.get_text() and "layer7" in matrix._suptitle.get_text()
    hatched = [p for ax in matrix.axes for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1  # one AUROC panel, one untrusted target column


def test_p2_fig2_lists_each_network_s_untrusted_detectors_apart(figure_dirs, tmp_path):
    """Intra and inter rows use different model-2 networks, hence different detectors: the title names the
    untrusted target layers per model pair, in forward order, and each pair's AUROC panels hatch only its own."""
    drawn = {}
    c = collect([figure_dirs["p2_fig2"]])
    draw("p2_fig2", FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, "fig-p2-2", formats=("png",),
                                  keep=drawn))
    fig = drawn["fig-p2-2"]
    title = " ".join(fig._suptitle.get_text().split())
    assert "(intra-network (self-stitching): layer7; inter-network (two seeds): layer5, layer7)" in title, title
    hatched = sorted((ax.get_title().split("· ")[-1], sum(1 for p in ax.patches if p.get_hatch()))
                     for ax in fig.axes if "AUROC" in ax.get_title())
    assert hatched == [("inter-network (two seeds)", 2)] * 2 + [("intra-network (self-stitching)", 1)] * 2, hatched


def test_p2_fig2_draws_no_empty_row_for_a_method_a_pair_did_not_run(figure_dirs, tmp_path):
    """A CPU study may run one pair with DM alone (ResNet-20, where 3-epoch TLM does not converge): that pair
    gets its DM rows and no blank TLM row."""
    keep = [r for r in (json.loads(p.read_text()) for p in sorted((figure_dirs["p2_fig2"] / "records").glob("*.json")))
            if r["self_stitch"] or r["method"] == "dm"]
    c = collect([dump(tmp_path / "recs", keep)])
    drawn = {}
    draw("p2_fig2", FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, "fig-p2-2", formats=("png",),
                                  keep=drawn))
    panels = [ax.get_title().replace("\n", " ") for ax in drawn["fig-p2-2"].axes if ax.get_images()]
    blank = [ax for ax in drawn["fig-p2-2"].axes if not ax.axison]
    assert len(panels) == 6 and not blank, (panels, len(blank))
    inter = [t for t in panels if "inter-network" in t]
    assert len(inter) == 2 and all(t.startswith("DM") for t in inter), inter


def test_dm_panels_name_the_image_count_their_records_were_fitted_on(figure_dirs, tmp_path):
    """The label states a DM fit's images from the record (method_config.samples), not from the recipe's name:
    ``dm=paper2 dm.samples=250`` is not drawn as '100 images', and the full-data solve says nothing of a count."""
    from stitch.sweep.labels import method_label

    assert method_label("dm", "paper2") == "DM (least squares, 100 images)"  # no count recorded: the recipe's
    known = {"samples_recorded": True}
    assert method_label("dm", "paper2", 250, **known) == "DM (least squares, 250 images)"
    assert method_label("dm", "paper2", None, **known) == "DM (least squares)"  # dm.samples=null: the whole split
    assert method_label("dm", "least_squares", float("nan"), **known) == "DM (least squares)"
    assert method_label("dm", "least_squares", 1000.0, **known) == "DM (least squares, 1000 images)"
    assert method_label("dm", "lasso", 100, **known) == "DM (lasso, 100 images)"
    assert method_label("tlm", "paper2", 100, **known) == "TLM (paper 2 recipe)"
    recs = [json.loads(p.read_text()) for p in sorted((figure_dirs["p2_fig2"] / "records").glob("*.json"))]
    intra_dm = []
    for r in recs:
        if r["method"] == "dm":
            r["config"]["method_config"]["samples"] = 250
            if r["self_stitch"]:  # the same recipe at a second count: its own matrices, not one averaged panel
                other = json.loads(json.dumps(r))
                other["run"] += "-500"
                other["config"]["method_config"]["samples"] = 500
                intra_dm.append(other)
    c = collect([dump(tmp_path / "recs", recs + intra_dm)])
    drawn = {}
    draw("p2_fig2", FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, "fig-p2-2", formats=("png",),
                                  keep=drawn))
    titles = [ax.get_title().replace("\n", " ") for ax in drawn["fig-p2-2"].axes if ax.get_images()]
    dm = sorted({t.split(" relative")[0].split(" OOD")[0] for t in titles if t.startswith("DM")})
    assert dm == ["DM (least squares, 250 images)", "DM (least squares, 500 images)"], titles
    assert sum(t.startswith("DM (least squares, 500 images)") for t in titles) == 2  # intra only: accuracy, AUROC


def test_p2_probing_draws_each_index_s_specificity_and_sensitivity(figure_dirs, tmp_path):
    drawn = {}
    c = collect([figure_dirs["p2_probing"]])
    draw("p2_probing", FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path, "fig-p2-probing",
                                     formats=("png",), keep=drawn))
    (ax,) = drawn["fig-p2-probing"].axes
    from matplotlib.container import BarContainer

    spec, sens = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [round(b.get_height(), 3) for b in spec] == [0.6, 0.1, 0.5, 0.4, 0.45]
    assert [round(b.get_height(), 3) for b in sens] == [0.95, 0.2, 0.8, 0.7, 0.9]  # dm, tlm, CKA, PWCCA, OPD
    labels = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert labels == ["DM relative accuracy", "TLM relative accuracy", "CKA", "PWCCA", "OPD"]
    subtitle = " ".join(drawn["fig-p2-probing"]._suptitle.get_text().split("\n", 1)[1].split())
    assert subtitle == ("digits (sklearn) · probes on 2,000 training images · TLM 3 epochs · 4 PC-deletion levels · "
                        "5 measures · from 32 stitching records · study p2_probing_smoke"), subtitle


def test_matrix_figure_draws_the_matrices_of_metric_matrix_in_forward_order(tmp_path):
    """The heatmaps are the pivot every table uses (stitch.matrices.pivot), cell for cell, with layers in the
    networks' forward order (conv1, bn1, relu1), which natural order would get wrong (bn1 first)."""
    from stitch.matrices import metric_matrix

    layers = ["conv1", "bn1", "relu1"]
    records = []
    for i, L in enumerate(layers):
        for j, M in enumerate(layers):
            for method in ("tlm", "dm"):
                r = rec(f"m-{L}-{M}-{method}", L, method, "paper2", m2=0, target=M,
                        metrics={"relative_acc": round(0.1 * (3 * i + j) + (0.05 if method == "dm" else 0), 3)})
                r.update(layer_index=i, target_layer_index=j)
                records.append(r)
    c = collect([dump(tmp_path / "recs", records)])
    ctx = FigureContext(c.runs, aggregate(c.runs), c.history, tmp_path / "out", formats=("png",), keep={})
    draw("p2_fig2", ctx)
    fig = ctx.keep["fig-p2-2"]
    for ax, method in zip([ax for ax in fig.axes if ax.get_images()], ("tlm", "dm")):
        expected = metric_matrix(records, "relative_acc", method=method)
        assert list(expected.index) == layers and list(expected.columns) == layers
        assert [t.get_text() for t in ax.get_yticklabels()] == layers
        assert [t.get_text() for t in ax.get_xticklabels()] == layers
        np.testing.assert_allclose(ax.get_images()[0].get_array(), expected.to_numpy())
