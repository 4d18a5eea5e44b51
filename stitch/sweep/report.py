"""``sweep.py``: records -> tables -> figures (-> a W&B report run)."""
from __future__ import annotations

import glob
import logging
import sys
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, DataNotFoundError
from . import columns as C
from .collect import DEFAULT_SEED_KEYS, aggregate, collect, export
from .figures import FIGURES, FigureContext, draw

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter


def figure_list() -> str:
    return "\n".join(f"  {name:<9} -> {f.stem:<11} {f.caption}" for name, f in FIGURES.items())


def _requested(spec, runs: pd.DataFrame) -> list[str]:
    if spec in (None, "none", [], "[]"):
        return []
    if spec == "auto":
        if not len(runs):
            return []
        return [n for n, f in FIGURES.items() if _applies(f, runs)]
    names = [spec] if isinstance(spec, str) else list(spec)
    bad = [n for n in names if n not in FIGURES]
    if bad:
        raise ConfigError(f"unknown figure(s) {bad}; known figures:\n{figure_list()}")
    return names


def _applies(fig, runs) -> bool:
    try:
        return bool(fig.applies(runs))
    except (KeyError, TypeError, ValueError):
        return False


def run_sweep(cfg: dict) -> int:
    if cfg.get("list"):
        print(figure_list())
        return 0
    seed_keys = tuple(cfg["seed_keys"]) if cfg.get("seed_keys") is not None else DEFAULT_SEED_KEYS
    inputs = cfg.get("inputs") or ["results"]
    inputs = [inputs] if isinstance(inputs, str) else inputs
    # a mistyped directory is an error; a pattern that matches nothing only a warning (collect)
    missing = [str(i) for i in inputs if not glob.has_magic(str(i)) and not Path(i).exists()]
    if missing:
        raise DataNotFoundError(f"inputs={inputs!r}: {', '.join(missing)} does not exist")
    coll = collect(inputs, seed_keys)
    runs = coll.runs
    out = Path(cfg.get("out") or "figures/sweep")
    n_ok = int((runs[C.STATUS] == "ok").sum()) if len(runs) else 0
    print(f"{len(runs)} runs from {', '.join(map(str, coll.sources))}: {n_ok} ok, {len(runs) - n_ok} failed"
          + (f", {len(coll.unreadable)} unreadable record files" if coll.unreadable else ""))
    agg = aggregate(runs, seed_keys)
    tables = {"runs": runs, "aggregate": agg, "history": coll.history}
    failed = runs[runs[C.STATUS] != "ok"][[c for c in (C.RUN, C.STUDY, C.LAYER, C.TARGET_LAYER, C.METHOD, C.SEED,
                                                        C.ERROR, C.RECORD_PATH) if c in runs]] if len(runs) else runs
    written = export(tables, out, cfg.get("tables") or ("csv", "parquet"))
    failed.to_csv(out / "failed.csv", index=False)
    if len(failed):
        print(f"failed runs (excluded from aggregates, listed in {out / 'failed.csv'}):")
        for r in failed.itertuples():
            print(f"  {r.run}: {str(getattr(r, 'error', ''))[:160]}")
    figures = _requested(cfg.get("figures", "auto"), runs)
    images: dict[str, list[Path]] = {}
    missing = []
    for name in figures:
        if not len(runs) or not _applies(FIGURES[name], runs):
            missing.append(name)
        ctx = FigureContext(runs, agg, coll.history, out, FIGURES[name].stem, cfg.get("title"),
                            tuple(cfg.get("formats") or ("png", "pdf")))
        images[name] = draw(name, ctx)
    print(f"tables: {', '.join(str(p) for p in written)}")
    for name, paths in images.items():
        print(f"figure {name}: {', '.join(str(p) for p in paths)}")
    if missing:
        log.warning("no data for figure(s) %s in these records: drew a placeholder", ", ".join(missing))
    lcfg = cfg.get("logger") or {}
    if lcfg.get("name") == "wandb":
        log_report(lcfg, cfg, tables, images, out)
    if cfg.get("strict") and (missing or coll.unreadable or not len(runs)):
        sys.exit(1)
    return 0


def log_report(lcfg: dict, cfg: dict, tables: dict[str, pd.DataFrame], images: dict[str, list[Path]],
               out: Path) -> None:
    """One W&B run (job_type sweep-report) with the tables and figures, ready to drop into a report."""
    from ..loggers import WandbRun

    runs = tables["runs"]
    studies = sorted({str(s) for s in runs.get(C.STUDY, pd.Series(dtype=object)).dropna()})
    name = f"sweep-{out.name if out.name not in ('smoke', 'paper') else out.parent.name + '-' + out.name}"
    run = WandbRun({**lcfg, "group": lcfg.get("group") or (studies[0] if len(studies) == 1 else "sweeps")},
                   name=name, config={"inputs": cfg.get("inputs"), "figures": list(images), "studies": studies,
                                      "out": str(out)}, job_type="sweep-report")
    if not run.active:  # W&B unavailable: the warning is logged, the tables and figures are on disk
        return
    wandb = run.wandb
    payload = {}
    for tname in ("aggregate", "runs"):
        df = tables[tname]
        if len(df):
            # W&B tables want one type per column: text for the mixed ones
            payload[f"table/{tname}"] = wandb.Table(dataframe=df.astype(
                {c: str for c in df.columns if df[c].dtype == object}))
    for name, paths in images.items():
        png = [p for p in paths if p.suffix == ".png"]
        if png:
            payload[f"figure/{name}"] = wandb.Image(str(png[0]), caption=FIGURES[name].caption)
    run.log(payload)
    n_ok = int((runs[C.STATUS] == "ok").sum()) if len(runs) else 0
    run.summary({"runs": len(runs), "runs_ok": n_ok, "runs_failed": len(runs) - n_ok})
    run.finish()
