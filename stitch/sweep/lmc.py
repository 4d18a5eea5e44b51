"""Linear mode connectivity records -> the long table figure ``p1_lmc`` draws (read only).

The curves are computed by the study's LMC step (``python stitch.py +experiment=p1_lmc_<scale>
step=lmc``, :mod:`stitch.study.lmc`), which writes one record per pair of saved stitching layers,
``<results_dir>/lmc/<id>.json``: the λ grid of W(λ) = (1-λ) W0 + λ W1 and the relative accuracy,
stitched accuracy and cross-entropy along it. This module only reads those records; it runs no
network. :func:`lmc_table` turns them into one row per (pair, λ); the labels are made here.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..results import readable_records
from . import columns as C
from .labels import method_label, model_tag

log = logging.getLogger(__name__)

COLUMNS = ["pair_type", "pair_label", "pair", "run0", "run1", "method0", "method1", "layer", "target_layer",
           "layer_index", "model1.tag", "model1.name", "lambda", "relative_acc", "stitched_acc", "cross_entropy"]


def lmc_dirs(runs: pd.DataFrame) -> list[Path]:
    """The results directories the runs' records were read from (``<dir>/records/<run>.json``)."""
    if C.RECORD_PATH not in runs or not len(runs):
        return []
    return sorted({Path(p).parent.parent for p in runs[C.RECORD_PATH].dropna()})


def lmc_files(dirs: Iterable[str | Path]) -> list[Path]:
    """The LMC records of results directories: ``<dir>/lmc/*.json``."""
    return [p for d in dirs for p in sorted(Path(d).glob("lmc/*.json"))]


def pair_label(rec: dict) -> str:
    """'TLM (paper 1 recipe): seed vs seed', 'TLM (paper 1 recipe) vs DM (least squares)'."""
    a = method_label(rec.get("method0"), rec.get("variant0"))
    if rec.get("pair_type") == "seeds":
        return f"{a}: seed vs seed"
    return f"{a} vs {method_label(rec.get('method1'), rec.get('variant1'))}"


def lmc_records(dirs: Iterable[str | Path]) -> list[dict]:
    """The finished LMC records of ``dirs`` (a pair found twice counts once); failed ones are logged."""
    out: dict[str, dict] = {}
    for path, rec in readable_records(lmc_files(dirs)):
        if rec.get("status") != "ok":
            log.warning("LMC pair %s failed (%s); rerun the LMC step for it", path, rec.get("error"))
            continue
        out.setdefault(rec.get("lmc") or path.stem, rec)
    return list(out.values())


def lmc_table(dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Relative accuracy along W(λ) of every LMC record of ``dirs``; one row per (pair, λ)."""
    rows = []
    for rec in lmc_records(dirs):
        m1 = rec.get("model1") or {}
        head = {"pair_type": rec.get("pair_type"), "pair_label": pair_label(rec),
                "pair": f"{rec['run0']}|{rec['run1']}", "run0": rec["run0"], "run1": rec["run1"],
                "method0": rec.get("method0"), "method1": rec.get("method1"), "layer": rec.get("layer"),
                "target_layer": rec.get("target_layer"), "layer_index": rec.get("layer_index"),
                "model1.tag": model_tag(m1), "model1.name": m1.get("name")}
        curves = {k: list(rec.get(k) or []) for k in ("relative_acc", "stitched_acc", "cross_entropy")}
        for i, lam in enumerate(rec.get("lambdas") or []):
            rows.append({**head, "lambda": float(lam), **{k: v[i] if i < len(v) else None for k, v in curves.items()}})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("lambda", "relative_acc", "stitched_acc", "cross_entropy"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table
