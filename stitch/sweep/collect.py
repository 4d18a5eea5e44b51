"""Read stitching records into pandas tables and aggregate them over seeds.

A record is one JSON file per run, ``<results_dir>/records/<run>.json``, written by
:func:`stitch.study.run_study`. :func:`collect` reads any mix of result
directories, record files and glob patterns into a :class:`Collection`:

* ``runs``: one row per run, nested fields flattened to dotted columns
  (``model1.options.width``, ``fit.sparsity``, ``method_config.rank``,
  ``config.data.name``). Metrics keep their own names as columns (``relative_acc``,
  ``sim/cka``, ``ood/auroc``) because they are what every figure reads. Failed runs
  stay in the table with their ``status`` and ``error``.
* ``history``: one row per tracked TLM step (``history`` of runs with ``track_every > 0``).

:func:`aggregate` groups the successful runs by *condition*, the run's semantic
config with the replicate keys (the stitching ``seed`` and the donor seeds) taken
out, and reports mean, standard deviation (ddof=1: NaN for one run) and count of
every numeric metric. Failed runs never enter a mean; they are counted
(``n_failed``) and listed (``failed_runs``) on their condition's row.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..results import read_record, record_files
from ..sorting import natural_key
from . import columns as C
from .labels import model_tag

log = logging.getLogger(__name__)

# replicate dimensions: aggregates are taken over these (dotted paths into the record's config)
DEFAULT_SEED_KEYS = ("seed", "model1.seed", "model2.seed")
# columns copied from the record's top level as they are
_TOP = ("run", "study", "layer", "target_layer", "method", "kind", "variant", "seed", "data", "self_stitch", "status",
        "error", "code_version", "device", "precision", "hardware", "started", "stitch_file", "layer_index",
        "target_layer_index")
# columns that describe a run but are not results: never averaged
_NOT_METRICS = {"seed", "model1.seed", "model2.seed", "model1.test_acc", "model2.test_acc", "eval_samples",
                "fit.steps", "layer_index", "target_layer_index"}


@dataclass
class Collection:
    runs: pd.DataFrame
    history: pd.DataFrame
    sources: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"] if len(self.runs) else self.runs

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "ok"] if len(self.runs) else self.runs


# -------------------------------------------------------------------- flattening
def _scalar(v):
    """Table cells are scalars: lists and dicts become JSON text (Parquet needs one type per column)."""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def flatten(d: dict, prefix: str = "", out: dict | None = None) -> dict:
    out = {} if out is None else out
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flatten(v, key + ".", out)
        else:
            out[key] = _scalar(v)
    return out


def _drop_path(d: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p) if isinstance(d, dict) else None
        if not isinstance(d, dict):
            return
    if isinstance(d, dict):
        d.pop(leaf, None)


def condition_of(rec: dict, seed_keys: Sequence[str] = DEFAULT_SEED_KEYS) -> str:
    """A short id of the run's configuration without its replicate keys: runs that differ only
    in their seeds share it. Derived from the record's semantic ``config`` (what the run id hashes)
    plus the record's own layer/method fields, so a partial config can never merge two layers."""
    cfg = copy.deepcopy(rec.get("config") or {})
    for m in ("model1", "model2"):
        if not isinstance(cfg.get(m), dict):
            cfg[m] = copy.deepcopy(rec.get(m) or {})
        for k in ("key", "sha256", "test_acc"):  # donor identity: varies with the donor seed
            cfg[m].pop(k, None)
    if "seed" not in cfg:
        cfg["seed"] = rec.get("seed")
    for k in seed_keys:
        _drop_path(cfg, k)
    # the record's own description; self_stitch keeps intra- and inter-network apart once the
    # donor seeds are gone
    cfg["__run__"] = {k: rec.get(k) for k in ("data", "layer", "target_layer", "method", "kind", "variant")}
    cfg["__run__"]["self_stitch"] = bool(rec.get("self_stitch"))
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def record_row(rec: dict, path: Path | None = None, seed_keys: Sequence[str] = DEFAULT_SEED_KEYS) -> dict:
    row = {k: _scalar(rec.get(k)) for k in _TOP}
    row[C.STATUS] = rec.get("status") or "unknown"
    for m, tag in (("model1", C.MODEL1_TAG), ("model2", C.MODEL2_TAG)):
        flatten(rec.get(m) or {}, f"{m}.", row)
        row[tag] = model_tag(rec.get(m) or {})
    cfg = dict(rec.get("config") or {})
    flatten(cfg.pop("method_config", None) or {}, "method_config.", row)
    for k in ("model1", "model2", "layer", "target_layer", "method", "seed"):
        cfg.pop(k, None)  # already columns of their own
    flatten(cfg, "config.", row)
    flatten(rec.get("fit") or {}, "fit.", row)
    flatten(rec.get("timings") or {}, "timings.", row)
    for k, v in (rec.get("metrics") or {}).items():
        row[k] = _scalar(v)
    row[C.CONDITION] = condition_of(rec, seed_keys)
    row[C.N_HISTORY] = len(rec.get("history") or [])
    if path is not None:
        row[C.RECORD_PATH] = str(path)
        # the stitching layer, when the run kept it (save_stitch=true): <results_dir>/stitches/<run>.pt
        sf = rec.get("stitch_file")
        row[C.STITCH_PATH] = str(path.parent.parent / sf) if sf else None
    return row


# ------------------------------------------------------------------------ collect
def collect(inputs: Iterable[str | Path], seed_keys: Sequence[str] = DEFAULT_SEED_KEYS) -> Collection:
    """Read every record of ``inputs`` (directories, files, globs) into one run table.

    The same run (same ``run`` id, e.g. a results directory copied twice) is kept once: the
    successful copy, else the newest one."""
    inputs = [str(i) for i in inputs]
    rows, hist, bad = [], [], []
    for path in record_files(inputs):
        try:
            rec = read_record(path)
            if "run" not in rec:
                raise ValueError("not a stitching record (no 'run' key)")
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable record %s: %s", path, e)
            bad.append(str(path))
            continue
        row = record_row(rec, path, seed_keys)
        rows.append(row)
        for h in rec.get("history") or []:
            hist.append({"run": rec["run"], "condition": row["condition"], "record_path": str(path), **h})
    runs = pd.DataFrame(rows)
    if len(runs):
        runs["_ok"] = runs["status"].eq("ok")
        runs = (runs.sort_values(["run", "_ok", "started"], na_position="first")
                .drop_duplicates("run", keep="last").drop(columns="_ok").sort_values("run").reset_index(drop=True))
        _numeric(runs)
    history = pd.DataFrame(hist)
    if len(history):
        history = history[history["record_path"].isin(set(runs["record_path"]))].reset_index(drop=True)
    return Collection(runs, history, inputs, bad)


def _numeric(df: pd.DataFrame) -> None:
    """Metric columns read from JSON can hold None next to floats: make them float columns."""
    for c in df.columns:
        if df[c].dtype == object:
            vals = df[c].dropna()
            if len(vals) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in vals):
                df[c] = pd.to_numeric(df[c], errors="coerce")


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Numeric result columns: metrics, fit statistics and timings (not seeds or descriptors)."""
    skip_prefix = ("model1.", "model2.", "method_config.", "config.")
    cols = []
    for c in runs.columns:
        if c in _NOT_METRICS or c.startswith(skip_prefix) or c in ("n_history",):
            continue
        if c in _TOP or c in ("condition", "record_path", "stitch_path"):
            continue
        if pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c]):
            cols.append(c)
    return cols


# ---------------------------------------------------------------------- aggregate
def descriptor_columns(runs: pd.DataFrame, seed_keys: Sequence[str] = DEFAULT_SEED_KEYS) -> list[str]:
    """Columns that are constant within a condition and say what it is."""
    metrics = set(metric_columns(runs))
    drop = set(seed_keys) | {"run", "status", "error", "started", "record_path", "stitch_path", "stitch_file",
                             "condition", "n_history", "model1.key", "model2.key", "model1.sha256",
                             "model2.sha256", "model1.test_acc", "model2.test_acc", "code_version", "device",
                             "hardware", "precision", "study"}
    return [c for c in runs.columns if c not in metrics and c not in drop]


def aggregate(runs: pd.DataFrame, seed_keys: Sequence[str] = DEFAULT_SEED_KEYS) -> pd.DataFrame:
    """One row per condition: descriptors, ``n_runs``/``n_ok``/``n_failed``, the failed run ids,
    and ``<metric>.mean``/``.std``/``.count`` over the successful runs."""
    if not len(runs):
        return pd.DataFrame()
    metrics = metric_columns(runs)
    desc = descriptor_columns(runs, seed_keys)
    out = []
    for cond, g in runs.groupby(C.CONDITION, sort=False):
        ok = g[g[C.STATUS] == "ok"]
        row = {C.CONDITION: cond}
        for c in desc:  # first non-null value: failed runs lack fit/metric-derived fields
            vals = g[c].dropna()
            row[c] = vals.iloc[0] if len(vals) else None
        row["studies"] = ";".join(sorted({str(s) for s in g["study"].dropna()})) if "study" in g else None
        row[C.N_RUNS], row[C.N_OK], row[C.N_FAILED] = len(g), len(ok), len(g) - len(ok)
        row["failed_runs"] = ";".join(g.loc[g[C.STATUS] != "ok", C.RUN].astype(str)) or None
        for k in seed_keys:
            if k in g:
                row[f"{k}.values"] = ";".join(str(v) for v in sorted(ok[k].dropna().unique()))
        for m in metrics:
            v = pd.to_numeric(ok[m], errors="coerce").dropna() if len(ok) else pd.Series(dtype=float)
            row[f"{m}.mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{m}.std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            row[f"{m}.count"] = int(len(v))
        out.append(row)
    agg = pd.DataFrame(out)
    sort = [c for c in ("studies", "data", "model1.name", "method", "layer", "target_layer") if c in agg]
    return agg.sort_values(sort, key=lambda s: s.map(natural_key) if s.dtype == object else s,
                           kind="stable").reset_index(drop=True) if sort else agg


# ------------------------------------------------------------------------- export
def _for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:  # mixed str/number/bool cells: store as text
            types = {type(v) for v in df[c].dropna()}
            if len(types) > 1 or (types and not types <= {str}):
                df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df


def export(tables: dict[str, pd.DataFrame], out_dir: str | Path, formats: Sequence[str] = ("csv", "parquet")
           ) -> list[Path]:
    """Write each table as ``<out_dir>/<name>.csv`` and ``.parquet``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in tables.items():
        if "csv" in formats:
            p = out / f"{name}.csv"
            df.to_csv(p, index=False)
            written.append(p)
        if "parquet" in formats:
            p = out / f"{name}.parquet"
            _for_parquet(df).to_parquet(p, index=False)
            written.append(p)
    return written
