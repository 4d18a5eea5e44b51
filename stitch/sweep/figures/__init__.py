"""The papers' figures, drawn from collected records (see :mod:`stitch.sweep.collect`).

Each figure is a function ``(ctx: FigureContext) -> list[Path]`` registered in ``FIGURES``
(:mod:`.registry`) with a short caption and a test of whether the collected runs hold its data
(``figures: auto`` draws every applicable one). Every figure is saved as PNG and PDF, sized for print
(fonts >= 8 pt at the saved size) and titled with what was run: data, architectures, methods, runs per
point and the studies read.

By job: :mod:`.selection` picks the records a figure draws (and reads what lies beside them),
:mod:`.plotting` holds the drawing helpers, :mod:`.paper1` and :mod:`.paper2` the figures of each paper.
Matrices come from :func:`stitch.matrices.pivot`, as every other layer x layer table does.
"""
from . import paper1, paper2  # noqa: F401 - registers the figures
from .plotting import PLACEHOLDER, save
from .registry import FIGURES, Figure, FigureContext, draw, register
from .selection import fill_sparsity, layer_order

__all__ = ["FIGURES", "Figure", "FigureContext", "PLACEHOLDER", "draw", "fill_sparsity", "layer_order", "register",
           "save"]
