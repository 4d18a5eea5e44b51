"""Runs' identities and records: what a run is, where its record lives, whether it is done.

A run is (the study's result-changing settings, layer pair, method). Its identity is the
allow-list :meth:`StudySettings.identity` (fields marked as changing results, as the config
sets them) plus the pair and the method's own settings, hashed into the run id:
``<model1 tag>.s<seed>.<L>--<model2 tag>.s<seed>.<M>--<method>.seed<seed>-<hash>``. The record
is ``<results_dir>/records/<run id>.json``, written atomically; its ``config`` is the identity.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .. import store
from ..provenance import HOST
from ..results import read_record
from ..settings import StudySettings


def run_identity(s: StudySettings, L: str, M: str, method: str) -> tuple[str, dict]:
    """(run id, the settings it hashes) of one run of the study."""
    semantic = s.identity()
    semantic.update(layer=L, target_layer=M, method=method, method_config=s.method[method].identity())
    h = hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:10]
    tag = lambda m: store.DonorKey.of(m, s.data.name).tag  # noqa: E731
    slug = (f"{tag(s.model1)}.s{s.model1.seed}.{L}--{tag(s.model2)}.s{s.model2.seed}.{M}"
            f"--{method}.seed{s.seed}-{h}")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", slug), semantic


def record_path(results_dir: str | Path, run: str) -> Path:
    return Path(results_dir) / "records" / f"{run}.json"


def stitch_path(results_dir: str | Path, run: str) -> Path:
    """Where ``save_stitch=true`` keeps a run's stitching layer (state dict, tensors only)."""
    return Path(results_dir) / "stitches" / f"{run}.pt"


def finished(path: Path) -> dict | None:
    """The record at ``path`` if it is a finished (ok) run, else None."""
    try:
        rec = read_record(path)
    except (OSError, ValueError):
        return None
    return rec if rec.get("status") == "ok" else None


def done_before(results_dir: str | Path, run: str, *, force: bool, save_stitch: bool,
                since: float | None = None, precision: str | None = None) -> dict | None:
    """The finished record of a run that need not be done again, else None.

    Without ``force``: any finished record (with its stitching layer when ``save_stitch``) computed at
    the same resolved ``precision`` (``precision=auto`` is bf16 on a GPU, 32 on a CPU: one run id, so a
    CPU record is redone, and replaced, on a GPU rather than reused). With
    ``force`` (``since`` = when this study started): only a record another process wrote since,
    i.e. a concurrent process of the same forced sweep did the run already."""
    path = record_path(results_dir, run)
    if not force:
        done = finished(path)
        if done is not None and save_stitch and not stitch_path(results_dir, run).is_file():
            return None  # finished before save_stitch was on: redo it to get the stitching layer
        if done is not None and precision is not None and done.get("precision") not in (None, precision):
            return None
        return done
    if since is None:
        return None
    done = finished(path)
    if done is None or (done.get("host"), done.get("pid")) == (HOST, os.getpid()):
        return None
    try:
        return done if path.stat().st_mtime >= since else None
    except OSError:
        return None


def format_table(records: list[dict]) -> str:
    """The study's runs as a text table (what ``stitch.py`` prints)."""
    cols = [("layer", 10), ("target", 10), ("method", 12), ("status", 7), ("rel.acc", 8), ("acc", 7),
            ("CE", 7), ("struct", 8), ("CKA", 6), ("fit s", 7)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in cols)]
    for r in records:
        m = r.get("metrics") or {}
        f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        vals = [r["layer"], r["target_layer"], r["method"], r["status"], f(m.get("relative_acc")),
                f(m.get("stitched_acc")), f(m.get("cross_entropy")), f(m.get("dm_structural")),
                f(m.get("sim/cka"), 2), f((r.get("timings") or {}).get("fit_s"), 1)]
        line = "  ".join(f"{str(v):>{w}}" for v, (_, w) in zip(vals, cols))
        if r["status"] == "claimed":  # being done by another process: neither ok nor failed
            line += f"  claimed by {r.get('claimed_by', '?')}"
        elif (r.get("fit") or {}).get("above_chance"):
            line += "  NOT CONVERGED (loss above chance)"
        lines.append(line)
    return "\n".join(lines)
