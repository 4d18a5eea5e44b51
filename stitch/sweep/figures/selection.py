"""Which records a figure draws, and the data it reads beside them (saved stitching layers, energy
percentiles, probing records): pandas in, pandas out, nothing drawn."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ...matrices import layer_order  # noqa: F401 - the figures order layers as the matrices do
from ...fileio import read_json
from ...results import load_stitch, read_record
from ...sorting import natural_key
from .. import columns as C
from ..labels import method_label
from ..lmc import lmc_dirs

log = logging.getLogger("stitch.sweep.figures")



def col(df: pd.DataFrame, name: str, default=None) -> pd.Series:
    return df[name] if name in df else pd.Series(default, index=df.index, dtype=object)


def method_labels(df: pd.DataFrame) -> pd.Series:
    """Per-row method label from ``method``, the recipe name (``variant``) and a DM fit's image count."""
    v, k, recorded = col(df, C.VARIANT), col(df, C.DM_SAMPLES), C.DM_SAMPLES in df
    return pd.Series([method_label(m, r, n, samples_recorded=recorded) for m, r, n in zip(df[C.METHOD], v, k)],
                     index=df.index, dtype=object)


def method_rank(m) -> tuple:
    return (0 if str(m).startswith("tlm") else 1, str(m))


def order_methods(methods) -> list[str]:
    """TLM before DM, then by name: the papers' order, and stable colours between figures."""
    return sorted(set(methods), key=method_rank)


def sorted_values(s: pd.Series) -> list[str]:
    return [str(v) for v in sorted(pd.unique(s.dropna()), key=natural_key)]


def add_curves(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """A ``curve`` label per row: the method and recipe, plus the config values that differ between
    rows of the same method (e.g. 'TLM (epochs=5)' next to 'TLM (epochs=30)'), so different
    configurations are never averaged into one curve. ``exclude``: the figure's own axes."""
    df = df.copy()
    df["curve"] = method_labels(df)
    cfg_cols = [c for c in df.columns if c.startswith(("method_config.", "config.")) and c not in exclude]
    for _, g in df.groupby("curve"):
        varying = [c for c in cfg_cols if g[c].astype(str).nunique() > 1]
        if varying:
            for i in g.index:
                extra = ", ".join(f"{c.split('.')[-1]}={df.at[i, c]}" for c in varying)
                df.at[i, "curve"] = f"{df.at[i, 'curve']} ({extra})"
    return df


def same_layer(df: pd.DataFrame) -> pd.DataFrame:
    return df[df[C.LAYER] == df[C.TARGET_LAYER]] if len(df) else df


def has_same_layer(runs):
    ok = runs[runs[C.STATUS] == "ok"]
    return bool(len(same_layer(ok)))


def history_runs(history: pd.DataFrame, ok: pd.DataFrame, pred) -> pd.DataFrame:
    """The tracked TLM steps of the finished runs ``pred`` selects, with each run's layer and method."""
    if not len(history):
        return pd.DataFrame()
    runs = ok[pred(ok)] if len(ok) else ok
    return history[history[C.RUN].isin(set(runs[C.RUN]))].merge(
        runs[[C.RUN, C.LAYER, C.TARGET_LAYER, C.MODEL1_TAG, C.METHOD, C.SEED]
             + [c for c in (C.CKA_PENALTY, C.TLM_INIT) if c in runs]], on=C.RUN)


def tracked(r: pd.DataFrame) -> bool:
    return C.N_HISTORY in r and bool((r.loc[r[C.STATUS] == "ok", C.N_HISTORY] > 0).any())


def is_low_rank(df: pd.DataFrame) -> pd.Series:
    return ((col(df, C.KIND) == "tlm") & col(df, C.RANK).notna()) | \
        ((col(df, C.KIND) == "dm") & (col(df, C.DM_SOLVER) == "rank"))


def is_sparse(df: pd.DataFrame) -> pd.Series:
    """L1 TLM (l1 = 0 is its unregularised baseline) and lasso DM runs, low-rank/penalised ones excluded."""
    return (((col(df, C.KIND) == "tlm") & col(df, C.L1).notna()
             & col(df, C.RANK).isna() & (col(df, C.CKA_PENALTY).fillna(0) == 0))
            | ((col(df, C.KIND) == "dm") & (col(df, C.DM_SOLVER) == "lasso")))


def saved_matrix(path):
    """The C_in x C_out matrix W of a run's saved stitching layer (full or low rank); None without one."""
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    return load_stitch(path)[0]


def fill_sparsity(df: pd.DataFrame) -> pd.DataFrame:
    """``fit.sparsity`` is recorded for L1/lasso fits only; fill it from the saved stitching layer
    (|w| below the run's zero threshold, 1e-4 by default) for the unregularised baselines."""
    df = df.copy()
    if C.SPARSITY not in df:
        df[C.SPARSITY] = np.nan
    missing = df[C.SPARSITY].isna() & col(df, C.STITCH_PATH).notna()
    for i in df.index[missing]:
        W = saved_matrix(df.at[i, C.STITCH_PATH])
        if W is not None:
            thr = df.at[i, C.ZERO_THRESHOLD] if C.ZERO_THRESHOLD in df else None
            thr = 1e-4 if thr is None or pd.isna(thr) else float(thr)
            df.at[i, C.SPARSITY] = float((W.abs() < thr).float().mean())
    return df


def is_regularised(df: pd.DataFrame) -> pd.Series:
    return ((col(df, C.KIND) == "tlm") & (col(df, C.L1).fillna(0) > 0)) | \
        ((col(df, C.KIND) == "dm") & (col(df, C.DM_SOLVER) == "lasso"))


def is_matrix(r: pd.DataFrame) -> bool:
    ok = r[r[C.STATUS] == "ok"]
    return bool(len(ok)) and bool((ok[C.LAYER] != ok[C.TARGET_LAYER]).any())


def read_records(paths) -> list[dict]:
    """The records at ``paths`` (a figure reads what the table does not hold); unreadable ones are skipped."""
    out = []
    for p in paths:
        try:
            out.append(read_record(p))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable record %s: %s", p, e)
    return out


def read_energies(paths) -> list[dict]:
    """The detector-energy percentiles (``ood_energies``) of the records at ``paths``."""
    return [r["ood_energies"] for r in read_records(paths) if r.get("ood_energies")]


def probing_records(runs: pd.DataFrame) -> list[dict]:
    out = []
    for d in lmc_dirs(runs):  # the results directories the records came from
        for f in sorted(Path(d).glob("probing/*.json")):
            try:
                out.append(read_json(f))
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable probing record %s: %s", f, e)
    return out


def has_probing(runs: pd.DataFrame) -> bool:
    return bool(probing_records(runs))
