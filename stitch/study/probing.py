"""The probing step (``stitch.py step=probing``): Ding et al.'s statistical tests of the study's similarity
indices, as paper 2 uses them to compare TLM, DM and structural indices.

Run after a layer x layer study (its finished records are the indices' values):

* **specificity** -- over every layer pair of the study's matrix, the rank correlation between each
  index's dissimilarity (TLM and DM relative accuracy, one matrix per DM variant; CKA, PWCCA, OPD of
  the raw activations) and the difference in linear-probe accuracy of the two layers;
* **sensitivity** -- at each of ``probing.layers`` of model 1 (default: the study's source layers),
  delete principal components of the activation (lowest variance first, ``probing.order``) at
  ``probing.levels`` levels, and rank-correlate each index's dissimilarity to the original with the
  drop in probe accuracy. DM: least squares from the modified to the original activation, scored
  through model 2's task map from that layer (self-stitching) or from the same-named layer; TLM: a
  stitching layer trained for ``probing.tlm_epochs`` epochs (paper 2's recipe: hard labels, Adam,
  random init) on the same images.

Positive correlations mean the index behaves as it should. One record per model pair,
``<results_dir>/probing/<model 1>--<model 2>.json`` (written atomically); ``sweep.py`` draws it
(``figures=[p2_probing]``) without running a network. Probes, DM and TLM use the first
``probing.train_limit`` training images (a fixed mixed sample) and the test split.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from .. import probing as tests
from ..errors import ConfigError
from ..fileio import check_writable_dir, write_json
from ..matrices import similarity_matrices
from ..results import load_records
from ..settings import StudySettings, study_settings
from ..stitching import build_stitching_layer
from ..provenance import now, provenance
from .assembly import Study

log = logging.getLogger(__name__)

INDICES = ("cka", "pwcca", "opd")


def probing_path(results_dir: str | Path, study: Study) -> Path:
    return Path(results_dir) / "probing" / f"{study.model1.key.tag}.{study.model1.key.seed}--" \
                                           f"{study.model2.key.tag}.{study.model2.key.seed}.json"


def _method_records(records: list[dict]) -> dict[str, list[dict]]:
    """The study's records by method variant: ``tlm``, ``dm`` or, with several variants, ``dm:<variant>``."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault((r["method"], r.get("variant")), []).append(r)
    variants: dict[str, int] = {}
    for method, _ in by:
        variants[method] = variants.get(method, 0) + 1
    return {(f"{m}:{v}" if variants[m] > 1 else m): rs for (m, v), rs in by.items()}


def _specificity(records: list[dict], probe1: dict, probe2: dict) -> list[dict]:
    rows = []
    for name, rs in sorted(_method_records(records).items()):
        mats = similarity_matrices(rs, ["relative_acc"])
        for m in mats.values():
            r = tests.specificity_test(m, probe1, probe2, higher_is_similar=True)
            rows.append({"index": f"{name} relative accuracy", **{k: r[k] for k in ("n", "spearman", "kendall")}})
    mats = similarity_matrices(records, list(INDICES))
    for name, m in mats.items():
        r = tests.specificity_test(m, probe1, probe2, higher_is_similar=name != "opd")
        rows.append({"index": name.upper(), **{k: r[k] for k in ("n", "spearman", "kendall")}})
    return rows


def _tlm_accuracy(study: Study, layer: str, target: str, epochs: int, lr: float, seed: int):
    """A TLM scorer for the sensitivity test: train a fresh stitching layer on the modified training activations."""
    m2 = study.model2.net

    def fn(train: torch.Tensor, test: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor) -> float:
        torch.manual_seed(seed)
        stitch = build_stitching_layer(tuple(train.shape[1:]), tuple(m2.layer_shapes(study.data.input_shape)[target]))
        opt = torch.optim.Adam(stitch.parameters(), lr=lr, weight_decay=1e-5)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(train), generator=g).split(256):
                loss = torch.nn.functional.cross_entropy(m2.forward_from(stitch(train[idx]), target), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = torch.cat([m2.forward_from(stitch(t), target).argmax(1) for t in test.split(512)])
        return float((pred == y_test).float().mean())

    return fn


def _sensitivity(study: Study, s: StudySettings, layer: str, target: str) -> dict:
    p = s.probing
    m1, m2, datamodule = study.model1.net, study.model2.net, study.data
    dev = study.device
    with torch.no_grad():
        tr, ytr = tests.collect_activations(m1, datamodule, [layer], "train", p.train_limit, dev, pooled=False)
        te, yte = tests.collect_activations(m1, datamodule, [layer], "test", p.test_limit, dev, pooled=False)
        b_tr = tests.collect_activations(m2, datamodule, [target], "train", p.train_limit, dev, pooled=False)[0][target]
    a_tr, a_te = tr[layer], te[layer]
    c = a_tr.shape[1]
    ks = sorted({int(round(k)) for k in np.linspace(0, c - 1, p.levels)})
    head = lambda h: m2.forward_from(h, target)  # noqa: E731
    sims = {name: tests.index_similarity(name, samples=2000, mode=s.similarity.mode) for name in INDICES}
    tlm = _tlm_accuracy(study, layer, target, p.tlm_epochs, p.tlm_lr, s.seed)
    extra = {"dm": lambda mtr, mte: tests.direct_matching_accuracy(mtr, b_tr, mte, yte, head)}
    if p.tlm_epochs:
        extra["tlm"] = lambda mtr, mte: tlm(mtr, mte, ytr, yte)
    res = tests.sensitivity_test(a_tr, a_te, ytr, yte, ks, sims, order=p.order, extra=extra)
    return {"layer": layer, "target_layer": target, "channels": c, "ks": ks, "order": p.order,
            "base_probe_acc": res["base_probe_acc"], "curve": res["curve"].to_dict(orient="list"),
            "correlations": res["correlations"]}


def run_probing(cfg: dict | StudySettings) -> dict:
    """Probe accuracies, specificity over the study's finished layer x layer records and sensitivity at
    ``probing.layers``; writes and returns the record."""
    t0 = time.time()
    s = study_settings(cfg)
    check_writable_dir(s.results_dir, "results_dir")
    study = Study.assemble(s)
    keys = (str(study.model1.key), str(study.model2.key))
    records = [r for r in load_records(Path(s.results_dir) / "records")
               if ((r.get("model1") or {}).get("key"), (r.get("model2") or {}).get("key")) == keys]
    if not any(r["layer"] != r["target_layer"] for r in records):
        raise ConfigError(f"step=probing needs the study's finished layer x layer runs in {s.results_dir}/records "
                          f"for {keys[0]} -> {keys[1]}: run the study first (target_layer=all, same overrides)")
    sources = list(dict.fromkeys(r["layer"] for r in records))
    targets = list(dict.fromkeys(r["target_layer"] for r in records))
    p = s.probing
    with torch.no_grad():
        probed = list(dict.fromkeys(sources + targets)) if study.self_stitch else sources  # one network: probe once
        probe1 = tests.probe_layers(study.model1.net, study.data, probed, train_limit=p.train_limit,
                                    test_limit=p.test_limit, device=study.device)
        probe2 = probe1 if study.self_stitch else tests.probe_layers(
            study.model2.net, study.data, targets, train_limit=p.train_limit, test_limit=p.test_limit,
            device=study.device)
    log.info("probe accuracy, model 1: %s", {k: round(v, 3) for k, v in probe1.items()})
    specificity = _specificity(records, probe1, probe2)
    layers = list(p.layers) if p.layers else [L for L in sources if L in targets]
    sensitivity = []
    for L in layers:
        t = time.time()
        sensitivity.append(_sensitivity(study, s, study.model1.net.check_layer(L), study.model2.net.check_layer(L)))
        log.info("sensitivity at %s: %s (%.0f s)", L, {k: v["spearman"] for k, v in
                                                       sensitivity[-1]["correlations"].items()}, time.time() - t)
    rec = {"study": s.study, "model1": study.model1.summary(), "model2": study.model2.summary(),
           "self_stitch": study.self_stitch, "data": s.data.name, "records": len(records),
           "probe_acc_model1": probe1, "probe_acc_model2": probe2, "specificity": specificity,
           "sensitivity": sensitivity, "settings": s.probing.as_dict(), **provenance(study.device),
           "seconds": time.time() - t0, "finished": now()}
    write_json(probing_path(s.results_dir, study), rec)
    return rec


def format_probing_table(rec: dict) -> str:
    lines = [f"{'index':<34} {'specificity rho':>16} {'sensitivity rho (mean over layers)':>36}"]
    sens: dict[str, list[float]] = {}
    for layer in rec["sensitivity"]:
        for name, c in layer["correlations"].items():
            if c.get("spearman") is not None:
                sens.setdefault(name, []).append(c["spearman"])
    names = {"cka": "CKA", "pwcca": "PWCCA", "opd": "OPD", "dm": "dm relative accuracy",
             "tlm": "tlm relative accuracy"}
    for row in rec["specificity"]:
        base = row["index"].split(":")[0].split(" ")[0]  # "dm:paper2 relative accuracy" -> "dm", "CKA" -> "CKA"
        key = next((k for k, v in names.items() if v.split(" ")[0] == base), None)
        s = sens.get(key) if key else None
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"{row['index']:<34} {fmt(row['spearman']):>16} "
                     f"{fmt(float(np.mean(s)) if s else None):>36}")
    return "\n".join(lines)
