"""The papers' figures, drawn from collected records (see :mod:`stitch.sweep.collect`).

Each figure is a function ``(ctx: FigureContext) -> list[Path]`` registered in
``FIGURES`` with a short caption and a test of whether the collected runs hold its
data (``figures: auto`` draws every applicable one). Every figure is saved as PNG
and PDF, sized for print (fonts >= 8 pt at the saved size) and titled with what
was run: data, architectures, methods, runs per point and the studies read.

Paper 1 (Csiszarik et al. 2021): Fig. 2 per-layer relative accuracy and
cross-entropy, Fig. 3 width, Fig. 4 similarity over TLM steps, Fig. 5 the CKA
penalty, Fig. 6 initialisations, Fig. 7 low rank, Fig. 8 sparsity, and linear
mode connectivity of stitching layers. Paper 2 (Balogh & Jelasity 2025): Fig. 1-4
layer x layer matrices of relative accuracy and, when present, OOD AUROC.
"""
from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, never a window (CI, clusters)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from ..results import load_stitch  # noqa: E402
from ..sorting import natural_key  # noqa: E402
from .labels import method_label  # noqa: E402
from .lmc import lmc_dirs, lmc_files, lmc_table  # noqa: E402

log = logging.getLogger(__name__)

STYLE = {
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "figure.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "savefig.dpi": 200, "pdf.fonttype": 42,  # editable text in PDFs
}
TLM_COLOR, DM_COLOR = "#1f6fb4", "#e8710a"
_ARCH_LABELS = {"tiny10": "Tiny-10", "resnet20": "ResNet-20", "resnet18": "ResNet-18", "vit_tiny": "ViT-Ti",
                "inception_v1": "Inception V1"}
_DATA_LABELS = {"digits": "digits (sklearn)", "cifar10": "CIFAR-10", "svhn": "SVHN", "imagenet": "ImageNet",
                "celeba": "CelebA", "synthetic": "synthetic"}
AUROC = "ood/auroc"


# ------------------------------------------------------------------------ context
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

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"] if len(self.runs) else self.runs


@dataclass
class Figure:
    fn: Callable[[FigureContext], list[Path]]
    stem: str
    caption: str
    applies: Callable[[pd.DataFrame], bool]


FIGURES: dict[str, Figure] = {}


def register(name: str, stem: str, caption: str, applies: Callable[[pd.DataFrame], bool]):
    def deco(fn):
        FIGURES[name] = Figure(fn, stem, caption, applies)
        return fn
    return deco


def draw(name: str, ctx: FigureContext) -> list[Path]:
    fig = FIGURES[name]
    ctx.name = ctx.name or fig.stem
    with plt.rc_context(STYLE):
        return fig.fn(ctx)


# ------------------------------------------------------------------------ helpers
def col(df: pd.DataFrame, name: str, default=None) -> pd.Series:
    return df[name] if name in df else pd.Series(default, index=df.index, dtype=object)


def _labels(df: pd.DataFrame) -> pd.Series:
    """Per-row method label from ``method`` and the recipe name (``variant``)."""
    v = col(df, "variant")
    return pd.Series([method_label(m, r) for m, r in zip(df["method"], v)], index=df.index, dtype=object)


def method_color(method: str, kind: str | None = None) -> str:
    kind = kind or ("tlm" if method.startswith("tlm") else "dm" if method.startswith("dm") else "")
    return TLM_COLOR if kind == "tlm" else DM_COLOR if kind == "dm" else "#2a9d55"


_OPTION_LABELS = {"width": "width {}x", "img_size": "{} px", "patch_size": "patch {}", "variant": "{}",
                  "padding": "padding {}"}


def arch_label(tag: str | None) -> str:
    """'resnet20-width=2' -> 'ResNet-20 (width 2x)'; 'resnet18-variant=same_size' -> 'ResNet-18 (same size)'."""
    if not isinstance(tag, str):
        return "?"
    name, *opts = tag.split("-")
    base = _ARCH_LABELS.get(name, name)
    shown = []
    for o in opts:
        k, _, v = o.partition("=")
        shown.append(_OPTION_LABELS.get(k, k + "={}").format(v.replace("_", " ")))
    return f"{base} ({', '.join(shown)})" if shown else base


def _method_rank(m) -> tuple:
    return (0 if str(m).startswith("tlm") else 1, str(m))


def _order_methods(methods) -> list[str]:
    """TLM before DM, then by name: the papers' order, and stable colours between figures."""
    return sorted(set(methods), key=_method_rank)


def layer_order(df: pd.DataFrame, column: str = "layer") -> list[str]:
    """Layers present in ``df[column]`` in the network's forward order.

    Records hold each layer's position in its network (``layer_index``, ``target_layer_index``);
    records written before they did are put in natural order (``bn2`` before ``bn10``)."""
    present = list(pd.unique(df[column].dropna()))
    index = f"{column}_index"
    if index in df:
        rank = df.dropna(subset=[index]).groupby(column)[index].first().to_dict()
        return sorted(present, key=lambda n: (rank.get(n, float("inf")), natural_key(n)))
    return sorted(present, key=natural_key)


def _values(s: pd.Series) -> list[str]:
    return [str(v) for v in sorted(pd.unique(s.dropna()), key=natural_key)]


def describe(ctx: FigureContext, df: pd.DataFrame | None = None) -> str:
    """One line on what was run: data, architectures, methods, runs per point, studies."""
    df = ctx.ok if df is None else df
    if not len(df):
        return "no successful runs"
    parts = [", ".join(_DATA_LABELS.get(d, d) for d in _values(col(df, "data")))]
    archs = sorted({(arch_label(a), arch_label(b)) for a, b in zip(col(df, "model1.tag"), col(df, "model2.tag"))})
    parts.append("; ".join(a if a == b else f"{a} -> {b}" for a, b in archs))
    labels = sorted(set(zip(df["method"], _labels(df))), key=lambda t: (_method_rank(t[0]), t[1]))
    parts.append(", ".join(lab for _, lab in labels))
    tlm = df[col(df, "kind") == "tlm"]
    if len(tlm) and "method_config.epochs" in tlm:
        eps = _values(tlm["method_config.epochs"].astype("Int64"))
        parts.append(f"TLM {'/'.join(eps)} epoch{'' if eps == ['1'] else 's'}")
    n = df.groupby("condition").size() if "condition" in df else pd.Series([len(df)])
    lo, hi = int(n.min()), int(n.max())
    parts.append(f"{lo} run{'s' if hi > 1 else ''} per point" if lo == hi else f"{lo}-{hi} runs per point")
    failed = len(ctx.runs) - len(ctx.ok)
    if failed:
        parts.append(f"{failed} failed run{'s' if failed > 1 else ''} excluded")
    studies = _values(col(df, "study"))
    if studies:
        parts.append("study " + ", ".join(studies))
    return " · ".join(p for p in parts if p)


def _finish_layer_grid(fig, axes, n_panels: int, ylabel: str) -> None:
    """Label the first column, hide unused panels and draw one legend shared by all panels."""
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat[:n_panels]:
        for hh, ll in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(ll, hh)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncol=2, frameon=False)


def suptitle(fig, ctx: FigureContext, caption: str, df: pd.DataFrame | None = None, width: int = 110) -> None:
    head = textwrap.fill(ctx.title or caption, width)
    body = textwrap.fill(describe(ctx, df), width)
    fig.suptitle(f"{head}\n{body}", fontsize=STYLE["figure.titlesize"], linespacing=1.4)


def save(fig, ctx: FigureContext, stem: str | None = None) -> list[Path]:
    ctx.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ctx.formats:
        p = ctx.out / f"{stem or ctx.name}.{fmt}"
        fig.savefig(p, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


def empty(ctx: FigureContext, caption: str, why: str) -> list[Path]:
    """A figure that says why it has no data, so a make target never leaves a stale image behind."""
    log.warning("%s: %s", ctx.name, why)
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(why, 70), ha="center", va="center")
    fig.suptitle(ctx.title or caption)
    return save(fig, ctx)


def band(ax, x, mean, std, color, label=None, ls="-", marker="o", alpha=0.2):
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    ax.plot(x, mean, ls=ls, marker=marker, ms=3.5, color=color, label=label, lw=1.6)
    ok = np.isfinite(std)
    if ok.any():  # a single run has no spread: no band
        s = np.where(ok, std, 0.0)
        ax.fill_between(x, mean - s, mean + s, color=color, alpha=alpha, lw=0)


def add_curves(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """A ``curve`` label per row: the method and recipe, plus the config values that differ between
    rows of the same method (e.g. 'TLM (epochs=5)' next to 'TLM (epochs=30)'), so different
    configurations are never averaged into one curve. ``exclude``: the figure's own axes."""
    df = df.copy()
    df["curve"] = _labels(df)
    cfg_cols = [c for c in df.columns if c.startswith(("method_config.", "config.")) and c not in exclude]
    for _, g in df.groupby("curve"):
        varying = [c for c in cfg_cols if g[c].astype(str).nunique() > 1]
        if varying:
            for i in g.index:
                extra = ", ".join(f"{c.split('.')[-1]}={df.at[i, c]}" for c in varying)
                df.at[i, "curve"] = f"{df.at[i, 'curve']} ({extra})"
    return df


def curve_colors(df: pd.DataFrame) -> dict[str, str]:
    """Kind colours (TLM blue, DM orange) when a kind has one curve, else a qualitative palette."""
    out, palette = {}, plt.get_cmap("tab10")
    curves = df.drop_duplicates("curve")[["curve", "method"]]
    per_kind = curves["method"].value_counts()
    ordered = sorted(zip(curves["curve"], curves["method"]), key=lambda t: (_method_rank(t[1]), t[0]))
    for i, (v, m) in enumerate(ordered):
        out[v] = method_color(m) if per_kind.get(m, 0) == 1 else matplotlib.colors.to_hex(palette(i % 10))
    return out


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def same_layer(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["layer"] == df["target_layer"]] if len(df) else df


def _rotate_layer_ticks(ax, labels: list[str]) -> None:
    longest = max((len(s) for s in labels), default=0)
    if longest * len(labels) > 40:
        ax.tick_params(axis="x", labelrotation=45)
        for t in ax.get_xticklabels():
            t.set_ha("right")
            t.set_rotation_mode("anchor")


# ================================================================== paper 1
def _has_same_layer(runs):
    ok = runs[runs["status"] == "ok"]
    return bool(len(same_layer(ok)))


@register("p1_fig2", "fig-p1-2", "Paper 1 Fig. 2: stitching per layer, task loss matching vs least squares",
          lambda r: _has_same_layer(r) and r["kind"].nunique() > 0)
def p1_fig2(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig2"].caption
    agg = same_layer(ctx.agg[ctx.agg["n_ok"] > 0])
    # only the plain matchings: low-rank/sparse/penalised variants have figures of their own
    agg = agg[col(agg, "method_config.rank").isna() & (col(agg, "method_config.l1").fillna(0) == 0)
              & (col(agg, "method_config.cka_penalty").fillna(0) == 0)
              & col(agg, "method_config.solver").isin([None, np.nan, "ls"]).fillna(True)]
    if not len(agg):
        return empty(ctx, cap, "no same-layer stitching runs (layer = target_layer) to plot")
    panels = list(agg.groupby(["model1.tag", "data"], sort=True))
    # two rows per network, not twin axes: relative accuracy above, cross-entropy below on a log scale, so the
    # "no transformation" baseline (often 10-100x the methods' values) does not flatten the curves to the floor
    cols = min(len(panels), 3)
    fig, axes = plt.subplots(2, cols, figsize=(5.2 * cols, 6.4), squeeze=False, layout="constrained", sharex="col")
    handles = {}
    # paper 1 reports the mean over samples and classes of -p2 log q (H(p2, q) / C); older records: nats
    ce = "cross_entropy_paper1" if "cross_entropy_paper1.mean" in agg else "cross_entropy"
    ce_label = ("cross-entropy to model 2\n(paper 1's unit: H(p2, q) / C, log scale)" if ce == "cross_entropy_paper1"
                else "cross-entropy to model 2 (nats, log scale)")
    several = bool((agg["n_ok"] > 1).any())
    for i, ((tag, data), g) in enumerate(panels[:cols]):
        ax, ax_ce = axes[0, i], axes[1, i]
        layers = layer_order(g)
        x = np.arange(len(layers))
        g = add_curves(g)
        colors = curve_colors(g)
        for v, gm in sorted(g.groupby("curve"), key=lambda t: (_method_rank(t[1]["method"].iloc[0]), t[0])):
            gm = gm.set_index("layer").reindex(layers)
            band(ax, x, gm["relative_acc.mean"], gm["relative_acc.std"], colors[v], v)
            if f"{ce}.mean" in gm:
                band(ax_ce, x, gm[f"{ce}.mean"], gm[f"{ce}.std"], colors[v], v, marker="s", alpha=0.1)
        base = f"identity_{ce}.mean"
        if base in g and g[base].notna().any():  # paper 1's "no transformation" baseline, per layer
            ident = g.groupby("layer")[base].mean().reindex(layers)
            ax_ce.plot(x, ident, color="0.45", ls=":", marker=".", label="no transformation (baseline)")
        ax_ce.set_yscale("log")
        ax.set_title(f"{arch_label(tag)} · {_DATA_LABELS.get(data, data)}")
        ax.set_ylabel("relative accuracy (stitched / model 2)")
        ax_ce.set_ylabel(ce_label)
        ax_ce.set_xticks(x, layers)
        _rotate_layer_ticks(ax_ce, layers)
        ax_ce.set_xlabel("stitched layer")
        for a in (ax, ax_ce):
            for hh, ll in zip(*a.get_legend_handles_labels()):
                handles.setdefault(ll, hh)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncol=3, frameon=False)
    # bands only where runs were repeated; the subtitle (describe) says how many runs each point has
    suptitle(fig, ctx, f"{cap} (bands: ±1 std over runs)" if several else cap, same_layer(ctx.ok))
    if len(panels) > cols:
        log.warning("p1_fig2: %d networks, drawing the first %d", len(panels), cols)
    return save(fig, ctx)


@register("p1_fig3", "fig-p1-3", "Paper 1 Fig. 3: relative accuracy vs network width (ResNet-20)",
          lambda r: "model1.options.width" in r and r.loc[r["status"] == "ok", "model1.options.width"].nunique() > 1)
def p1_fig3(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig3"].caption
    agg = same_layer(ctx.agg[ctx.agg["n_ok"] > 0])
    if "model1.options.width" not in agg or not len(agg):
        return empty(ctx, cap, "no runs with a width multiplier (model1.options.width)")
    agg = agg[agg["model1.options.width"].notna()].copy()
    agg["width"] = agg["model1.options.width"].astype(float)
    layers = layer_order(agg)
    rows, cols = _grid(len(layers), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows + 0.6), squeeze=False,
                             sharey=True, layout="constrained")
    agg = add_curves(agg, exclude=("config.model1.options.width",))
    colors = curve_colors(agg)
    for ax, L in zip(axes.flat, layers):
        g = agg[agg["layer"] == L]
        for v, gm in g.groupby("curve"):
            gm = gm.sort_values("width")
            band(ax, gm["width"], gm["relative_acc.mean"], gm["relative_acc.std"], colors[v], v)
        ax.set_title(L)
        widths = sorted(agg["width"].unique())
        ax.set_xticks(widths, [f"{w:g}x" for w in widths])
        ax.set_xlabel("width multiplier")
    for ax in axes[:, 0]:
        ax.set_ylabel("relative accuracy")
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    h, lab = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="outside lower center", ncol=len(lab), frameon=False)
    suptitle(fig, ctx, cap + " (bands: ±1 std over runs)", width=90)
    return save(fig, ctx)


def _history_runs(ctx: FigureContext, pred) -> pd.DataFrame:
    if not len(ctx.history):
        return pd.DataFrame()
    runs = ctx.ok[pred(ctx.ok)] if len(ctx.ok) else ctx.ok
    return ctx.history[ctx.history["run"].isin(set(runs["run"]))].merge(
        runs[["run", "layer", "target_layer", "model1.tag", "method", "seed"]
             + [c for c in ("method_config.cka_penalty", "method_config.init") if c in runs]], on="run")


def _history_panels(ctx, h: pd.DataFrame, metrics: list[tuple[str, str]], group: str, group_label, cap: str,
                    individual: int = 2) -> list[Path]:
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), squeeze=False,
                             layout="constrained")
    groups = sorted(h[group].dropna().unique(), key=natural_key) if group in h else [None]
    palette = plt.get_cmap("tab10")
    for gi, gval in enumerate(groups):
        hg = h if gval is None else h[h[group] == gval]
        color = palette(gi % 10) if len(groups) > 1 else TLM_COLOR
        for ax, (m, ylabel) in zip(axes[0], metrics):
            if m not in hg or hg[m].dropna().empty:
                continue
            stats = hg.groupby("step")[m].agg(["mean", "std", "count"]).reset_index()
            band(ax, stats["step"], stats["mean"], stats["std"], color, f"{group_label(gval)}: mean ± 1 std",
                 marker="")
            for ri, (run, hr) in enumerate(list(hg.groupby("run"))[:individual]):
                ax.plot(hr["step"], hr[m], ls=(":", "--")[ri % 2], lw=0.9, color=color, alpha=0.9,
                        label=f"{group_label(gval)}: run {ri + 1}" if ax is axes[0][0] else None)
            ax.set_xlabel("TLM training step")
            ax.set_ylabel(ylabel)
    h0, l0 = axes[0][0].get_legend_handles_labels()
    fig.legend(h0, l0, loc="outside lower center", ncol=min(4, len(l0)), frameon=False)
    suptitle(fig, ctx, cap, ctx.ok[ctx.ok["run"].isin(set(h["run"]))], width=110)
    return save(fig, ctx)


def _tracked(r: pd.DataFrame) -> bool:
    return "n_history" in r and bool((r.loc[r["status"] == "ok", "n_history"] > 0).any())


@register("p1_fig4", "fig-p1-4", "Paper 1 Fig. 4: CKA, R² and cross-entropy over task loss matching",
          lambda r: _tracked(r) and not (col(r, "method_config.cka_penalty").fillna(0) > 0).all())
def p1_fig4(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig4"].caption
    h = _history_runs(ctx, lambda r: (col(r, "kind") == "tlm") & (col(r, "n_history") > 0)
                      & (col(r, "method_config.cka_penalty").fillna(0) == 0))
    if not len(h):
        return empty(ctx, cap, "no tracked TLM runs (method.tlm.track_every > 0) without a CKA penalty")
    init = _values(col(h, "method_config.init"))
    cap = f"{cap} (init: {', '.join(init)}; bold: mean ± 1 std, dotted/dashed: two single runs)"
    return _history_panels(ctx, h, [("cka", "linear CKA vs model 2"), ("r2", "R² vs model 2"),
                                    ("cross_entropy", "CE to model 2 (nats)")],
                           "layer", lambda L: str(L), cap)


@register("p1_fig5", "fig-p1-5", "Paper 1 Fig. 5: TLM with a CKA penalty keeps accuracy while CKA drops",
          lambda r: _tracked(r) and (col(r, "method_config.cka_penalty").fillna(0) > 0).any())
def p1_fig5(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig5"].caption
    h = _history_runs(ctx, lambda r: (col(r, "kind") == "tlm") & (col(r, "n_history") > 0))
    if not len(h) or "method_config.cka_penalty" not in h:
        return empty(ctx, cap, "no tracked TLM runs with method.tlm.cka_penalty > 0")
    init = _values(col(h, "method_config.init"))
    cap = f"{cap} (init: {', '.join(init)}; bands: ±1 std over runs)"
    return _history_panels(ctx, h, [("cka", "linear CKA vs model 2"),
                                    ("stitched_acc", "accuracy (probe images)"),
                                    ("cross_entropy", "CE to model 2 (nats)")],
                           "method_config.cka_penalty", lambda w: f"CKA penalty {float(w):g}", cap, individual=1)


@register("p1_fig6", "fig-p1-6", "Paper 1 Fig. 6: relative accuracy by TLM initialisation",
          lambda r: "method_config.init" in r and r.loc[(r["status"] == "ok") & (r["kind"] == "tlm"),
                                                        "method_config.init"].nunique() > 1)
def p1_fig6(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig6"].caption
    ok = ctx.ok[(col(ctx.ok, "kind") == "tlm") & col(ctx.ok, "method_config.init").notna()]
    if not len(ok):
        return empty(ctx, cap, "no TLM runs with an init (random / identity / dm)")
    layers = layer_order(ok)
    rows, cols = _grid(len(layers), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 2.8 * rows + 0.5), squeeze=False,
                             layout="constrained")
    inits = [i for i in ("random", "identity", "dm", "ls") if i in set(ok["method_config.init"])]
    colors = {"random": "#7a7a7a", "identity": "#2a9d55", "dm": TLM_COLOR, "ls": TLM_COLOR}
    names = {"random": "random", "identity": "identity", "dm": "least squares (DM)", "ls": "least squares (DM)"}
    lo = min(0.0, float(ok["relative_acc"].min()))
    hi = max(1.0, float(ok["relative_acc"].max()))
    bins = np.linspace(lo, hi + 1e-9, 26)
    for ax, L in zip(axes.flat, layers):
        g = ok[ok["layer"] == L]
        for i in inits:
            v = g.loc[g["method_config.init"] == i, "relative_acc"].dropna()
            ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.45, color=colors[i], edgecolor=colors[i], lw=1.2,
                    label=f"init: {names[i]} (n={len(v)})")
        ax.set_title(L)
        ax.set_xlabel("relative accuracy")
        ax.set_ylabel("number of runs")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left")
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    suptitle(fig, ctx, cap, ok, width=90)
    return save(fig, ctx)


def _is_low_rank(df: pd.DataFrame) -> pd.Series:
    return ((col(df, "kind") == "tlm") & col(df, "method_config.rank").notna()) | \
        ((col(df, "kind") == "dm") & (col(df, "method_config.solver") == "rank"))


@register("p1_fig7", "fig-p1-7", "Paper 1 Fig. 7: low-rank stitching, TLM bottleneck vs reduced-rank least squares",
          lambda r: bool(_is_low_rank(r[r["status"] == "ok"]).any()))
def p1_fig7(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig7"].caption
    agg = same_layer(ctx.agg[ctx.agg["n_ok"] > 0])
    low = agg[_is_low_rank(agg)].copy()
    if not len(low):
        return empty(ctx, cap, "no low-rank runs (method.tlm.rank or DM solver=rank)")
    low["rank"] = low["method_config.rank"].astype(float)
    full = agg[~_is_low_rank(agg) & (col(agg, "method_config.l1").fillna(0) == 0)
               & (col(agg, "method_config.cka_penalty").fillna(0) == 0)
               & col(agg, "method_config.solver").isin([None, np.nan, "ls"]).fillna(True)]
    layers = layer_order(low)
    rows, cols = _grid(len(layers), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.6), squeeze=False, sharey=True,
                             layout="constrained")
    ranks = sorted(low["rank"].unique())
    for ax, L in zip(axes.flat, layers):
        g = low[low["layer"] == L]
        for kind, lab in (("tlm", "TLM, rank-k bottleneck"), ("dm", "DM, reduced-rank least squares")):
            gk = g[g["kind"] == kind].groupby("rank", as_index=False)[["relative_acc.mean", "relative_acc.std"]].mean()
            if len(gk):
                band(ax, gk["rank"], gk["relative_acc.mean"], gk["relative_acc.std"],
                     TLM_COLOR if kind == "tlm" else DM_COLOR, lab)
        for kind, lab in (("tlm", "TLM, full rank"), ("dm", "DM, full rank")):
            fk = full[(full["layer"] == L) & (full["kind"] == kind)]
            if len(fk):
                ax.axhline(fk["relative_acc.mean"].iloc[0], ls=":", lw=1.2,
                           color=TLM_COLOR if kind == "tlm" else DM_COLOR, label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [f"{r:g}" for r in ranks])
        ax.minorticks_off()
        ax.set_title(L)
        ax.set_xlabel("rank k of the stitching matrix")
    _finish_layer_grid(fig, axes, len(layers), "relative accuracy")
    suptitle(fig, ctx, cap + " (bands: ±1 std over runs)", ctx.ok[_is_low_rank(ctx.ok)], width=90)
    return save(fig, ctx)


def _is_sparse(df: pd.DataFrame) -> pd.Series:
    """L1 TLM (l1 = 0 is its unregularised baseline) and lasso DM runs, low-rank/penalised ones excluded."""
    return (((col(df, "kind") == "tlm") & col(df, "method_config.l1").notna()
             & col(df, "method_config.rank").isna() & (col(df, "method_config.cka_penalty").fillna(0) == 0))
            | ((col(df, "kind") == "dm") & (col(df, "method_config.solver") == "lasso")))


def _load_stitch(path):
    """The C_in x C_out matrix W of a run's saved stitching layer (full or low rank); None without one."""
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    return load_stitch(path)[0]


def fill_sparsity(df: pd.DataFrame) -> pd.DataFrame:
    """``fit.sparsity`` is recorded for L1/lasso fits only; fill it from the saved stitching layer
    (|w| below the run's zero threshold, 1e-4 by default) for the unregularised baselines."""
    df = df.copy()
    if "fit.sparsity" not in df:
        df["fit.sparsity"] = np.nan
    missing = df["fit.sparsity"].isna() & col(df, "stitch_path").notna()
    for i in df.index[missing]:
        W = _load_stitch(df.at[i, "stitch_path"])
        if W is not None:
            thr = df.at[i, "method_config.zero_threshold"] if "method_config.zero_threshold" in df else None
            thr = 1e-4 if thr is None or pd.isna(thr) else float(thr)
            df.at[i, "fit.sparsity"] = float((W.abs() < thr).float().mean())
    return df


def _regularised(df: pd.DataFrame) -> pd.Series:
    return ((col(df, "kind") == "tlm") & (col(df, "method_config.l1").fillna(0) > 0)) | \
        ((col(df, "kind") == "dm") & (col(df, "method_config.solver") == "lasso"))


@register("p1_fig8", "fig-p1-8", "Paper 1 Fig. 8: sparsity vs relative accuracy, L1 TLM vs lasso DM",
          lambda r: bool(_regularised(r[r["status"] == "ok"]).any()))
def p1_fig8(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig8"].caption
    ok = fill_sparsity(same_layer(ctx.ok[_is_sparse(ctx.ok)]))
    ok = ok[ok["fit.sparsity"].notna() & ok["relative_acc"].notna()]
    if not len(ok):
        return empty(ctx, cap, "no sparse runs with a recorded sparsity (TLM l1, DM solver=lasso)")
    layers = layer_order(ok)
    has_mats = col(ok, "stitch_path").notna().any()
    ncol = 4 if has_mats else 1
    fig = plt.figure(figsize=(3.9 + (6.0 if has_mats else 0), 3.8 * len(layers) + 0.5), layout="constrained")
    sub = fig.subfigures(len(layers), 1, squeeze=False)[:, 0]
    strength = {"tlm": "method_config.l1", "dm": "method_config.alpha"}
    legend_done = False
    for sf, L in zip(sub, layers):
        g = ok[ok["layer"] == L]
        gs = sf.add_gridspec(2, ncol, width_ratios=[2.4] + [1] * (ncol - 1))
        ax = sf.add_subplot(gs[:, 0])
        for kind, lab, c, mk in (("tlm", "TLM + L1", TLM_COLOR, "o"), ("dm", "DM lasso", DM_COLOR, "s")):
            gk = g[g["kind"] == kind]
            if not len(gk):
                continue
            ax.scatter(100 * gk["fit.sparsity"], gk["relative_acc"], s=14, color=c, marker=mk, alpha=0.5, lw=0)
            mean = gk.groupby(gk[strength[kind]].fillna(0))[["fit.sparsity", "relative_acc"]].mean()
            mean = mean.sort_values("fit.sparsity")
            ax.plot(100 * mean["fit.sparsity"], mean["relative_acc"], color=c, marker=mk, ms=4, lw=1.6, label=lab)
        ax.set_xlabel("sparsity of the stitching matrix (% zeros, |w| < 1e-4)")
        ax.set_ylabel("relative accuracy")
        ax.set_xlim(-3, 103)
        ax.set_title(L)
        ax.legend(loc="lower left")
        if has_mats:
            for r, kind in enumerate(("tlm", "dm")):
                gk = g[(g["kind"] == kind) & g["stitch_path"].notna()].sort_values("fit.sparsity")
                picks = gk.iloc[np.unique(np.linspace(0, len(gk) - 1, 3).round().astype(int))] if len(gk) else gk
                for j in range(3):
                    mx = sf.add_subplot(gs[r, 1 + j])
                    mx.grid(False)
                    row = picks.iloc[j] if j < len(picks) else None
                    W = None if row is None else _load_stitch(row["stitch_path"])
                    if W is None:  # fewer examples, or the saved layer is gone
                        mx.axis("off")
                        continue
                    W = W.abs().numpy()
                    mx.imshow(W.T, cmap="Greys", aspect="auto", interpolation="nearest",
                              vmin=0, vmax=float(np.quantile(W, 0.99)) or 1.0)
                    mx.set_xticks([])
                    mx.set_yticks([])
                    mx.set_title(f"{'TLM' if kind == 'tlm' else 'DM'}: {100 * row['fit.sparsity']:.0f}% zero\n"
                                 f"rel. acc {row['relative_acc']:.2f}", fontsize=8)
                    if j == 0:
                        mx.set_ylabel("model 2 channel")
                    if r == 1:
                        mx.set_xlabel("model 1 channel")
        legend_done = True
    if not legend_done:
        plt.close(fig)
        return empty(ctx, cap, "nothing to draw")
    suptitle(fig, ctx, cap + (" (right: |W| of example stitching layers)" if has_mats else ""), ok, width=100)
    return save(fig, ctx)


@register("p1_lmc", "fig-p1-lmc", "Paper 1 Sec. 8: linear mode connectivity of stitching layers",
          lambda r: bool(lmc_files(lmc_dirs(r[r["status"] == "ok"]))))
def p1_lmc(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_lmc"].caption
    dirs = lmc_dirs(ctx.ok)
    table = lmc_table(dirs)
    if len(table):  # pairs whose two runs are among the records read
        runs = set(ctx.ok["run"])
        table = table[table["run0"].isin(runs) & table["run1"].isin(runs)]
    if not len(table):
        studies = sorted({str(s) for s in col(ctx.ok, "study").dropna()})
        exp = next((s for s in studies if s.startswith("p1_lmc_")), "p1_lmc_<scale>")
        where = ", ".join(str(d) for d in dirs) or "<results_dir>"
        return empty(ctx, cap, f"no linear mode connectivity records ({where}/lmc/*.json): the study's LMC step "
                               f"writes them after a save_stitch=true study: python stitch.py +experiment={exp} "
                               f"step=lmc results_dir={dirs[0] if len(dirs) == 1 else '<results_dir>'}")
    layers = layer_order(table)
    rows, cols = _grid(len(layers), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.7 * rows + 0.7), squeeze=False, sharey=True,
                             layout="constrained")
    colors = {"seeds": TLM_COLOR, "methods": "#8e44ad"}
    for ax, L in zip(axes.flat, layers):
        g = table[table["layer"] == L]
        counts = []
        for ptype, gp in g.groupby("pair_type"):
            for label, gl in gp.groupby("pair_label"):
                s = gl.groupby("lambda")["relative_acc"].agg(["mean", "std", "count"]).reset_index()
                band(ax, s["lambda"], s["mean"], s["std"], colors.get(ptype, "#444444"), label, marker=".")
            counts.append(f"{gp['pair'].nunique()} {ptype}")
        # the legend is shared by the panels; how many pairs each curve averages goes in the panel's title
        ax.set_title(f"{L} (pairs: {', '.join(counts)})", fontsize="medium")
        ax.set_xlabel("λ in W(λ) = (1-λ)·W₀ + λ·W₁")
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "", "0.5", "", "1"])
    _finish_layer_grid(fig, axes, len(layers), "relative accuracy")
    used = ctx.ok[ctx.ok["run"].isin(set(table["run0"]) | set(table["run1"]))]
    suptitle(fig, ctx, cap + " (bands: ±1 std over pairs)", used, width=90)
    return save(fig, ctx)


# ================================================================== paper 2
def _is_matrix(r: pd.DataFrame) -> bool:
    ok = r[r["status"] == "ok"]
    return bool(len(ok)) and bool((ok["layer"] != ok["target_layer"]).any())


def _pair_label(row, with_arch: bool = True) -> str:
    a, b = arch_label(row["model1.tag"]), arch_label(row["model2.tag"])
    prefix = f"{a}: " if with_arch else ""
    if row.get("self_stitch"):
        return f"{prefix}intra-network (self-stitching)"
    return f"{prefix}inter-network (two seeds)" if a == b else f"{a} -> {b}"


def heatmap(ax, mat: pd.DataFrame, kind: str, title: str, annotate: bool):
    """A source x target matrix: rows = model-1 (source) layer, columns = model-2 (target) layer."""
    data = mat.to_numpy(float)
    if kind == "auroc":  # 0.5 = indistinguishable from model 2's own activations: white
        im = ax.imshow(data, cmap="coolwarm", norm=TwoSlopeNorm(vcenter=0.5, vmin=0.0, vmax=1.0))
        label = "OOD AUROC (0.5: in-distribution)"
    else:
        vmax = max(1.0, float(np.nanmax(data)) if np.isfinite(data).any() else 1.0)
        im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=vmax)
        label = "relative accuracy"
    ax.set_xticks(range(mat.shape[1]), list(mat.columns), rotation=90)
    ax.set_yticks(range(mat.shape[0]), list(mat.index))
    ax.set_xlabel("target layer (model 2)")
    ax.set_ylabel("source layer (model 1)")
    ax.set_title(title)
    ax.grid(False)
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(label)
    cb.ax.tick_params(labelsize=7)
    if annotate:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                if np.isfinite(v):
                    rgba = im.cmap(im.norm(v))
                    dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
                else:
                    ax.text(j, i, "×", ha="center", va="center", fontsize=7, color="0.4")


def _hatch_untrusted(ax, runs: pd.DataFrame, targets: list[str]) -> set[str]:
    """Hatch the AUROC columns whose detector failed its sanity check (``ood/detector_trusted`` 0); their names."""
    key = "ood/detector_trusted.mean"
    if key not in runs:
        return set()
    bad = set(runs[runs[key] < 1]["target_layer"])
    for j, t in enumerate(targets):
        if t in bad:
            ax.add_patch(plt.Rectangle((j - 0.5, -0.5), 1, len(ax.get_yticks()), fill=False, hatch="///",
                                       edgecolor="0.35", lw=0))
    return bad


def _matrix_figure(ctx: FigureContext, cap: str, methods: list[str] | None = None,
                   pair_filter: Callable[[pd.DataFrame], pd.Series] | None = None) -> list[Path]:
    agg = ctx.agg[ctx.agg["n_runs"] > 0].copy()
    if pair_filter is not None and len(agg):
        agg = agg[pair_filter(agg)]
    if not len(agg):
        return empty(ctx, cap, "no layer x layer runs to draw")
    # the architecture is in the title already when there is one: keep panel titles short
    one_arch = agg[["model1.tag", "model2.tag"]].drop_duplicates().shape[0] == 1
    agg["pair"] = agg.apply(_pair_label, axis=1, with_arch=not one_arch)
    pairs = sorted(agg["pair"].unique(), key=lambda p: (0 if "intra" in p else 1, p))
    # a method run in several variants (DM: paper 2's K = 100 and the full-data solve) is a matrix per variant
    variant = col(agg, "variant").astype(object).where(col(agg, "variant").notna(), "")
    several = agg.assign(v=variant).groupby("method")["v"].nunique()
    agg["method_key"] = [f"{m}:{v}" if several.get(m, 1) > 1 else m for m, v in zip(agg["method"], variant)]
    methods = [k for k in _order_methods(agg["method_key"]) if methods is None or k.split(":")[0] in methods]
    with_auroc = f"{AUROC}.mean" in agg and agg[f"{AUROC}.mean"].notna().any()
    metrics = [("relative_acc", "acc")] + ([(AUROC, "auroc")] if with_auroc else [])
    # Print layout, at most two heatmaps side by side (about a page width): with AUROC each row is
    # one (model pair, method) showing relative accuracy | AUROC; without, a row per model pair
    # showing TLM | DM.
    if with_auroc:
        rows = [[(pair, m, mt) for mt in metrics] for pair in pairs for m in methods]
    else:
        rows = [[(pair, m, metrics[0]) for m in methods] for pair in pairs]
    ncols = max(len(r) for r in rows)
    n_src, n_tgt = agg["layer"].nunique(), agg["target_layer"].nunique()
    n_layers = max(n_src, n_tgt)
    side = min(3.4, max(2.2, 0.3 * n_layers + 0.9))
    annotate = n_layers <= 10
    # a row as tall as its matrices (a 4 x 8 matrix is half as tall as wide), plus titles and tick labels
    row_h = side * n_src / n_layers + 1.3
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * (side + 1.3), len(rows) * row_h + 1.0),
                             squeeze=False, layout="constrained")
    untrusted: set[str] = set()
    for r, row in enumerate(rows):
        for c, (pair, m, (metric, kind)) in enumerate(row):
            ax = axes[r, c]
            gp = agg[agg["pair"] == pair]
            gm = gp[gp["method_key"] == m]
            if not len(gm) or f"{metric}.mean" not in gm:
                ax.axis("off")
                continue
            mat = gm.pivot_table(index="layer", columns="target_layer", values=f"{metric}.mean",
                                 aggfunc="mean", dropna=False).reindex(index=layer_order(gp, "layer"),
                                                                      columns=layer_order(gp, "target_layer"))
            what = "relative accuracy" if kind == "acc" else "OOD AUROC"
            heatmap(ax, mat, kind, f"{_labels(gm).iloc[0]}\n{what} · {pair}", annotate)
            if kind == "auroc":
                untrusted |= _hatch_untrusted(ax, gm, list(mat.columns))
        for c in range(len(row), ncols):
            axes[r, c].axis("off")
    note = "" if with_auroc else " (no OOD AUROC in these records: run with ood.enabled=true to add it)"
    if untrusted:
        note += (f". Hatched: target layers whose detector fails its sanity check ({', '.join(sorted(untrusted))}); "
                 f"their AUROC cannot call a stitch in-distribution.")
    drawn = ctx.ok[ctx.ok["method"].isin({m.split(":")[0] for m in methods})]  # the subtitle names what is drawn
    suptitle(fig, ctx, cap + note, drawn, width=45 * ncols + 10)
    return save(fig, ctx)


@register("p2_fig1", "fig-p2-1", "Paper 2 Fig. 1: intra-network TLM similarity and OOD level",
          lambda r: _is_matrix(r) and bool(col(r, "self_stitch").fillna(False).astype(bool).any()))
def p2_fig1(ctx: FigureContext) -> list[Path]:
    tlm = [m for m in _order_methods(ctx.agg["method"]) if str(m).startswith("tlm")] or None
    paths = _matrix_figure(ctx, FIGURES["p2_fig1"].caption, tlm,
                           lambda a: col(a, "self_stitch").fillna(False).astype(bool))
    return paths + p2_fig1_energies(ctx) + write_claim_numbers(ctx)


def _energy_density(percentiles: list[float], values: list[float], edges: np.ndarray) -> np.ndarray:
    """Density on ``edges`` of a distribution known by its percentiles (the CDF is linear between them)."""
    cdf = np.interp(edges, np.asarray(values, float), np.asarray(percentiles, float) / 100, left=0.0, right=1.0)
    return np.diff(cdf) / np.diff(edges)


def _read_energies(paths) -> list[dict]:
    from ..results import read_record

    out = []
    for p in paths:
        try:
            e = read_record(p).get("ood_energies")
        except (OSError, ValueError):
            continue
        if e:
            out.append(e)
    return out


def p2_fig1_energies(ctx: FigureContext, target: str | None = None) -> list[Path]:
    """Paper 2 Fig. 1(c): the detector's energies for one target layer (default: the first with a trusted
    detector), in-distribution
    (model 2's own activations) and the sanity set above, the stitched activations from every source below.
    Drawn from the records' ``ood_energies`` percentiles."""
    runs = ctx.ok
    if not len(runs) or "record_path" not in runs:
        return []
    runs = runs[col(runs, "self_stitch").fillna(False).astype(bool) & (col(runs, "kind") == "tlm")]
    if not len(runs):
        return []
    if target is None:  # paper 2 shows layer 1; here the first target whose detector passed its sanity check
        trusted = runs[col(runs, "ood/detector_trusted") == 1]
        target = layer_order(trusted if len(trusted) else runs, "target_layer")[0]
    runs = runs[runs["target_layer"] == target]
    sources = [L for L in layer_order(runs, "layer")]
    rows = []
    for L in sources:
        got = _read_energies(runs[runs["layer"] == L]["record_path"])
        if got:
            auroc = float(runs[runs["layer"] == L][AUROC].mean()) if AUROC in runs else float("nan")
            rows.append((L, got[0], auroc))
    if not rows:
        return []
    ref = rows[0][1]
    pct = ref["percentiles"]
    everything = [v for _, e, _ in rows for v in e["stitched"]] + ref["in"] + (ref.get("sanity") or [])
    lo, hi = np.percentile(everything, [0.5, 99.5])
    edges = np.linspace(lo, hi, 80)
    mid = (edges[:-1] + edges[1:]) / 2
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, layout="constrained")
    top.fill_between(mid, _energy_density(pct, ref["in"], edges), color="#2a9d8f", alpha=0.45,
                     label=f"in-distribution: model 2's own {target} (test)")
    if ref.get("sanity"):
        sanity_auroc = runs[col(runs, "ood/sanity_auroc").notna()]["ood/sanity_auroc"] if "ood/sanity_auroc" in runs \
            else pd.Series(dtype=float)
        extra = f", detector AUROC {float(sanity_auroc.iloc[0]):.3f}" if len(sanity_auroc) else ""
        name = _DATA_LABELS.get(ref.get("sanity_data"), ref.get("sanity_data"))
        top.fill_between(mid, _energy_density(pct, ref["sanity"], edges), color="#e76f51", alpha=0.45,
                         label=f"OOD: {name} through model 2{extra}")
    top.set_title(f"target layer {target}: real activations")
    top.set_ylabel("density")
    top.legend(loc="upper right")
    cmap = plt.get_cmap("viridis")
    for i, (L, e, auroc) in enumerate(rows):
        c = cmap(i / max(1, len(rows) - 1))
        bottom.plot(mid, _energy_density(pct, e["stitched"], edges), color=c, lw=1.4,
                    label=f"{L} (AUROC {auroc:.2f})")
    bottom.plot(mid, _energy_density(pct, ref["in"], edges), color="black", lw=1.0, ls="--", label="in-distribution")
    bottom.set_title(f"TLM stitches into {target}, one curve per source layer")
    bottom.set_xlabel("detector energy  E = -logsumexp(logits)  (low: in-distribution)")
    bottom.set_ylabel("density")
    bottom.legend(loc="upper right", ncol=2, fontsize=7)
    suptitle(fig, ctx, "Paper 2 Fig. 1(c): OOD detector energies, real vs TLM-stitched activations", runs, width=80)
    return save(fig, ctx, f"{ctx.name}-energies")


@register("p2_fig2", "fig-p2-2", "Paper 2 Fig. 2: intra- and inter-network similarity and OOD, TLM vs DM",
          _is_matrix)
def p2_fig2(ctx: FigureContext) -> list[Path]:
    return _matrix_figure(ctx, FIGURES["p2_fig2"].caption) + write_claim_numbers(ctx)


def write_claim_numbers(ctx: FigureContext) -> list[Path]:
    """``<figure>-claims.csv``: paper 2's claims as numbers per model pair and method (matrices.claim_numbers)."""
    from ..matrices import claim_numbers
    from ..results import read_record

    if "record_path" not in ctx.ok or not len(ctx.ok):
        return []
    records = []
    for p in ctx.ok["record_path"].dropna():
        try:
            records.append(read_record(p))
        except (OSError, ValueError):
            continue
    rows = claim_numbers(records)
    if not rows:
        return []
    ctx.out.mkdir(parents=True, exist_ok=True)
    path = ctx.out / f"{ctx.name}-claims.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    log.info("wrote %s", path)
    return [path]


@register("p2_fig3", "fig-p2-3", "Paper 2 Fig. 3: self-stitching a same-size ResNet-18, TLM vs DM",
          lambda r: _is_matrix(r) and bool((col(r, "model1.options.variant") == "same_size").any()))
def p2_fig3(ctx: FigureContext) -> list[Path]:
    return _matrix_figure(ctx, FIGURES["p2_fig3"].caption)


@register("p2_fig4", "fig-p2-4", "Paper 2 Fig. 4: self-stitching ViT-Ti, TLM (left) vs DM (right)",
          lambda r: _is_matrix(r) and bool((col(r, "model1.name") == "vit_tiny").any()))
def p2_fig4(ctx: FigureContext) -> list[Path]:
    return _matrix_figure(ctx, FIGURES["p2_fig4"].caption)


def _probing_records(runs: pd.DataFrame) -> list[dict]:
    from ..fileio import read_json

    out = []
    for d in lmc_dirs(runs):  # the results directories the records came from
        for f in sorted(Path(d).glob("probing/*.json")):
            try:
                out.append(read_json(f))
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable probing record %s: %s", f, e)
    return out


def _has_probing(runs: pd.DataFrame) -> bool:
    return bool(_probing_records(runs))


_PROBE_KEYS = {"CKA": "cka", "PWCCA": "pwcca", "OPD": "opd"}


@register("p2_probing", "fig-p2-probing", "Paper 2 / Ding et al.: specificity and sensitivity of the indices",
          _has_probing)
def p2_probing(ctx: FigureContext) -> list[Path]:
    """Bars: each index's Spearman correlation with the probe-accuracy difference, over the layer pairs
    (specificity) and over principal-component deletions (sensitivity, mean and range over layers)."""
    cap = FIGURES["p2_probing"].caption
    recs = _probing_records(ctx.runs)
    if not recs:
        return empty(ctx, cap, "no probing records: run stitch.py ... step=probing after the study")
    fig, axes = plt.subplots(1, len(recs), figsize=(6.2 * len(recs), 3.8), squeeze=False, layout="constrained")
    for ax, rec in zip(axes[0], recs):
        names = [r["index"] for r in rec["specificity"]]
        spec = [np.nan if r["spearman"] is None else r["spearman"] for r in rec["specificity"]]
        sens_mean, sens_lo, sens_hi = [], [], []
        for name in names:
            key = _PROBE_KEYS.get(name) or name.split(" ")[0].split(":")[0]
            vals = [c["correlations"][key]["spearman"] for c in rec["sensitivity"]
                    if key in c["correlations"] and c["correlations"][key]["spearman"] is not None]
            sens_mean.append(np.mean(vals) if vals else np.nan)
            sens_lo.append(np.mean(vals) - np.min(vals) if vals else 0)
            sens_hi.append(np.max(vals) - np.mean(vals) if vals else 0)
        x = np.arange(len(names))
        ax.bar(x - 0.2, spec, 0.4, color=TLM_COLOR, label="specificity (layer pairs)")
        ax.bar(x + 0.2, sens_mean, 0.4, color=DM_COLOR, yerr=[sens_lo, sens_hi], capsize=2,
               label=f"sensitivity (PC deletion, mean over {len(rec['sensitivity'])} layers; bars: range)")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x, [textwrap.fill(n, 14) for n in names], fontsize=7)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Spearman ρ with |Δ probe accuracy|  (higher: better)")
        m1, m2 = rec["model1"]["key"], rec["model2"]["key"]
        ax.set_title(f"{m1} → {m2}" + (" (self)" if rec.get("self_stitch") else ""), fontsize=8)
        ax.legend(loc="lower left", fontsize=7)
    fig.suptitle(textwrap.fill(ctx.title or cap, 100), fontsize=STYLE["figure.titlesize"])
    return save(fig, ctx)
