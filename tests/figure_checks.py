"""What a reader of a figure relies on, read back from the matplotlib objects a figure drew: each panel's
labels and how much finite data it shows. Used instead of file sizes, which a "no data" placeholder passes."""
from __future__ import annotations

import numpy as np
import pytest


def _finite(values) -> int:
    a = np.asarray(values, dtype=float) if len(values) else np.zeros(0)
    return int(np.isfinite(a).sum())


def panel(ax) -> dict:
    """One panel: its title and axis labels, and the finite values of each kind of mark it draws."""
    lines = [ln for ln in ax.get_lines() if _finite(ln.get_ydata())]
    images = [im for im in ax.get_images() if _finite(np.ma.filled(im.get_array(), np.nan).ravel())]
    from matplotlib.container import BarContainer

    bars = [p for c in ax.containers if isinstance(c, BarContainer) for p in c if np.isfinite(p.get_height())]
    filled = [c for c in ax.collections if len(c.get_paths()) or len(c.get_offsets())]
    shapes = [p for p in ax.patches if p.get_visible() and p.get_path().vertices.size]  # e.g. histograms
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "lines": len(lines), "line_labels": [ln.get_label() for ln in lines], "images": len(images),
            "bars": len(bars), "collections": len(filled), "patches": len(shapes), "texts": [t.get_text() for t in ax.texts]}


def panels(fig) -> list[dict]:
    """The visible data panels of ``fig`` (colour bars and switched-off axes left out)."""
    return [panel(ax) for ax in fig.axes
            if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]


def drawn_marks(p: dict) -> int:
    return p["lines"] + p["images"] + p["bars"] + p["collections"] + p["patches"]


def assert_real_figure(fig, min_panels: int = 1) -> list[dict]:
    """``fig`` shows data, not the placeholder: at least ``min_panels`` panels with marks, each labelled on
    both axes (or titled, for matrices of small multiples), and a title saying what was run."""
    from stitch.sweep.figures import PLACEHOLDER

    assert fig.get_label() != PLACEHOLDER, "the figure is the 'no data' placeholder"
    with_data = [p for p in panels(fig) if drawn_marks(p)]
    assert len(with_data) >= min_panels, panels(fig)
    for p in with_data:
        assert (p["xlabel"] or p["title"]) and (p["ylabel"] or p["title"]), p
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    assert title.strip(), "no figure title"
    return with_data


@pytest.fixture
def kept_figures(monkeypatch):
    """Every figure ``sweep.py`` draws in this test, open, by file stem (``FigureContext.keep``)."""
    import matplotlib.pyplot as plt

    from stitch.sweep import report

    kept: dict = {}
    real_draw = report.draw

    def draw(name, ctx):
        ctx.keep = kept
        return real_draw(name, ctx)

    monkeypatch.setattr(report, "draw", draw)
    yield kept
    for fig in kept.values():
        plt.close(fig)


def summary(fig) -> dict:
    """JSON-able: whether ``fig`` is the placeholder, and its panels (for figures drawn in a subprocess)."""
    from stitch.sweep.figures import PLACEHOLDER

    return {"placeholder": fig.get_label() == PLACEHOLDER, "panels": panels(fig),
            "title": fig._suptitle.get_text() if fig._suptitle is not None else ""}
