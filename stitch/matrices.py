"""Layer x layer similarity matrices from result records, and paper 2's pathology flag.

A study with ``layer=all target_layer=all`` writes one record per (source layer L,
target layer M, method) (see :mod:`stitch.study`). This module turns a list of
such records into one :class:`pandas.DataFrame` per metric, rows = source layer
(model 1), columns = target layer (model 2), which is paper 2's layout ("the
horizontal index is the target layer and the vertical index is the source layer").

Metrics (:data:`METRICS`; ``<method>`` is each method name found, e.g. ``tlm``, ``dm``):

=========================  ===========================================  ==========
key                        value                                        better
=========================  ===========================================  ==========
``<method>/relative_acc``  stitched / model-2 accuracy                  higher
``<method>/ood_auroc``     OOD AUROC of S(A) vs B (0.5 = in-dist.)      n/a
``<method>/dm_structural`` ||S(A) - B||^2 / ||B||^2 (paper 2)           lower
``cka``                    linear CKA of the raw A and B                higher
``pwcca``                  PWCCA of the raw A and B                     higher
``opd``                    orthogonal Procrustes distance of A and B    lower
=========================  ===========================================  ==========

The structural indices come from ``metrics["sim_raw/<index>"]`` (the raw source
and target activations), identical for every method of a pair. ``dm_structural``
is kept for every method (for TLM it measures how far its S(A) is from B).

Pathology flag (paper 2): in a self-stitching (or same-architecture) matrix the
diagonal compares a layer with itself (or its counterpart). A target layer M is
*flagged* when some other source layer L scores better than the diagonal one,
e.g. TLM rating layer 3 -> layer 5 above layer 5 -> layer 5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .sorting import natural_key


@dataclass(frozen=True)
class MetricSpec:
    """How to read one matrix's values from a record's ``metrics``."""

    key: str                   # the metrics key in a record
    higher_is_better: bool | None  # None: no "better" direction (e.g. OOD AUROC)
    per_method: bool           # one matrix per method (True) or one shared by all methods (False)
    label: str


METRICS: dict[str, MetricSpec] = {
    "relative_acc": MetricSpec("relative_acc", True, True, "relative accuracy"),
    "ood_auroc": MetricSpec("ood/auroc", None, True, "OOD AUROC"),
    "dm_structural": MetricSpec("dm_structural", False, True, "DM structural score"),
    "cka": MetricSpec("sim_raw/cka", True, False, "CKA"),
    "pwcca": MetricSpec("sim_raw/pwcca", True, False, "PWCCA"),
    "opd": MetricSpec("sim_raw/opd", False, False, "OPD"),
}


# ----------------------------------------------------------------------- records
# (read them with stitch.results.load_records)
def _model_id(m: dict | None) -> str:
    m = m or {}
    return str(m.get("key") or f"{m.get('name')}/seed{m.get('seed')}")


def select_records(records: Iterable[dict], *, model1: str | None = None, model2: str | None = None,
                   study: str | None = None, data: str | None = None, seed: int | None = None,
                   where: Callable[[dict], bool] | None = None) -> list[dict]:
    """Finished records of one model pair.

    ``model1``/``model2`` match the donor key recorded in the record (e.g.
    ``digits/tiny10/seed0``) or a substring of it; ``seed`` is the stitching seed.
    Raises ``ValueError`` if what remains mixes several model pairs (pass filters).
    """
    out = []
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        if model1 is not None and model1 not in _model_id(r.get("model1")):
            continue
        if model2 is not None and model2 not in _model_id(r.get("model2")):
            continue
        if study is not None and r.get("study") != study:
            continue
        if data is not None and r.get("data") != data:
            continue
        if seed is not None and r.get("seed") != seed:
            continue
        if where is not None and not where(r):
            continue
        out.append(r)
    pairs = {(_model_id(r.get("model1")), _model_id(r.get("model2"))) for r in out}
    if len(pairs) > 1:
        raise ValueError(f"records of several model pairs {sorted(pairs)}; select one with model1=/model2=")
    return out


# ---------------------------------------------------------------------- matrices
def _value(rec: dict, key: str) -> float | None:
    v = (rec.get("metrics") or {}).get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def layer_order(df: pd.DataFrame, column: str = "layer") -> list[str]:
    """Layers present in ``df[column]`` in the network's forward order.

    Records hold each layer's position in its network (``layer_index``, ``target_layer_index``);
    records written before they did are put in natural order (``bn2`` before ``bn10``)."""
    present = list(pd.unique(df[column].dropna())) if column in df else []
    index = f"{column}_index"
    if index in df:
        rank = df.dropna(subset=[index]).groupby(column)[index].first().to_dict()
        return sorted(present, key=lambda n: (rank.get(n, float("inf")), natural_key(n)))
    return sorted(present, key=natural_key)


def pivot(frame: pd.DataFrame, values: str, *, sources: Sequence[str] | None = None,
          targets: Sequence[str] | None = None, aggregate: str = "mean") -> pd.DataFrame:
    """``frame[values]`` as a source x target matrix: rows ``layer`` (model 1), columns ``target_layer``
    (model 2), both in forward order unless given, NaN where no row has a value. Every matrix (tables,
    claims, figures) is made here."""
    srcs = list(sources) if sources is not None else layer_order(frame, "layer")
    tgts = list(targets) if targets is not None else layer_order(frame, "target_layer")
    vals = frame.dropna(subset=[values]) if values in frame else frame.iloc[0:0]
    if not len(vals):
        mat = pd.DataFrame(index=srcs, columns=tgts, dtype=float)
    else:
        mat = vals.pivot_table(index="layer", columns="target_layer", values=values, aggfunc=aggregate)
        mat = mat.reindex(index=srcs, columns=tgts).astype(float)
    mat.index.name, mat.columns.name = "source", "target"
    return mat


def metric_matrix(records: Sequence[dict], key: str, *, method: str | None = None,
                  sources: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                  aggregate: str = "mean") -> pd.DataFrame:
    """One metric as a source x target DataFrame (NaN where no record has it), layers in forward order.

    ``key`` is a metrics key (``relative_acc``, ``ood/auroc``, ``sim_raw/cka``...);
    ``method`` restricts to one method name. Several records for a cell (stitching
    seeds) are combined with ``aggregate`` (``mean``, ``median``, ``min``, ``max``,
    ``std``, ``count``).
    """
    frame = pd.DataFrame([{"layer": r["layer"], "target_layer": r["target_layer"],
                           "layer_index": r.get("layer_index"), "target_layer_index": r.get("target_layer_index"),
                           "value": _value(r, key) if method is None or r.get("method") == method else None}
                          for r in records],
                         columns=["layer", "target_layer", "layer_index", "target_layer_index", "value"])
    return pivot(frame, "value", sources=sources, targets=targets, aggregate=aggregate)


def similarity_matrices(records: Sequence[dict], metrics: Iterable[str] | None = None, *,
                        methods: Iterable[str] | None = None, aggregate: str = "mean",
                        sources: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                        drop_empty: bool = True) -> dict[str, pd.DataFrame]:
    """Every matrix of :data:`METRICS` for one model pair.

    Returns ``{name: DataFrame}`` with names ``<method>/<metric>`` for per-method
    metrics (``tlm/relative_acc``, ``dm/ood_auroc``, ``dm/dm_structural``...) and
    ``<metric>`` for the structural indices (``cka``, ``pwcca``, ``opd``). Matrices
    with no value at all are left out unless ``drop_empty=False``. Pass the records
    of one model pair (see :func:`select_records`).
    """
    records = list(records)
    names = list(metrics) if metrics is not None else list(METRICS)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown matrix metric(s) {unknown}; valid: {', '.join(METRICS)}")
    found = sorted({r.get("method") for r in records if r.get("method")})
    methods = list(methods) if methods is not None else found
    out: dict[str, pd.DataFrame] = {}
    for name in names:
        spec = METRICS[name]
        for method in (methods if spec.per_method else [None]):
            m = metric_matrix(records, spec.key, method=method, sources=sources, targets=targets,
                              aggregate=aggregate)
            if drop_empty and m.isna().all().all():
                continue
            out[f"{method}/{name}" if method else name] = m
    return out


def better(spec_or_name: MetricSpec | str | bool | None) -> bool | None:
    """The "higher is better" direction of a metric name / spec / matrix key (None: none)."""
    if isinstance(spec_or_name, bool) or spec_or_name is None:
        return spec_or_name
    if isinstance(spec_or_name, MetricSpec):
        return spec_or_name.higher_is_better
    base = str(spec_or_name).split("/")[-1]
    if base not in METRICS:
        raise ValueError(f"unknown metric {spec_or_name!r}; valid: {', '.join(METRICS)}")
    return METRICS[base].higher_is_better


def pathology_flags(matrix: pd.DataFrame, higher_is_better: bool = True, *, tol: float = 0.0,
                    diagonal: dict[str, str] | None = None, metric: str | None = None) -> list[dict]:
    """Target layers for which another source layer scores better than the matching one.

    ``diagonal`` maps each target layer to its matching source layer (default: the
    source of the same name, i.e. self-stitching or the same architecture). A source
    L is *better* than the diagonal source D for target M when
    ``value[L, M] > value[D, M] + tol`` (``<`` and ``-`` for distances,
    ``higher_is_better=False``). Targets without a diagonal value are skipped.

    Returns one dict per (target, better source), sorted by target then margin::

        {"metric", "target", "source", "diagonal_source", "value", "diagonal_value", "margin"}

    with ``margin`` > 0 the amount by which the off-diagonal source is better.
    """
    if higher_is_better is None:
        raise ValueError("this metric has no better/worse direction (e.g. OOD AUROC): no pathology flag")
    sign = 1.0 if higher_is_better else -1.0
    flags = []
    for target in matrix.columns:
        d_src = (diagonal or {}).get(target, target)
        if d_src not in matrix.index:
            continue
        d_val = matrix.at[d_src, target]
        if pd.isna(d_val):
            continue
        for src in matrix.index:
            v = matrix.at[src, target]
            if src == d_src or pd.isna(v):
                continue
            margin = sign * (float(v) - float(d_val))
            if margin > tol:
                flags.append({"metric": metric, "target": target, "source": src, "diagonal_source": d_src,
                              "value": float(v), "diagonal_value": float(d_val), "margin": margin})
    order = {t: i for i, t in enumerate(matrix.columns)}
    flags.sort(key=lambda f: (order[f["target"]], -f["margin"]))
    return flags


def matrices_and_flags(records: Sequence[dict], metrics: Iterable[str] | None = None, *, tol: float = 0.0,
                       diagonal: dict[str, str] | None = None, **kwargs
                       ) -> tuple[dict[str, pd.DataFrame], dict[str, list[dict]]]:
    """:func:`similarity_matrices` plus :func:`pathology_flags` of every matrix with a direction.

    Returns ``(matrices, flags)``; ``flags[name]`` is the (possibly empty) list for
    matrix ``name``. Matrices without a direction (OOD AUROC) have no entry.
    """
    mats = similarity_matrices(records, metrics, **kwargs)
    flags = {}
    for name, m in mats.items():
        direction = better(name)
        if direction is None:
            continue
        flags[name] = pathology_flags(m, direction, tol=tol, diagonal=diagonal, metric=name)
    return mats, flags


def flagged_targets(flags: list[dict]) -> list[str]:
    """The distinct flagged target layers, in matrix order."""
    seen: list[str] = []
    for f in flags:
        if f["target"] not in seen:
            seen.append(f["target"])
    return seen


def diagonal(matrix: pd.DataFrame, mapping: dict[str, str] | None = None) -> pd.Series:
    """The matching-layer values ``value[D(M), M]`` per target M (NaN where absent)."""
    vals = {}
    for t in matrix.columns:
        s = (mapping or {}).get(t, t)
        vals[t] = matrix.at[s, t] if s in matrix.index else float("nan")
    return pd.Series(vals, name="diagonal", dtype=float)


def claim_numbers(records: Sequence[dict]) -> list[dict]:
    """Paper 2's claims as numbers, one row per (model pair, method variant) of a layer x layer study.

    * ``at_or_above_diagonal``: off-diagonal cells rated at least as similar (relative accuracy) as the
      diagonal cell of their column (target layer); ``off_diagonal_cells`` of them in all;
    * ``targets_with_better_source``: target layers for which another source layer is rated *more*
      similar than the matching one (for self-stitching: a layer more similar to it than itself);
    * ``auroc_diagonal`` / ``auroc_off_diagonal``: mean OOD AUROC on / off the diagonal, and the mean
      separability |AUROC - 0.5| (an AUROC far below 0.5 is as distinguishable as one far above);
    * ``trusted_auroc_*``: the same over cells whose detector passed its sanity check only.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        key = (_model_id(r.get("model1")), _model_id(r.get("model2")), r.get("method"), r.get("variant"))
        groups.setdefault(key, []).append(r)
    rows = []
    for (m1, m2, method, variant), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        acc = metric_matrix(rs, "relative_acc")
        if acc.shape[0] < 2:
            continue
        diag = {t: t for t in acc.columns if t in acc.index}
        cells = [(s, t) for s in acc.index for t in acc.columns if t in diag and s != t and pd.notna(acc.at[s, t])]
        above = sum(acc.at[s, t] >= acc.at[t, t] for s, t in cells)
        better = {f["target"] for f in pathology_flags(acc, True)}
        row = {"model1": m1, "model2": m2, "method": method, "variant": variant, "layers": acc.shape[0],
               "off_diagonal_cells": len(cells), "at_or_above_diagonal": int(above),
               "targets_with_better_source": len(better), "targets": len(diag),
               "relative_acc_diagonal": float(np.nanmean([acc.at[t, t] for t in diag])),
               "relative_acc_off_diagonal": float(np.nanmean([acc.at[s, t] for s, t in cells])) if cells else None}
        auroc = [(r["layer"], r["target_layer"], (r.get("metrics") or {}).get("ood/auroc"),
                  (r.get("metrics") or {}).get("ood/detector_trusted")) for r in rs]
        auroc = [a for a in auroc if a[2] is not None]
        for prefix, keep in (("", lambda a: True), ("trusted_", lambda a: a[3] == 1)):
            on = [a[2] for a in auroc if a[0] == a[1] and keep(a)]
            off = [a[2] for a in auroc if a[0] != a[1] and keep(a)]
            for where, vals in (("diagonal", on), ("off_diagonal", off)):
                row[f"{prefix}auroc_{where}"] = float(np.mean(vals)) if vals else None
                row[f"{prefix}separability_{where}"] = float(np.mean([abs(v - 0.5) for v in vals])) if vals else None
                row[f"{prefix}auroc_{where}_cells"] = len(vals)
        rows.append(row)
    return rows
