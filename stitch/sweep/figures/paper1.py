"""Paper 1's figures (Csiszarik et al. 2021): Fig. 2 per-layer relative accuracy and cross-entropy, Fig. 3
width, Fig. 4 similarity over TLM steps, Fig. 5 the CKA penalty, Fig. 6 initialisations, Fig. 7 low rank,
Fig. 8 sparsity, and linear mode connectivity of stitching layers."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ...sorting import natural_key
from .. import columns as C
from ..lmc import lmc_dirs, lmc_files, lmc_table
from .plotting import (DATA_LABELS, DM_COLOR, TLM_COLOR, arch_label, band, curve_colors, empty,
                       finish_layer_grid, grid_shape, method_style, plt, rotate_layer_ticks, save, suptitle)
from .registry import FIGURES, FigureContext, register
from .selection import (add_curves, col, fill_sparsity, has_same_layer, history_runs, is_low_rank,
                        is_regularised, is_sparse, layer_order, method_rank, same_layer, saved_matrix,
                        sorted_values, tracked)

log = logging.getLogger("stitch.sweep.figures")


@register("p1_fig2", "fig-p1-2", "Paper 1 Fig. 2: stitching per layer, task loss matching vs least squares",
          lambda r: has_same_layer(r) and r[C.KIND].nunique() > 0,
          reads=(*C.RUN_IDENTITY, C.RELATIVE_ACC, C.CROSS_ENTROPY_PAPER1, C.identity(C.CROSS_ENTROPY_PAPER1)))
def p1_fig2(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig2"].caption
    agg = same_layer(ctx.agg[ctx.agg[C.N_OK] > 0])
    # only the plain matchings: low-rank/sparse/penalised variants have figures of their own
    agg = agg[col(agg, C.RANK).isna() & (col(agg, C.L1).fillna(0) == 0)
              & (col(agg, C.CKA_PENALTY).fillna(0) == 0)
              & col(agg, C.DM_SOLVER).isin([None, np.nan, "ls"]).fillna(True)]
    if not len(agg):
        return empty(ctx, cap, "no same-layer stitching runs (layer = target_layer) to plot")
    panels = list(agg.groupby([C.MODEL1_TAG, C.DATA], sort=True))
    # two rows per network, not twin axes: relative accuracy above, cross-entropy below on a log scale, so the
    # "no transformation" baseline (often 10-100x the methods' values) does not flatten the curves to the floor
    cols = min(len(panels), 3)
    fig, axes = plt.subplots(2, cols, figsize=(5.2 * cols, 6.4), squeeze=False, layout="constrained", sharex="col")
    handles = {}
    # paper 1 reports the mean over samples and classes of -p2 log q (H(p2, q) / C); older records: nats
    ce = C.CROSS_ENTROPY_PAPER1 if C.mean(C.CROSS_ENTROPY_PAPER1) in agg else C.CROSS_ENTROPY
    ce_label = ("cross-entropy to model 2\n(paper 1's unit: H(p2, q) / C, log scale)" if ce == C.CROSS_ENTROPY_PAPER1
                else "cross-entropy to model 2 (nats, log scale)")
    several = bool((agg[C.N_OK] > 1).any())
    for i, ((tag, data), g) in enumerate(panels[:cols]):
        ax, ax_ce = axes[0, i], axes[1, i]
        layers = layer_order(g)
        x = np.arange(len(layers))
        g = add_curves(g)
        colors = curve_colors(g)
        for v, gm in sorted(g.groupby("curve"), key=lambda t: (method_rank(t[1][C.METHOD].iloc[0]), t[0])):
            gm = gm.set_index(C.LAYER).reindex(layers)
            style = method_style(gm[C.METHOD].dropna().iloc[0] if gm[C.METHOD].notna().any() else "")
            band(ax, x, gm[C.mean(C.RELATIVE_ACC)], gm[C.std(C.RELATIVE_ACC)], colors[v], v, **style)
            if C.mean(ce) in gm:
                band(ax_ce, x, gm[C.mean(ce)], gm[C.std(ce)], colors[v], v, alpha=0.1, **style)
        base = C.mean(C.identity(ce))
        if base in g and g[base].notna().any():  # paper 1's "no transformation" baseline, per layer
            ident = g.groupby(C.LAYER)[base].mean().reindex(layers)
            ax_ce.plot(x, ident, color="0.45", ls=":", marker=".", label="no transformation (baseline)")
        ax_ce.set_yscale("log")
        ax.set_title(f"{arch_label(tag)} · {DATA_LABELS.get(data, data)}")
        ax.set_ylabel("relative accuracy (stitched / model 2)")
        ax_ce.set_ylabel(ce_label)
        ax_ce.set_xticks(x, layers)
        rotate_layer_ticks(ax_ce, layers)
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
          lambda r: C.MODEL1_WIDTH in r and r.loc[r[C.STATUS] == "ok", C.MODEL1_WIDTH].nunique() > 1,
          reads=(*C.RUN_IDENTITY, C.MODEL1_WIDTH, C.RELATIVE_ACC))
def p1_fig3(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig3"].caption
    agg = same_layer(ctx.agg[ctx.agg[C.N_OK] > 0])
    if C.MODEL1_WIDTH not in agg or not len(agg):
        return empty(ctx, cap, "no runs with a width multiplier (model1.options.width)")
    agg = agg[agg[C.MODEL1_WIDTH].notna()].copy()
    agg["width"] = agg[C.MODEL1_WIDTH].astype(float)
    layers = layer_order(agg)
    rows, cols = grid_shape(len(layers), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows + 0.6), squeeze=False,
                             sharey=True, layout="constrained")
    agg = add_curves(agg, exclude=("config." + C.MODEL1_WIDTH,))  # the study's config copy of the x axis
    colors = curve_colors(agg)
    for ax, L in zip(axes.flat, layers):
        g = agg[agg[C.LAYER] == L]
        for v, gm in g.groupby("curve"):
            gm = gm.sort_values("width")
            band(ax, gm["width"], gm[C.mean(C.RELATIVE_ACC)], gm[C.std(C.RELATIVE_ACC)], colors[v], v,
                 **method_style(gm[C.METHOD].iloc[0]))
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
            few = len(stats) <= 12  # a short run has a few tracked steps: markers, or one step draws nothing
            band(ax, stats["step"], stats["mean"], stats["std"], color, f"{group_label(gval)}: mean ± 1 std",
                 marker="o" if few else "")
            for ri, (run, hr) in enumerate(list(hg.groupby(C.RUN))[:individual]):
                ax.plot(hr["step"], hr[m], ls=(":", "--")[ri % 2], lw=0.9, color=color, alpha=0.9,
                        marker="x" if few else "", ms=4,
                        label=f"{group_label(gval)}: run {ri + 1}" if ax is axes[0][0] else None)
            ax.set_xlabel("TLM training step")
            ax.set_ylabel(ylabel)
    h0, l0 = axes[0][0].get_legend_handles_labels()
    fig.legend(h0, l0, loc="outside lower center", ncol=min(4, len(l0)), frameon=False)
    suptitle(fig, ctx, cap, ctx.ok[ctx.ok[C.RUN].isin(set(h[C.RUN]))], width=110)
    return save(fig, ctx)


@register("p1_fig4", "fig-p1-4", "Paper 1 Fig. 4: CKA, R² and cross-entropy over task loss matching",
          lambda r: tracked(r) and not (col(r, C.CKA_PENALTY).fillna(0) > 0).all(),
          reads=(*C.RUN_IDENTITY, C.N_HISTORY, C.TLM_INIT, C.CKA_PENALTY))
def p1_fig4(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig4"].caption
    h = history_runs(ctx.history, ctx.ok, lambda r: (col(r, C.KIND) == "tlm") & (col(r, C.N_HISTORY) > 0)
                      & (col(r, C.CKA_PENALTY).fillna(0) == 0))
    if not len(h):
        return empty(ctx, cap, "no tracked TLM runs (method.tlm.track_every > 0) without a CKA penalty")
    init = sorted_values(col(h, C.TLM_INIT))
    cap = f"{cap} (init: {', '.join(init)}; bold: mean ± 1 std, dotted/dashed: two single runs)"
    return _history_panels(ctx, h, [("cka", "linear CKA vs model 2"), ("r2", "R² vs model 2"),
                                    (C.CROSS_ENTROPY, "CE to model 2 (nats)")],
                           C.LAYER, lambda L: str(L), cap)


@register("p1_fig5", "fig-p1-5", "Paper 1 Fig. 5: TLM with a CKA penalty keeps accuracy while CKA drops",
          lambda r: tracked(r) and (col(r, C.CKA_PENALTY).fillna(0) > 0).any(),
          reads=(*C.RUN_IDENTITY, C.N_HISTORY, C.TLM_INIT, C.CKA_PENALTY))
def p1_fig5(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig5"].caption
    h = history_runs(ctx.history, ctx.ok, lambda r: (col(r, C.KIND) == "tlm") & (col(r, C.N_HISTORY) > 0))
    if not len(h) or C.CKA_PENALTY not in h:
        return empty(ctx, cap, "no tracked TLM runs with method.tlm.cka_penalty > 0")
    init = sorted_values(col(h, C.TLM_INIT))
    cap = f"{cap} (init: {', '.join(init)}; bands: ±1 std over runs)"
    return _history_panels(ctx, h, [("cka", "linear CKA vs model 2"),
                                    (C.STITCHED_ACC, "accuracy (probe images)"),
                                    (C.CROSS_ENTROPY, "CE to model 2 (nats)")],
                           C.CKA_PENALTY, lambda w: f"CKA penalty {float(w):g}", cap, individual=1)


@register("p1_fig6", "fig-p1-6", "Paper 1 Fig. 6: relative accuracy by TLM initialisation",
          lambda r: C.TLM_INIT in r and r.loc[(r[C.STATUS] == "ok") & (r[C.KIND] == "tlm"),
                                                        C.TLM_INIT].nunique() > 1,
          reads=(*C.RUN_IDENTITY, C.TLM_INIT, C.RELATIVE_ACC))
def p1_fig6(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig6"].caption
    ok = ctx.ok[(col(ctx.ok, C.KIND) == "tlm") & col(ctx.ok, C.TLM_INIT).notna()]
    if not len(ok):
        return empty(ctx, cap, "no TLM runs with an init (random / identity / dm)")
    layers = layer_order(ok)
    rows, cols = grid_shape(len(layers), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 2.8 * rows + 0.5), squeeze=False,
                             layout="constrained")
    inits = [i for i in ("random", "identity", "dm", "ls") if i in set(ok[C.TLM_INIT])]
    colors = {"random": "#7a7a7a", "identity": "#2a9d55", "dm": TLM_COLOR, "ls": TLM_COLOR}
    names = {"random": "random", "identity": "identity", "dm": "least squares (DM)", "ls": "least squares (DM)"}
    lo = min(0.0, float(ok[C.RELATIVE_ACC].min()))
    hi = max(1.0, float(ok[C.RELATIVE_ACC].max()))
    bins = np.linspace(lo, hi + 1e-9, 26)
    for ax, L in zip(axes.flat, layers):
        g = ok[ok[C.LAYER] == L]
        for i in inits:
            v = g.loc[g[C.TLM_INIT] == i, C.RELATIVE_ACC].dropna()
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


@register("p1_fig7", "fig-p1-7", "Paper 1 Fig. 7: low-rank stitching, TLM bottleneck vs reduced-rank least squares",
          lambda r: bool(is_low_rank(r[r[C.STATUS] == "ok"]).any()),
          reads=(*C.RUN_IDENTITY, C.RANK, C.RELATIVE_ACC))
def p1_fig7(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig7"].caption
    agg = same_layer(ctx.agg[ctx.agg[C.N_OK] > 0])
    low = agg[is_low_rank(agg)].copy()
    if not len(low):
        return empty(ctx, cap, "no low-rank runs (method.tlm.rank or DM solver=rank)")
    low["rank"] = low[C.RANK].astype(float)
    full = agg[~is_low_rank(agg) & (col(agg, C.L1).fillna(0) == 0)
               & (col(agg, C.CKA_PENALTY).fillna(0) == 0)
               & col(agg, C.DM_SOLVER).isin([None, np.nan, "ls"]).fillna(True)]
    layers = layer_order(low)
    rows, cols = grid_shape(len(layers), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.6), squeeze=False, sharey=True,
                             layout="constrained")
    ranks = sorted(low["rank"].unique())
    for ax, L in zip(axes.flat, layers):
        g = low[low[C.LAYER] == L]
        for kind, lab in (("tlm", "TLM, rank-k bottleneck"), ("dm", "DM, reduced-rank least squares")):
            gk = g[g[C.KIND] == kind].groupby("rank", as_index=False)[[C.mean(C.RELATIVE_ACC), C.std(C.RELATIVE_ACC)]].mean()
            if len(gk):
                band(ax, gk["rank"], gk[C.mean(C.RELATIVE_ACC)], gk[C.std(C.RELATIVE_ACC)],
                     TLM_COLOR if kind == "tlm" else DM_COLOR, lab, **method_style(kind))
        for kind, lab in (("tlm", "TLM, full rank"), ("dm", "DM, full rank")):
            fk = full[(full[C.LAYER] == L) & (full[C.KIND] == kind)]
            if len(fk):
                ax.axhline(fk[C.mean(C.RELATIVE_ACC)].iloc[0], ls=":", lw=1.2,
                           color=TLM_COLOR if kind == "tlm" else DM_COLOR, label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [f"{r:g}" for r in ranks])
        ax.minorticks_off()
        ax.set_title(L)
        ax.set_xlabel("rank k of the stitching matrix")
    finish_layer_grid(fig, axes, len(layers), "relative accuracy")
    suptitle(fig, ctx, cap + " (bands: ±1 std over runs)", ctx.ok[is_low_rank(ctx.ok)], width=90)
    return save(fig, ctx)


@register("p1_fig8", "fig-p1-8", "Paper 1 Fig. 8: sparsity vs relative accuracy, L1 TLM vs lasso DM",
          lambda r: bool(is_regularised(r[r[C.STATUS] == "ok"]).any()),
          reads=(*C.RUN_IDENTITY, C.L1, C.SPARSITY, C.RELATIVE_ACC, C.STITCH_PATH))
def p1_fig8(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_fig8"].caption
    ok = fill_sparsity(same_layer(ctx.ok[is_sparse(ctx.ok)]))
    ok = ok[ok[C.SPARSITY].notna() & ok[C.RELATIVE_ACC].notna()]
    if not len(ok):
        return empty(ctx, cap, "no sparse runs with a recorded sparsity (TLM l1, DM solver=lasso)")
    layers = layer_order(ok)
    has_mats = col(ok, C.STITCH_PATH).notna().any()
    ncol = 4 if has_mats else 1
    fig = plt.figure(figsize=(3.9 + (6.0 if has_mats else 0), 3.8 * len(layers) + 0.5), layout="constrained")
    sub = fig.subfigures(len(layers), 1, squeeze=False)[:, 0]
    strength = {"tlm": C.L1, "dm": C.DM_ALPHA}
    legend_done = False
    for sf, L in zip(sub, layers):
        g = ok[ok[C.LAYER] == L]
        gs = sf.add_gridspec(2, ncol, width_ratios=[2.4] + [1] * (ncol - 1))
        ax = sf.add_subplot(gs[:, 0])
        for kind, lab, c, mk in (("tlm", "TLM + L1", TLM_COLOR, "o"), ("dm", "DM lasso", DM_COLOR, "s")):
            gk = g[g[C.KIND] == kind]
            if not len(gk):
                continue
            ax.scatter(100 * gk[C.SPARSITY], gk[C.RELATIVE_ACC], s=14, color=c, marker=mk, alpha=0.5, lw=0)
            mean = gk.groupby(gk[strength[kind]].fillna(0))[[C.SPARSITY, C.RELATIVE_ACC]].mean()
            mean = mean.sort_values(C.SPARSITY)
            ax.plot(100 * mean[C.SPARSITY], mean[C.RELATIVE_ACC], color=c, marker=mk, ms=4, lw=1.6, label=lab)
        ax.set_xlabel("sparsity of the stitching matrix (% zeros, |w| < 1e-4)")
        ax.set_ylabel("relative accuracy")
        ax.set_xlim(-3, 103)
        ax.set_title(L)
        ax.legend(loc="lower left")
        if has_mats:
            for r, kind in enumerate(("tlm", "dm")):
                gk = g[(g[C.KIND] == kind) & g[C.STITCH_PATH].notna()].sort_values(C.SPARSITY)
                picks = gk.iloc[np.unique(np.linspace(0, len(gk) - 1, 3).round().astype(int))] if len(gk) else gk
                for j in range(3):
                    mx = sf.add_subplot(gs[r, 1 + j])
                    mx.grid(False)
                    row = picks.iloc[j] if j < len(picks) else None
                    W = None if row is None else saved_matrix(row[C.STITCH_PATH])
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
          lambda r: bool(lmc_files(lmc_dirs(r[r[C.STATUS] == "ok"]))),
          reads=(*C.RUN_IDENTITY,))
def p1_lmc(ctx: FigureContext) -> list[Path]:
    cap = FIGURES["p1_lmc"].caption
    dirs = lmc_dirs(ctx.ok)
    table = lmc_table(dirs)
    if len(table):  # pairs whose two runs are among the records read
        runs = set(ctx.ok[C.RUN])
        table = table[table["run0"].isin(runs) & table["run1"].isin(runs)]
    if not len(table):
        studies = sorted({str(s) for s in col(ctx.ok, C.STUDY).dropna()})
        exp = next((s for s in studies if s.startswith("p1_lmc_")), "p1_lmc_<scale>")
        where = ", ".join(str(d) for d in dirs) or "<results_dir>"
        return empty(ctx, cap, f"no linear mode connectivity records ({where}/lmc/*.json): the study's LMC step "
                               f"writes them after a save_stitch=true study: python stitch.py +experiment={exp} "
                               f"step=lmc results_dir={dirs[0] if len(dirs) == 1 else '<results_dir>'}")
    layers = layer_order(table)
    rows, cols = grid_shape(len(layers), 4)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.7 * rows + 0.7), squeeze=False, sharey=True,
                             layout="constrained")
    colors = {"seeds": TLM_COLOR, "methods": "#8e44ad"}
    for ax, L in zip(axes.flat, layers):
        g = table[table[C.LAYER] == L]
        counts = []
        for ptype, gp in g.groupby("pair_type"):
            for label, gl in gp.groupby("pair_label"):
                s = gl.groupby("lambda")[C.RELATIVE_ACC].agg(["mean", "std", "count"]).reset_index()
                # method pairs dashed over seed pairs: equal curves (both flat at 1.0, say) stay visible
                band(ax, s["lambda"], s["mean"], s["std"], colors.get(ptype, "#444444"), label,
                     ls="--" if ptype == "methods" else "-", marker="s" if ptype == "methods" else "o")
            counts.append(f"{gp['pair'].nunique()} {ptype}")
        # the legend is shared by the panels; how many pairs each curve averages goes in the panel's title
        ax.set_title(f"{L} (pairs: {', '.join(counts)})", fontsize="medium")
        ax.set_xlabel("λ in W(λ) = (1-λ)·W₀ + λ·W₁")
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "", "0.5", "", "1"])
    finish_layer_grid(fig, axes, len(layers), "relative accuracy")
    used = ctx.ok[ctx.ok[C.RUN].isin(set(table["run0"]) | set(table["run1"]))]
    suptitle(fig, ctx, cap + " (bands: ±1 std over pairs)", used, width=90)
    return save(fig, ctx)
