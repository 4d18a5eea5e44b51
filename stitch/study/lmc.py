"""The LMC step: linear mode connectivity of saved stitching layers (paper 1 Sec. 8, Experiment 6).

``python stitch.py +experiment=p1_lmc_smoke step=lmc`` runs :func:`run_lmc` after the study
itself (``save_stitch=true``) has finished. For two saved stitching layers (W0, b0) and (W1, b1)
of the same layer pair and the same donors it evaluates the stitched network with
W(λ) = (1-λ) W0 + λ W1 (and the same for the bias) for ``lmc.lambdas`` points on [0, 1], on
the test split, exactly as the runs themselves were evaluated (same assembly, same images), so
λ = 0 and λ = 1 reproduce the two end runs' relative accuracy. Pairs (``lmc.pairs``):

* ``seeds``: two runs of one method configuration that differ only in the stitching seed
  (e.g. TLM from two random initialisations, the paper's setting; DM is deterministic, so its
  seeds are copies of one solution and never paired);
* ``methods``: a TLM run and a DM run of the same layer pair.

At most ``lmc.max_pairs`` per method configuration (seeds) or per layer pair (methods); both ends
must reach ``lmc.min_relative_acc`` (paper 1: 0.8). Only this study's finished runs are used:
``<results_dir>/records/*.json`` with ``status: ok``, a saved stitching layer
(``<results_dir>/stitches/<run>.pt``, :func:`stitch.results.load_stitch`), this study's donors
(store key, and the sha256 the run recorded: another file under that key is refused) and this
step's test evaluation (:func:`evaluation_setup`: the data settings other than the training-only
ones, ``test_limit``, the resolved precision). Runs evaluated otherwise are skipped with a warning,
and when that leaves no pair the step fails saying so (``ConfigError``). The interpolated matrix is
set on a full-rank layer, so low-rank ends are interpolated exactly too.

One record per pair of runs, ``<results_dir>/lmc/<id>.json``, written atomically: the λ grid,
``relative_acc``, ``stitched_acc`` and ``cross_entropy`` along it, and the sha256 of the two saved
stitching layers (``stitch_sha256``). A finished record is skipped unless ``force=true`` or a saved
layer changed since (the study re-run); a pair that fails is recorded with ``status: failed`` and the
step goes on. ``sweep.py`` only reads these records (``stitch/sweep/lmc.py``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation import evaluate
from ..features import resolve_precision
from ..fileio import check_writable_dir, sha256, write_json
from ..hardware import resolve_device
from ..matching.fitting import PairContext
from ..results import load_records, load_stitch
from ..settings import ABSENT, DataSpec, StudySettings, study_settings
from ..stitching import StitchedNetwork
from .. import store
from .assembly import Study
from ..provenance import failure_recorded, provenance
from .records import finished, stitch_path

log = logging.getLogger(__name__)

# data settings that only change training (a run's stitching layer), never its test evaluation
_TRAINING_ONLY = frozenset({"train_subset", "augment", "batch_size", "tlm_lr", "train_size"})


def lmc_path(results_dir: str | Path, lmc_id: str) -> Path:
    return Path(results_dir) / "lmc" / f"{lmc_id}.json"


def lmc_id(pair_type: str, a: dict, b: dict, lambdas: list[float]) -> str:
    """A readable name of the pair plus a hash of (run0, run1, λ grid)."""
    h = hashlib.sha256(json.dumps([a["run"], b["run"], [round(x, 6) for x in lambdas]]).encode()).hexdigest()[:10]
    slug = (f"{a['layer']}--{a['target_layer']}--{pair_type}--{a['method']}.seed{a.get('seed')}"
            f"--{b['method']}.seed{b.get('seed')}-{h}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", slug)


def lmc_grid(n: int) -> list[float]:
    return [float(x) for x in np.linspace(0.0, 1.0, int(n))]


def _condition(rec: dict) -> str:
    """Runs of one method configuration that differ only in the stitching seed share it (the donors
    and the layer pair are fixed within a group)."""
    cfg = {k: v for k, v in (rec.get("config") or {}).items() if k != "seed"}
    return json.dumps([rec.get("method"), rec.get("variant"), cfg], sort_keys=True, default=str)


def _by_seed(recs: list[dict]) -> list[dict]:
    return sorted(recs, key=lambda r: (str(type(r.get("seed"))), r.get("seed"), r["run"]))


def pairs_of(group: list[dict], kinds, max_pairs: int) -> list[tuple[str, dict, dict]]:
    """(pair type, run 0, run 1) of one layer pair's runs."""
    out = []
    if "seeds" in kinds:
        conditions: dict[str, list[dict]] = {}
        for r in group:
            if r.get("kind") != "dm":  # DM is deterministic: its "seeds" are copies of one solution
                conditions.setdefault(_condition(r), []).append(r)
        for recs in conditions.values():
            for a, b in list(itertools.combinations(_by_seed(recs), 2))[:max_pairs]:
                if a.get("seed") != b.get("seed"):
                    out.append(("seeds", a, b))
    if "methods" in kinds:
        tlm = _by_seed([r for r in group if r.get("kind") == "tlm"])
        dm, seen = [], set()
        for r in _by_seed([r for r in group if r.get("kind") == "dm"]):  # one DM end per configuration
            if _condition(r) not in seen:
                seen.add(_condition(r))
                dm.append(r)
        for a, b in list(itertools.product(tlm, dm))[:max_pairs]:
            out.append(("methods", a, b))
    return out


def _relative_acc(rec: dict) -> float | None:
    v = (rec.get("metrics") or {}).get("relative_acc")
    return float(v) if isinstance(v, (int, float)) else None


def _test_setup(data: dict | None, test_limit, precision) -> dict:
    """Flat ``{"data.<key>": ..., "test_limit": ..., "precision": ...}``; data keys the config does not
    set take their default."""
    data = data or {}
    out = {f"data.{f.name}": data.get(f.name, None if f.default is ABSENT else f.default)
           for f in dataclasses.fields(DataSpec) if f.metadata.get("results") and f.name not in _TRAINING_ONLY}
    return {**out, "test_limit": test_limit, "precision": None if precision is None else str(precision)}


def evaluation_setup(s: StudySettings) -> dict:
    """What this step's test evaluation depends on besides the stitching layer and the donors: the data
    settings other than the training-only ones, ``test_limit`` and the resolved precision. An end run
    evaluated otherwise would not be reproduced at λ = 0 or 1."""
    precision = resolve_precision(str(s.precision), resolve_device(s.device))
    return _test_setup(s.identity().get("data"), s.test_limit, precision)


def run_setup(rec: dict) -> dict:
    """The same for a run, from its record (``config`` and the resolved ``precision`` it ran with)."""
    cfg = rec.get("config") or {}
    return _test_setup(cfg.get("data"), cfg.get("test_limit"), rec.get("precision"))


def eligible_runs(s: StudySettings) -> tuple[list[dict], dict[str, list[str]]]:
    """This study's finished runs that can be an end of a pair (see the module docstring), and the runs
    skipped because they were evaluated otherwise than this step: {differences: [run, ...]}."""
    keys = {"model1": str(store.DonorKey.of(s.model1, s.data.name)), "model2": str(store.DonorKey.of(s.model2, s.data.name))}
    want = evaluation_setup(s)
    out, mismatched = [], {}
    for rec in load_records(Path(s.results_dir) / "records", status="ok"):
        if not rec.get("stitch_file") or not stitch_path(s.results_dir, rec.get("run", "")).is_file():
            continue
        if any((rec.get(w) or {}).get("key") != k for w, k in keys.items()):
            continue  # another donor pair's runs in the same results directory
        have = run_setup(rec)
        differ = [f"{k}: {have[k]!r} (run) vs {want[k]!r} (this step)" for k in want if have[k] != want[k]]
        if differ:
            mismatched.setdefault("; ".join(differ), []).append(rec["run"])
            continue
        acc = _relative_acc(rec)
        if acc is None or acc < float(s.lmc.min_relative_acc):
            continue
        out.append(rec)
    for why, runs in mismatched.items():
        log.warning("lmc: skipping %d run(s) evaluated otherwise than this step (%s), e.g. %s; pass the "
                    "study's overrides to step=lmc", len(runs), why, runs[0])
    return out, mismatched


def plan(s: StudySettings) -> tuple[list[tuple[str, dict, dict]], dict[str, list[str]]]:
    """Every (pair type, run 0, run 1) of the study, grouped by layer pair, and the runs skipped for
    another evaluation setup (as :func:`eligible_runs`)."""
    runs, mismatched = eligible_runs(s)
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in runs:
        groups.setdefault((rec["layer"], rec["target_layer"]), []).append(rec)
    jobs = []
    for _, group in sorted(groups.items()):
        jobs += pairs_of(group, list(s.lmc.pairs), int(s.lmc.max_pairs))
    return jobs, mismatched


def run_lmc(cfg: dict | StudySettings) -> list[dict]:
    """The LMC step of a study (``stitch.py step=lmc``); one record per pair of runs, [] when no pairs.
    ``ConfigError`` when there are none because runs were evaluated otherwise than this step."""
    s = study_settings(cfg)
    check_writable_dir(s.results_dir, "results_dir")
    grid = lmc_grid(s.lmc.lambdas)
    jobs, mismatched = plan(s)
    if not jobs:
        if mismatched:
            n = sum(len(r) for r in mismatched.values())
            raise ConfigError(
                f"no eligible pairs of saved stitching layers in {s.results_dir}: {n} finished run(s) with saved "
                f"stitching layers were skipped because this step would evaluate them otherwise than they were "
                f"({' | '.join(mismatched)}). Run step=lmc with the study's overrides (store=, data, test_limit, "
                f"precision, device)")
        return []
    records: dict[str, dict] = {}
    todo: list[tuple[str, str, dict, dict, list[str]]] = []
    hashes: dict[str, str] = {}  # run -> sha256 of its saved stitching layer
    for ptype, a, b in jobs:
        name = lmc_id(ptype, a, b, grid)
        for r in (a, b):
            if r["run"] not in hashes:
                hashes[r["run"]] = sha256(stitch_path(s.results_dir, r["run"]))
        shas = [hashes[a["run"]], hashes[b["run"]]]
        done = None if s.force else finished(lmc_path(s.results_dir, name))
        if done is not None and done.get("stitch_sha256") != shas:
            log.info("lmc %s: a saved stitching layer changed since its record (the study was re-run); redoing it",
                     name)
            done = None
        if done is not None:
            log.info("skip lmc %s (finished; force=true reruns)", name)
            records[name] = done
        else:
            todo.append((name, ptype, a, b, shas))
    if todo:
        # the donors must be the files the runs used: never train a missing one here
        quiet = dataclasses.replace(s, donor=dataclasses.replace(s.donor, train_missing=False))
        layer_pairs = list(dict.fromkeys((a["layer"], a["target_layer"]) for _, _, a, _, _ in todo))
        study = Study.assemble(quiet, pairs=layer_pairs)
        for L, M in layer_pairs:
            here = [t for t in todo if (t[2]["layer"], t[2]["target_layer"]) == (L, M) and _same_donors(study, *t[2:4])]
            if not here:
                continue
            ctx = study.pair(L, M)
            net = ctx.new_network()  # one full-rank stitched network per layer pair: exact for any W(λ)
            for name, ptype, a, b, shas in here:
                records[name] = _pair(study, s, ctx, net, name, ptype, a, b, grid, shas)
            if study.cache is not None and len(layer_pairs) > 1:
                study.cache.clear()  # this layer pair's activations are not needed again
    return [records[n] for n in (lmc_id(t, a, b, grid) for t, a, b in jobs) if n in records]


def _same_donors(study: Study, *recs: dict) -> bool:
    """The store's donors are the files the runs were fitted on (same sha256)."""
    for rec in recs:
        for which, donor in (("model1", study.model1), ("model2", study.model2)):
            want, have = (rec.get(which) or {}).get("sha256"), donor.meta.get("sha256")
            if want and have != want:
                log.warning("lmc: donor %s in the store is not the one run %s used (sha256 %s, recorded %s); "
                            "skipping its pairs", donor.key, rec["run"], have, want)
                return False
    return True


def _pair(study: Study, s: StudySettings, ctx: PairContext, net: StitchedNetwork, name: str, ptype: str, a: dict,
          b: dict, grid: list[float], shas: list[str]) -> dict:
    """Evaluate one pair along the λ grid and write its record."""
    L, M = a["layer"], a["target_layer"]
    def donor(rec: dict, which: str) -> dict:
        return {k: (rec.get(which) or {}).get(k) for k in ("key", "name", "seed", "options", "sha256")}

    rec = {"lmc": name, "study": s.study, "pair_type": ptype, "run0": a["run"], "run1": b["run"],
           "method0": a.get("method"), "method1": b.get("method"), "kind0": a.get("kind"), "kind1": b.get("kind"),
           "variant0": a.get("variant"), "variant1": b.get("variant"), "seed0": a.get("seed"), "seed1": b.get("seed"),
           "layer": L, "target_layer": M, "layer_index": a.get("layer_index"), "data": s.data.name,
           "model1": donor(a, "model1"), "model2": donor(a, "model2"),
           "end_relative_acc": [_relative_acc(a), _relative_acc(b)],
           "stitch_sha256": shas, "lambdas": grid, **provenance(study.device, study.precision)}
    t = time.time()
    with failure_recorded(rec, f"lmc {name}", log):
        (W0, b0), (W1, b1) = ((W.double(), bias.double()) for W, bias in
                              (load_stitch(stitch_path(s.results_dir, r["run"])) for r in (a, b)))
        curves: dict[str, list] = {"relative_acc": [], "stitched_acc": [], "cross_entropy": []}
        for lam in grid:
            net.stitch.set_affine(((1 - lam) * W0 + lam * W1).float(), ((1 - lam) * b0 + lam * b1).float())
            met = evaluate(net, ctx.source, study.data.multilabel, "test", similarity_samples=0)
            for k, values in curves.items():
                values.append(met[k])
        rec.update(status="ok", **curves)
        log.info("lmc %s -> %s %s: relative accuracy %s", L, M, ptype,
                 " ".join("-" if v is None else f"{v:.2f}" for v in curves["relative_acc"]))
    rec["timings"] = {"eval_s": time.time() - t, "study_load_s": study.load_s}
    write_json(lmc_path(s.results_dir, name), rec)
    return rec


def format_lmc_table(records: list[dict]) -> str:
    """The step's pairs as a text table (what ``stitch.py step=lmc`` prints)."""
    cols = [("layer", 10), ("target", 10), ("pair", 8), ("ends", 24), ("status", 7), ("rel.acc λ=0", 12),
            ("min", 6), ("λ=1", 6)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in cols)]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in records:
        acc = [v for v in r.get("relative_acc") or [] if v is not None]
        ends = f"{r['method0']}.s{r.get('seed0')} vs {r['method1']}.s{r.get('seed1')}"
        vals = [r["layer"], r["target_layer"], r["pair_type"], ends, r["status"],
                f(acc[0] if acc else None), f(min(acc) if acc else None), f(acc[-1] if acc else None)]
        lines.append("  ".join(f"{v!s:>{w}}" for v, (_, w) in zip(vals, cols)))
    return "\n".join(lines)
