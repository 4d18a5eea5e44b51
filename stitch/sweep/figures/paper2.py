"""Paper 2's figures (Balogh & Jelasity 2025): Fig. 1-4 layer x layer matrices of relative accuracy and OOD
AUROC, Fig. 1(c) the detector's energies, and the probing comparison of the indices (Ding et al.)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ...matrices import claim_numbers, layer_order, pivot
from .. import columns as C
from .plotting import (DATA_LABELS, DM_COLOR, STYLE, TLM_COLOR, arch_label, empty, energy_density,
                       hatch_untrusted, heatmap, log, plt, save, suptitle)
from .registry import FIGURES, FigureContext, register
from .selection import (col, has_probing, is_matrix, method_labels, order_methods, probing_records, read_energies,
                        read_records)


def _pair_label(row, with_arch: bool = True) -> str:
    a, b = arch_label(row[C.MODEL1_TAG]), arch_label(row[C.MODEL2_TAG])
    prefix = f"{a}: " if with_arch else ""
    if row.get(C.SELF_STITCH):
        return f"{prefix}intra-network (self-stitching)"
    return f"{prefix}inter-network (two seeds)" if a == b else f"{a} -> {b}"


# what _matrix_figure reads (the AUROC and the detectors' trust are drawn when present)
_MATRIX_READS = (*C.RUN_IDENTITY, C.SELF_STITCH, C.TARGET_LAYER_INDEX, C.RELATIVE_ACC)


def _matrix_figure(ctx: FigureContext, cap: str, methods: list[str] | None = None,
                   pair_filter: Callable[[pd.DataFrame], pd.Series] | None = None) -> list[Path]:
    agg = ctx.agg[ctx.agg[C.N_RUNS] > 0].copy()
    if pair_filter is not None and len(agg):
        agg = agg[pair_filter(agg)]
    if not len(agg):
        return empty(ctx, cap, "no layer x layer runs to draw")
    # the architecture is in the title already when there is one: keep panel titles short
    one_arch = agg[[C.MODEL1_TAG, C.MODEL2_TAG]].drop_duplicates().shape[0] == 1
    agg["pair"] = agg.apply(_pair_label, axis=1, with_arch=not one_arch)
    pairs = sorted(agg["pair"].unique(), key=lambda p: (0 if "intra" in p else 1, p))
    # a method run in several variants (DM: paper 2's K = 100 and the full-data solve, or two sample counts
    # of one recipe) is a matrix per variant: keyed by the label, which names the recipe and the count
    label = method_labels(agg)
    several = agg.assign(v=label).groupby(C.METHOD)["v"].nunique()
    agg["method_key"] = [f"{m}:{v}" if several.get(m, 1) > 1 else m for m, v in zip(agg[C.METHOD], label)]
    methods = [k for k in order_methods(agg["method_key"]) if methods is None or k.split(":")[0] in methods]
    with_auroc = C.mean(C.OOD_AUROC) in agg and agg[C.mean(C.OOD_AUROC)].notna().any()
    metrics = [(C.RELATIVE_ACC, "acc")] + ([(C.OOD_AUROC, "auroc")] if with_auroc else [])
    # Print layout, at most two heatmaps side by side (about a page width): with AUROC each row is
    # one (model pair, method) showing relative accuracy | AUROC; without, a row per model pair
    # showing its methods (TLM | DM where both ran). Only what ran: a pair studied with one method
    # (ResNet-20 with DM alone on a CPU) gets no empty panels.
    ran = set(zip(agg["pair"], agg["method_key"]))
    if with_auroc:
        rows = [[(pair, m, mt) for mt in metrics] for pair in pairs for m in methods if (pair, m) in ran]
    else:
        rows = [[(pair, m, metrics[0]) for m in methods if (pair, m) in ran] for pair in pairs]
    rows = [r for r in rows if r]
    if not rows:
        return empty(ctx, cap, f"no runs of {', '.join(methods) or 'the drawn methods'} to draw")
    ncols = max(len(r) for r in rows)
    n_src, n_tgt = agg[C.LAYER].nunique(), agg[C.TARGET_LAYER].nunique()
    n_layers = max(n_src, n_tgt)
    side = min(3.4, max(2.2, 0.3 * n_layers + 0.9))
    annotate = n_layers <= 10
    # a row as tall as its matrices (a 4 x 8 matrix is half as tall as wide), plus titles and tick labels
    row_h = side * n_src / n_layers + 1.3
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * (side + 1.3), len(rows) * row_h + 1.0),
                             squeeze=False, layout="constrained")
    untrusted: dict[str, set[str]] = {}  # per model pair: each network has detectors of its own
    for r, row in enumerate(rows):
        for c, (pair, m, (metric, kind)) in enumerate(row):
            ax = axes[r, c]
            gp = agg[agg["pair"] == pair]
            gm = gp[gp["method_key"] == m]
            if not len(gm) or C.mean(metric) not in gm:
                ax.axis("off")
                continue
            # the same pivot as matrices.metric_matrix, in the networks' forward order of the pair's layers
            mat = pivot(gm, C.mean(metric), sources=layer_order(gp, C.LAYER),
                        targets=layer_order(gp, C.TARGET_LAYER))
            what = "relative accuracy" if kind == "acc" else "OOD AUROC"
            heatmap(ax, mat, kind, f"{method_labels(gm).iloc[0]}\n{what} · {pair}", annotate)
            if kind == "auroc":
                untrusted.setdefault(pair, set()).update(hatch_untrusted(ax, gm, list(mat.columns)))
        for c in range(len(row), ncols):
            axes[r, c].axis("off")
    note = "" if with_auroc else " (no OOD AUROC in these records: run with ood.enabled=true to add it)"
    listed = "; ".join(f"{pair}: {', '.join(L for L in layer_order(agg[agg['pair'] == pair], C.TARGET_LAYER) if L in untrusted[pair])}"
                       for pair in pairs if untrusted.get(pair))
    if listed:
        note += (f". Hatched: target layers whose detector fails its sanity check ({listed}); "
                 f"their AUROC cannot call a stitch in-distribution.")
    drawn = ctx.ok[ctx.ok[C.METHOD].isin({m.split(":")[0] for m in methods})]  # the subtitle names what is drawn
    suptitle(fig, ctx, cap + note, drawn, width=45 * ncols + 10)
    return save(fig, ctx)


@register("p2_fig1", "fig-p2-1", "Paper 2 Fig. 1: intra-network TLM similarity and OOD level",
          lambda r: is_matrix(r) and bool(col(r, C.SELF_STITCH).fillna(False).astype(bool).any()),
          reads=_MATRIX_READS)
def p2_fig1(ctx: FigureContext) -> list[Path]:
    tlm = [m for m in order_methods(ctx.agg[C.METHOD]) if str(m).startswith("tlm")] or None
    paths = _matrix_figure(ctx, FIGURES["p2_fig1"].caption, tlm,
                           lambda a: col(a, C.SELF_STITCH).fillna(False).astype(bool))
    return paths + p2_fig1_energies(ctx) + write_claim_numbers(ctx)


def p2_fig1_energies(ctx: FigureContext, target: str | None = None) -> list[Path]:
    """Paper 2 Fig. 1(c): the detector's energies for one target layer (default: the first with a trusted
    detector), in-distribution
    (model 2's own activations) and the sanity set above, the stitched activations from every source below.
    Drawn from the records' ``ood_energies`` percentiles."""
    runs = ctx.ok
    if not len(runs) or C.RECORD_PATH not in runs:
        return []
    runs = runs[col(runs, C.SELF_STITCH).fillna(False).astype(bool) & (col(runs, C.KIND) == "tlm")]
    if not len(runs):
        return []
    if target is None:  # paper 2 shows layer 1; here the first target whose detector passed its sanity check
        trusted = runs[col(runs, C.OOD_TRUSTED) == 1]
        target = layer_order(trusted if len(trusted) else runs, C.TARGET_LAYER)[0]
    runs = runs[runs[C.TARGET_LAYER] == target]
    sources = [L for L in layer_order(runs, C.LAYER)]
    rows = []
    for L in sources:
        got = read_energies(runs[runs[C.LAYER] == L][C.RECORD_PATH])
        if got:
            auroc = float(runs[runs[C.LAYER] == L][C.OOD_AUROC].mean()) if C.OOD_AUROC in runs else float("nan")
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
    top.fill_between(mid, energy_density(pct, ref["in"], edges), color="#2a9d8f", alpha=0.45,
                     label=f"in-distribution: model 2's own {target} (test)")
    if ref.get("sanity"):
        sanity_auroc = runs[col(runs, C.OOD_SANITY_AUROC).notna()][C.OOD_SANITY_AUROC] if C.OOD_SANITY_AUROC in runs \
            else pd.Series(dtype=float)
        extra = f", detector AUROC {float(sanity_auroc.iloc[0]):.3f}" if len(sanity_auroc) else ""
        name = DATA_LABELS.get(ref.get("sanity_data"), ref.get("sanity_data"))
        top.fill_between(mid, energy_density(pct, ref["sanity"], edges), color="#e76f51", alpha=0.45,
                         label=f"OOD: {name} through model 2{extra}")
    top.set_title(f"target layer {target}: real activations")
    top.set_ylabel("density")
    top.legend(loc="upper right")
    cmap = plt.get_cmap("viridis")
    for i, (L, e, auroc) in enumerate(rows):
        c = cmap(i / max(1, len(rows) - 1))
        bottom.plot(mid, energy_density(pct, e["stitched"], edges), color=c, lw=1.4,
                    label=f"{L} (AUROC {auroc:.2f})")
    bottom.plot(mid, energy_density(pct, ref["in"], edges), color="black", lw=1.0, ls="--", label="in-distribution")
    bottom.set_title(f"TLM stitches into {target}, one curve per source layer")
    bottom.set_xlabel("detector energy  E = -logsumexp(logits)  (low: in-distribution)")
    bottom.set_ylabel("density")
    bottom.legend(loc="upper right", ncol=2, fontsize=7)
    suptitle(fig, ctx, "Paper 2 Fig. 1(c): OOD detector energies, real vs TLM-stitched activations", runs, width=80)
    return save(fig, ctx, f"{ctx.name}-energies")


@register("p2_fig2", "fig-p2-2", "Paper 2 Fig. 2: intra- and inter-network similarity and OOD, TLM vs DM",
          is_matrix, reads=_MATRIX_READS)
def p2_fig2(ctx: FigureContext) -> list[Path]:
    return _matrix_figure(ctx, FIGURES["p2_fig2"].caption) + write_claim_numbers(ctx)


def write_claim_numbers(ctx: FigureContext) -> list[Path]:
    """``<figure>-claims.csv``: paper 2's claims as numbers per model pair and method (matrices.claim_numbers)."""
    if C.RECORD_PATH not in ctx.ok or not len(ctx.ok):
        return []
    rows = claim_numbers(read_records(ctx.ok[C.RECORD_PATH].dropna()))
    if not rows:
        return []
    ctx.out.mkdir(parents=True, exist_ok=True)
    path = ctx.out / f"{ctx.name}-claims.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    log.info("wrote %s", path)
    return [path]


@register("p2_fig3", "fig-p2-3", "Paper 2 Fig. 3: self-stitching a same-size ResNet-18, TLM vs DM",
          lambda r: is_matrix(r) and bool((col(r, C.MODEL1_VARIANT) == "same_size").any()),
          reads=(*_MATRIX_READS, C.MODEL1_VARIANT))
def p2_fig3(ctx: FigureContext) -> list[Path]:
    return _matrix_figure(ctx, FIGURES["p2_fig3"].caption)


@register("p2_fig4", "fig-p2-4", "Paper 2 Fig. 4: self-stitching ViT-Ti, TLM (left) vs DM (right)",
          lambda r: is_matrix(r) and bool((col(r, C.MODEL1_NAME) == "vit_tiny").any()),
          reads=_MATRIX_READS)
def p2_fig4(ctx: FigureContext) -> list[Path]:
    return _matrix_figure(ctx, FIGURES["p2_fig4"].caption)


_PROBE_KEYS = {"CKA": "cka", "PWCCA": "pwcca", "OPD": "opd"}


@register("p2_probing", "fig-p2-probing", "Paper 2 / Ding et al.: specificity and sensitivity of the indices",
          has_probing, reads=(C.RECORD_PATH,))
def p2_probing(ctx: FigureContext) -> list[Path]:
    """Bars: each index's Spearman correlation with the probe-accuracy difference, over the layer pairs
    (specificity) and over principal-component deletions (sensitivity, mean and range over layers)."""
    cap = FIGURES["p2_probing"].caption
    recs = probing_records(ctx.runs)
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
        # the records name the stitching indices by method ("dm relative accuracy"): as the other figures do
        shown = [("DM" + n[2:]) if n.startswith("dm ") else ("TLM" + n[3:]) if n.startswith("tlm ") else n
                 for n in names]
        ax.set_xticks(x, [textwrap.fill(n, 14) for n in shown], fontsize=7)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Spearman ρ with |Δ probe accuracy|  (higher: better)")
        m1, m2 = rec["model1"]["key"], rec["model2"]["key"]
        ax.set_title(f"{m1} → {m2}" + (" (self)" if rec.get("self_stitch") else ""), fontsize=8)
        ax.legend(loc="lower left", fontsize=7)
    fig.suptitle(f"{textwrap.fill(ctx.title or cap, 100)}\n{textwrap.fill(probing_run(recs), 100)}",
                 fontsize=STYLE["figure.titlesize"], linespacing=1.4)
    return save(fig, ctx)


def probing_run(recs: list[dict]) -> str:
    """The probing figure's subtitle: what was run (data, probes' training images, TLM epochs, deletion levels)."""
    parts = []
    for rec in recs:
        st = rec.get("settings") or {}
        train = st.get("train_limit")
        bits = [DATA_LABELS.get(rec.get("data"), rec.get("data")) or "",
                f"probes on {train:,} training images" if train else "probes on all training images",
                ("no TLM" if not st["tlm_epochs"] else f"TLM {st['tlm_epochs']} epoch{'s' if st['tlm_epochs'] != 1 else ''}")
                if "tlm_epochs" in st else "",
                f"{st['levels']} PC-deletion levels" if "levels" in st else "",
                f"{len(rec.get('specificity') or [])} measures",
                f"from {rec['records']} stitching records" if rec.get("records") else "",
                f"study {rec['study']}" if rec.get("study") else ""]
        parts.append(" · ".join(b for b in bits if b))
    return "; ".join(dict.fromkeys(parts))
