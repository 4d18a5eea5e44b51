"""Linear mode connectivity of stitching layers (paper 1 Sec. 8, Experiment 6).

For two saved stitching layers (W0, b0) and (W1, b1) of the same layer pair and the
same donors, evaluate the stitched network with W(λ) = (1-λ) W0 + λ W1 (and the same
for the bias) for λ on a grid. Pairs:

* ``seeds``: two runs of one method that differ only in the stitching seed
  (e.g. TLM from two random initialisations, the paper's setting);
* ``methods``: a TLM run and a DM run of the same layer pair.

The paper keeps only layers whose both ends reach 80 % relative accuracy
(``min_relative_acc``). The saved layers come from ``save_stitch=true``
(``<results_dir>/stitches/<run>.pt``, loaded with ``weights_only=True``). The
interpolated matrix is evaluated on a full-rank layer, so low-rank ends are
interpolated exactly too. Results are cached in ``<out>/lmc.csv``.
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)


def _pairs(g: pd.DataFrame, kinds: list[str], max_pairs: int) -> list[tuple[str, str, str, str]]:
    """(type, label, run0, run1) of one layer pair's runs."""
    out = []
    if "seeds" in kinds:
        # DM is deterministic: its "seeds" are copies of one solution, nothing to connect
        for cond, gc in g[g["kind"] != "dm"].groupby("condition"):
            gc = gc.sort_values("seed")
            label = f"{_label(gc.iloc[0])}: seed vs seed"
            for a, b in list(itertools.combinations(gc.itertuples(), 2))[:max_pairs]:
                if a.seed != b.seed:
                    out.append(("seeds", label, a.run, b.run))
    if "methods" in kinds:
        tlm = g[g["kind"] == "tlm"].sort_values("seed")
        dm = g[g["kind"] == "dm"].sort_values("seed").drop_duplicates("condition")  # its seeds are copies
        # one DM end per TLM run: DM is deterministic, so its seeds are copies
        for (ta, da) in list(itertools.product(tlm.itertuples(), dm.itertuples()))[:max_pairs]:
            out.append(("methods", f"{_label(tlm[tlm['run'] == ta.run].iloc[0])} vs "
                                   f"{_label(dm[dm['run'] == da.run].iloc[0])}", ta.run, da.run))
    return out


def _label(row) -> str:
    from .figures import method_label

    return method_label(row["method"], row.get("variant"))


def _affine(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from .figures import stitch_matrix

    return stitch_matrix(state).double(), state["bias"].double()


def lmc_table(runs: pd.DataFrame, out: Path | None = None, store: str | None = None, device: str = "auto",
              lambdas: int = 11, pairs=("seeds", "methods"), min_relative_acc: float = 0.8, max_pairs: int = 4,
              batch_size: int = 256, reuse: bool = True) -> pd.DataFrame:
    """Relative accuracy along W(λ) for pairs of saved stitching layers; one row per (pair, λ)."""
    ok = runs[(runs["status"] == "ok") & runs.get("stitch_path", pd.Series(index=runs.index)).notna()].copy()
    ok = ok[ok["stitch_path"].map(lambda p: Path(p).is_file())]
    if min_relative_acc:
        ok = ok[ok["relative_acc"] >= float(min_relative_acc)]
    grid = np.linspace(0.0, 1.0, int(lambdas))
    keys = ["model1.key", "model2.key", "layer", "target_layer", "config.data.name"]
    jobs = []
    for _, g in ok.groupby([k for k in keys if k in ok], dropna=False):
        for ptype, label, r0, r1 in _pairs(g, list(pairs), int(max_pairs)):
            jobs.append((ptype, label, g[g["run"] == r0].iloc[0], g[g["run"] == r1].iloc[0]))
    if not jobs:
        return pd.DataFrame()
    cache = Path(out) / "lmc.csv" if out is not None else None
    wanted = {(a["run"], b["run"]) for _, _, a, b in jobs}
    if reuse and cache is not None and cache.is_file():
        old = pd.read_csv(cache)
        have = set(zip(old["run0"], old["run1"]))
        if wanted <= have and set(np.round(grid, 6)) <= set(np.round(old["lambda"], 6)):
            log.info("lmc: reusing %s", cache)
            return old[[(a, b) in wanted for a, b in zip(old["run0"], old["run1"])]].reset_index(drop=True)
    rows = []
    for key, group in itertools.groupby(sorted(jobs, key=lambda j: j[2]["record_path"]),
                                        key=lambda j: _setup_key(j[2])):
        group = list(group)
        rows += _evaluate_group(group, grid, store, device, batch_size)
    table = pd.DataFrame(rows)
    if cache is not None and len(table):
        cache.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(cache, index=False)
    return table


def _setup_key(row) -> tuple:
    return (row["model1.key"], row["model2.key"], row["layer"], row["target_layer"])


def _evaluate_group(jobs, grid, store_root, device_name, batch_size) -> list[dict]:
    """Load the donors and data once for one layer pair, then walk every pair's λ grid."""
    from .. import store
    from ..data import from_config as datamodule_from_cfg
    from ..evaluation import evaluate
    from ..experiment import PairContext, resolve_device
    from ..features import ActivationCache, FeatureSource

    first = jobs[0][2]
    with open(first["record_path"]) as f:
        rec = json.load(f)
    cfg = rec.get("config") or {}
    device = resolve_device(device_name or "auto")
    dm = datamodule_from_cfg(cfg["data"], augment=False)
    dm.setup()
    nets = {}
    for which in ("model1", "model2"):
        m = rec[which]
        key = store.DonorKey.make(rec["data"], m["name"], m["seed"], m.get("options"))
        if key in nets:
            continue
        net, meta = store.load(key, store_root, device)
        if m.get("sha256") and meta.get("sha256") != m["sha256"]:
            log.warning("lmc: donor %s in %s is not the one run %s used (sha256 differs); skipping its pairs",
                        key, store.store_root(store_root), rec["run"])
            return []
        nets[key] = net
    k1 = store.DonorKey.make(rec["data"], rec["model1"]["name"], rec["model1"]["seed"], rec["model1"].get("options"))
    k2 = store.DonorKey.make(rec["data"], rec["model2"]["name"], rec["model2"]["seed"], rec["model2"].get("options"))
    m1, m2 = nets[k1], nets[k2]
    L, M = rec["layer"], rec["target_layer"]
    source = FeatureSource(m1, m2, L, M, dm, device, "32", ActivationCache(2 * 2**30), torch.float32,
                           batch_size=batch_size, limits={"test": cfg.get("test_limit")})
    net = PairContext(m1, m2, L, M, source, dm.input_shape).new_network()  # full rank: exact for any W(λ)
    rows = []
    for ptype, label, a, b in jobs:
        W0, b0 = _affine(torch.load(a["stitch_path"], map_location="cpu", weights_only=True))
        W1, b1 = _affine(torch.load(b["stitch_path"], map_location="cpu", weights_only=True))
        for lam in grid:
            net.stitch.set_affine(((1 - lam) * W0 + lam * W1).float(), ((1 - lam) * b0 + lam * b1).float())
            met = evaluate(net, source, dm.multilabel, "test")
            rows.append({"pair_type": ptype, "pair_label": label, "pair": f"{a['run']}|{b['run']}",
                         "run0": a["run"], "run1": b["run"], "method0": a["method"], "method1": b["method"],
                         "layer": L, "target_layer": M, "model1.tag": a.get("model1.tag"),
                         "model1.name": a.get("model1.name"), "lambda": float(lam),
                         "relative_acc": met["relative_acc"], "stitched_acc": met["stitched_acc"],
                         "cross_entropy": met["cross_entropy"]})
        log.info("lmc %s %s: relative accuracy %s", L, label,
                 " ".join(f"{r['relative_acc']:.2f}" for r in rows[-len(grid):]))
    return rows
