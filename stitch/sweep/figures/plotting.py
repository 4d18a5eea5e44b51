"""Drawing helpers shared by the figures: print style, colours, labels, titles, bands, heatmaps, saving."""
from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window (CI, clusters)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from .. import columns as C  # noqa: E402
from .selection import col, method_labels, method_rank, sorted_values  # noqa: E402

if TYPE_CHECKING:
    from .registry import FigureContext

log = logging.getLogger("stitch.sweep.figures")


STYLE = {
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "figure.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "savefig.dpi": 200, "pdf.fonttype": 42,  # editable text in PDFs
}


TLM_COLOR, DM_COLOR = "#1f6fb4", "#e8710a"


_ARCH_LABELS = {"tiny10": "Tiny-10", "resnet20": "ResNet-20", "resnet18": "ResNet-18", "vit_tiny": "ViT-Ti",
                "inception_v1": "Inception V1"}


DATA_LABELS = {"digits": "digits (sklearn)", "cifar10": "CIFAR-10", "svhn": "SVHN", "imagenet": "ImageNet",
                "celeba": "CelebA", "synthetic": "synthetic"}


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


def describe(ctx: FigureContext, df: pd.DataFrame | None = None) -> str:
    """One line on what was run: data, architectures, methods, runs per point, studies."""
    df = ctx.ok if df is None else df
    if not len(df):
        return "no successful runs"
    parts = [", ".join(DATA_LABELS.get(d, d) for d in sorted_values(col(df, C.DATA)))]
    archs = sorted({(arch_label(a), arch_label(b)) for a, b in zip(col(df, C.MODEL1_TAG), col(df, C.MODEL2_TAG))})
    parts.append("; ".join(a if a == b else f"{a} -> {b}" for a, b in archs))
    labels = sorted(set(zip(df[C.METHOD], method_labels(df))), key=lambda t: (method_rank(t[0]), t[1]))
    parts.append(", ".join(lab for _, lab in labels))
    tlm = df[col(df, C.KIND) == "tlm"]
    if len(tlm) and C.TLM_EPOCHS in tlm:
        eps = sorted_values(tlm[C.TLM_EPOCHS].astype("Int64"))
        parts.append(f"TLM {'/'.join(eps)} epoch{'' if eps == ['1'] else 's'}")
    n = df.groupby(C.CONDITION).size() if C.CONDITION in df else pd.Series([len(df)])
    lo, hi = int(n.min()), int(n.max())
    parts.append(f"{lo} run{'s' if hi > 1 else ''} per point" if lo == hi else f"{lo}-{hi} runs per point")
    failed = len(ctx.runs) - len(ctx.ok)
    if failed:
        parts.append(f"{failed} failed run{'s' if failed > 1 else ''} excluded")
    studies = sorted_values(col(df, C.STUDY))
    if studies:
        parts.append("study " + ", ".join(studies))
    return " · ".join(p for p in parts if p)


def finish_layer_grid(fig, axes, n_panels: int, ylabel: str) -> None:
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
    if ctx.keep is not None:
        ctx.keep[stem or ctx.name] = fig
    else:
        plt.close(fig)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


PLACEHOLDER = "no-data placeholder"  # the label of a figure that only says why it has no data


def empty(ctx: FigureContext, caption: str, why: str) -> list[Path]:
    """A figure that says why it has no data, so a make target never leaves a stale image behind."""
    log.warning("%s: %s", ctx.name, why)
    fig, ax = plt.subplots(figsize=(6, 2))
    fig.set_label(PLACEHOLDER)
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(why, 70), ha="center", va="center")
    fig.suptitle(ctx.title or caption)
    return save(fig, ctx)


def method_style(method) -> dict:
    """Line style and marker per method kind: TLM solid with dots, DM dashed with squares, so a DM curve drawn
    exactly on top of a TLM curve (both 1.0, say) still lets the TLM curve show between its dashes."""
    for prefix, style in (("tlm", {"ls": "-", "marker": "o"}), ("dm", {"ls": "--", "marker": "s"})):
        if str(method).startswith(prefix):
            return style
    return {"ls": ":", "marker": "^"}


def band(ax, x, mean, std, color, label=None, ls="-", marker="o", alpha=0.2):
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    ax.plot(x, mean, ls=ls, marker=marker, ms=3.5, color=color, label=label, lw=1.6)
    ok = np.isfinite(std)
    if ok.any():  # a single run has no spread: no band
        s = np.where(ok, std, 0.0)
        ax.fill_between(x, mean - s, mean + s, color=color, alpha=alpha, lw=0)


def curve_colors(df: pd.DataFrame) -> dict[str, str]:
    """Kind colours (TLM blue, DM orange) when a kind has one curve, else a qualitative palette."""
    out, palette = {}, plt.get_cmap("tab10")
    curves = df.drop_duplicates("curve")[["curve", C.METHOD]]
    per_kind = curves[C.METHOD].value_counts()
    ordered = sorted(zip(curves["curve"], curves[C.METHOD]), key=lambda t: (method_rank(t[1]), t[0]))
    for i, (v, m) in enumerate(ordered):
        out[v] = method_color(m) if per_kind.get(m, 0) == 1 else matplotlib.colors.to_hex(palette(i % 10))
    return out


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def rotate_layer_ticks(ax, labels: list[str]) -> None:
    longest = max((len(s) for s in labels), default=0)
    if longest * len(labels) > 40:
        ax.tick_params(axis="x", labelrotation=45)
        for t in ax.get_xticklabels():
            t.set_ha("right")
            t.set_rotation_mode("anchor")


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


def hatch_untrusted(ax, runs: pd.DataFrame, targets: list[str]) -> set[str]:
    """Hatch the AUROC columns whose detector failed its sanity check (``ood/detector_trusted`` 0); their names."""
    key = C.mean(C.OOD_TRUSTED)
    if key not in runs:
        return set()
    bad = set(runs[runs[key] < 1][C.TARGET_LAYER])
    for j, t in enumerate(targets):
        if t in bad:
            ax.add_patch(plt.Rectangle((j - 0.5, -0.5), 1, len(ax.get_yticks()), fill=False, hatch="///",
                                       edgecolor="0.35", lw=0))
    return bad


def energy_density(percentiles: list[float], values: list[float], edges: np.ndarray) -> np.ndarray:
    """Density on ``edges`` of a distribution known by its percentiles (the CDF is linear between them)."""
    cdf = np.interp(edges, np.asarray(values, float), np.asarray(percentiles, float) / 100, left=0.0, right=1.0)
    return np.diff(cdf) / np.diff(edges)
