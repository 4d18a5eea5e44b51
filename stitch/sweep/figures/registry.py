"""The figure registry: each figure is a function ``(ctx: FigureContext) -> list[Path]`` registered by
name with its file stem, a caption and a test of whether the collected runs hold its data."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from .plotting import STYLE, plt


@dataclass
class FigureContext:
    runs: pd.DataFrame      # every run (failed ones included), see collect.collect
    agg: pd.DataFrame       # collect.aggregate(runs)
    history: pd.DataFrame   # tracked TLM steps
    out: Path               # output directory
    name: str = ""          # file stem, e.g. fig-p1-2
    title: str | None = None
    formats: tuple[str, ...] = ("png", "pdf")
    options: dict = field(default_factory=dict)  # figure options (none of the figures needs one today)
    # a dict: every figure saved is also kept here, open, by file stem (tests read what was drawn; notebooks
    # show it); None: figures are closed once written
    keep: dict | None = None

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"] if len(self.runs) else self.runs


@dataclass
class Figure:
    fn: Callable[[FigureContext], list[Path]]
    stem: str
    caption: str
    applies: Callable[[pd.DataFrame], bool]
    # the runs-table columns (stitch.sweep.columns) the figure reads: the contract between the record writer
    # and this figure, checked against a real study's records by the smoke tests
    reads: tuple[str, ...] = ()

    def missing_columns(self, runs: pd.DataFrame) -> list[str]:
        return [c for c in self.reads if c not in runs]


FIGURES: dict[str, Figure] = {}


def register(name: str, stem: str, caption: str, applies: Callable[[pd.DataFrame], bool],
             reads: tuple[str, ...] = ()):
    def deco(fn):
        FIGURES[name] = Figure(fn, stem, caption, applies, tuple(reads))
        return fn
    return deco


def draw(name: str, ctx: FigureContext) -> list[Path]:
    fig = FIGURES[name]
    ctx.name = ctx.name or fig.stem
    with plt.rc_context(STYLE):
        return fig.fn(ctx)
