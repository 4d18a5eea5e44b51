"""Reading results: one JSON record per run, ``<results_dir>/records/<run>.json``, and the saved
stitching layers (``save_stitch=true``: ``<results_dir>/stitches/<run>.pt``).

The records are written by the study (atomically, so a reader never sees half a file). This is
the one place that finds and reads them: :mod:`stitch.matrices`, the sweep's tables
(:mod:`stitch.sweep.collect`) and the tests all read records through it, and the sweep's figures
and the LMC step (:mod:`stitch.study.lmc`) read saved stitching layers with :func:`load_stitch`.
It imports no network code.
"""
from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .fileio import read_json

log = logging.getLogger(__name__)


def record_files(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Record files of directories (``<dir>/records/*.json`` or ``<dir>/*.json``, searched
    recursively so a parent of several studies works), single files and glob patterns."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: dict[Path, None] = {}
    for item in inputs:
        item = str(item)
        paths = [Path(p) for p in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        if not paths:
            log.warning("no files match %s", item)
        for p in paths:
            if p.is_dir():
                hits = sorted(p.rglob("records/*.json"))
                if not hits:  # a directory of record files itself
                    hits = sorted(p.glob("*.json"))
                if not hits:
                    log.warning("no records under %s", p)
                for h in hits:
                    found[h.resolve()] = None
            elif p.is_file():
                found[p.resolve()] = None
            else:
                log.warning("%s does not exist", p)
    return list(found)


def read_record(path: str | Path) -> dict:
    """One record file; ``OSError``/``ValueError`` when it cannot be read or is not a JSON object."""
    rec = read_json(path)
    if not isinstance(rec, dict):  # bad file content: a ValueError, like invalid JSON
        raise ValueError(f"not a record (a JSON {type(rec).__name__}, not an object)")  # noqa: TRY004
    return rec


def readable_records(files: Iterable[Path]) -> Iterator[tuple[Path, dict]]:
    """(path, record) of each file that reads as a record; unreadable ones are skipped with a warning."""
    for p in files:
        try:
            yield p, read_record(p)
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable record %s: %s", p, e)


def load_records(inputs: str | Path | Iterable[str | Path], status: str | None = "ok") -> list[dict]:
    """Every record of ``inputs`` (as :func:`record_files`) whose ``status`` is ``status`` (``None``: all),
    in file order; unreadable files are skipped with a warning."""
    return [rec for _, rec in readable_records(record_files(inputs))
            if status is None or rec.get("status") == status]


def stitch_matrix(state: dict) -> torch.Tensor:
    """The C_in x C_out matrix W of a saved stitching layer's state dict: ``weight``, or ``w1 @ w2``
    for a rank-k layer."""
    return state["weight"] if "weight" in state else state["w1"] @ state["w2"]


def load_stitch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of a saved stitching layer, on the CPU: ``rows(A) @ W + b``. Loaded with
    ``weights_only=True`` (tensors only: never runs code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return stitch_matrix(state), state["bias"]
    except Exception as e:  # truncated, emptied, not a torch file, or not a stitching layer's state dict
        from .errors import CheckpointError

        raise CheckpointError(f"saved stitching layer {path} is damaged ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}); rerun its run with force=true "
                              f"save_stitch=true to remake it") from None
