"""Statistical probing tests of similarity indices (Ding, Denain & Steinhardt 2021), as used
by paper 2 (Balogh & Jelasity 2025) to compare TLM, DM and structural indices.

Ding et al. ground a (dis)similarity index in *function*: two representations should
be rated far apart exactly when they differ in what can be read out of them, here
the accuracy of a linear probe for the task labels.

* **Specificity**: over many pairs of representations (e.g. every pair of layers),
  rank-correlate the dissimilarity d(X, Y) with the functional difference
  |acc(X) - acc(Y)| (Spearman and Kendall, :mod:`scipy.stats`). A good index gives
  a high positive correlation.
* **Sensitivity**: perturb a representation in a controlled way that gradually
  destroys function -- delete principal components, i.e. replace the source by its
  low-rank approximations -- and check that the dissimilarity to the original grows
  as the probe accuracy drops (the same rank correlation, over the deletion levels).
  Ding et al. delete components starting from the *lowest*-variance ones (the rank-k
  approximation keeps the top k); ``order="highest"`` deletes the top ones instead.

Sign convention used throughout: every correlation is computed between a
*dissimilarity* (``-similarity`` for similarity indices such as CKA or relative
accuracy; the value itself for distances such as OPD) and ``|delta accuracy|``, so
**positive = the index behaves as it should**.

Probes are multinomial logistic regressions (scikit-learn) on standardised, pooled
activations (conv: spatial mean, N x C; tokens: CLS or mean token).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from .activations import from_rows, pool_activations, to_rows
from .errors import ConfigError

SimilarityFn = Callable[[torch.Tensor, torch.Tensor], float]


# -------------------------------------------------------------------- activations
@torch.no_grad()
def collect_activations(model, datamodule, layers: Sequence[str], split: str = "train", limit: int | None = None,
                        device: torch.device | str = "cpu", batch_size: int = 256, pooled: bool = True,
                        tokens: str = "cls") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Activations of ``model`` at each of ``layers`` on a split (CPU tensors) and the labels.

    One forward per batch serves every layer (``forward_to`` the deepest, cutting as it goes).
    """
    model.eval()
    asked = {model.check_layer(L): L for L in layers}  # results keyed by the names asked for (aliases too)
    order = [L for L in model.layers if L in asked]
    acts: dict[str, list[torch.Tensor]] = {L: [] for L in order}
    ys = []
    for x, y in datamodule.batches(split, batch_size, device=device, limit=limit):
        h, prev = x, None
        for L in order:  # continue from the previous cut: forward_from-style chaining on the stages
            h = model.forward_between(h, prev, L)
            acts[L].append((pool_activations(h, tokens) if pooled else h.float()).cpu())
            prev = L
        ys.append(y.cpu())
    return {asked[L]: torch.cat(v) for L, v in acts.items()}, torch.cat(ys)


# ------------------------------------------------------------------------ probes
def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _np2d(x) -> np.ndarray:
    a = _np(x).astype(np.float64, copy=False)
    return a.reshape(len(a), -1)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *, C: float = 1.0, max_iter: int = 500,
                          seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe trained on (standardised) features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte = _np2d(train_x), _np2d(test_x)
    ytr, yte = np.asarray(_np(train_y)).ravel(), np.asarray(_np(test_y)).ravel()
    if len(np.unique(ytr)) < 2:
        raise ValueError("a probe needs at least two classes in its training labels")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # a probe that stops at max_iter is still a valid (weaker) probe
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    return float((clf.predict(Xte) == yte).mean())


def probe_layers(model, datamodule, layers: Sequence[str] | None = None, *, train_limit: int | None = None,
                 test_limit: int | None = None, device: torch.device | str = "cpu", tokens: str = "cls",
                 C: float = 1.0, max_iter: int = 500) -> dict[str, float]:
    """Linear-probe test accuracy of every layer of ``model`` (pooled activations)."""
    layers = list(layers) if layers else model.select_layers("all")
    tr, ytr = collect_activations(model, datamodule, layers, "train", train_limit, device, tokens=tokens)
    te, yte = collect_activations(model, datamodule, layers, "test", test_limit, device, tokens=tokens)
    return {L: linear_probe_accuracy(tr[L], ytr, te[L], yte, C=C, max_iter=max_iter) for L in layers}


# ------------------------------------------------------------- rank correlations
def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float | int | None]:
    """Spearman's rho and Kendall's tau (with p-values) of paired values, NaN pairs dropped.

    Undefined cases (fewer than 3 pairs, a constant side) give ``None`` values
    rather than NaN.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation needs paired values, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out: dict[str, float | int | None] = {"n": int(len(a)), "spearman": None, "spearman_p": None,
                                          "kendall": None, "kendall_p": None}
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    rho, p_rho = sps.spearmanr(a, b)
    tau, p_tau = sps.kendalltau(a, b)
    out.update(spearman=float(rho), spearman_p=float(p_rho), kendall=float(tau), kendall_p=float(p_tau))
    return out


def _dissimilarity(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    return -values if higher_is_similar else values


def specificity_test(similarity: pd.DataFrame | Mapping[tuple[str, str], float],
                     probe_acc: Mapping[str, float], probe_acc_target: Mapping[str, float] | None = None, *,
                     higher_is_similar: bool = True, include_diagonal: bool = False,
                     by_reference: bool = False) -> dict:
    """Ding et al.'s specificity: rank correlation of dissimilarity with |probe accuracy difference|.

    ``similarity`` is a source x target matrix (DataFrame as from
    :mod:`stitch.matrices`, or ``{(source, target): value}``); ``probe_acc`` gives
    the probe accuracy of each source layer, ``probe_acc_target`` of each target
    layer (default: the same mapping, as for self-stitching). Pairs with a missing
    value are skipped; the diagonal (source == target) is left out unless
    ``include_diagonal``.

    Returns ``{"pairs": DataFrame(source, target, similarity, acc_diff), "spearman",
    "kendall", ...}`` (see :func:`rank_correlation`); with ``by_reference=True`` the
    correlation is also computed per target layer (the reference) and averaged,
    under ``"per_reference"`` and ``"mean_spearman"``/``"mean_kendall"``.
    """
    acc_t = probe_acc_target if probe_acc_target is not None else probe_acc
    if isinstance(similarity, pd.DataFrame):
        items = [((s, t), similarity.at[s, t]) for s in similarity.index for t in similarity.columns]
    else:
        items = list(similarity.items())
    rows = []
    for (s, t), v in items:
        if v is None or (isinstance(v, float) and math.isnan(v)) or (s == t and not include_diagonal):
            continue
        if s not in probe_acc or t not in acc_t:
            raise ValueError(f"no probe accuracy for layer {s if s not in probe_acc else t!r}")
        rows.append({"source": s, "target": t, "similarity": float(v),
                     "acc_diff": abs(float(probe_acc[s]) - float(acc_t[t]))})
    pairs = pd.DataFrame(rows, columns=["source", "target", "similarity", "acc_diff"])
    d = _dissimilarity(pairs["similarity"].to_numpy(float), higher_is_similar)
    out: dict = {"pairs": pairs, **rank_correlation(d, pairs["acc_diff"].to_numpy(float))}
    if by_reference:
        per = {}
        for t, grp in pairs.groupby("target", sort=False):
            per[t] = rank_correlation(_dissimilarity(grp["similarity"].to_numpy(float), higher_is_similar),
                                      grp["acc_diff"].to_numpy(float))
        out["per_reference"] = per
        for k in ("spearman", "kendall"):
            vals = [r[k] for r in per.values() if r[k] is not None]
            out[f"mean_{k}"] = float(np.mean(vals)) if vals else None
    return out


# ------------------------------------------------------------ component deletion
def pca_basis(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of the channel/feature axis: (mean, components as columns by decreasing variance, variances).

    Rows are samples times positions (conv) or tokens, as a 1x1 stitching layer sees them.
    """
    r = to_rows(h).double()
    mean = r.mean(0)
    _, s, vh = torch.linalg.svd(r - mean, full_matrices=False)
    return mean, vh.T, s.square() / max(1, len(r) - 1)


def delete_principal_components(h: torch.Tensor, k: int, order: str = "lowest",
                                basis: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                                ) -> torch.Tensor:
    """Project out ``k`` principal components (about the mean) of the channel axis.

    ``order="lowest"``: delete the k lowest-variance components (the result is the
    rank-(C-k) PCA approximation; Ding et al.); ``"highest"``: delete the top k.
    ``basis`` (from :func:`pca_basis`, e.g. fitted on the training split) is reused
    so train and test are transformed alike. Same shape and dtype as ``h``.
    """
    if order not in ("lowest", "highest"):
        raise ConfigError(f"principal-component deletion order must be lowest or highest, got {order!r}")
    mean, comps, _ = basis if basis is not None else pca_basis(h)
    c = comps.shape[1]
    if not 0 <= k <= c:
        raise ValueError(f"can delete 0..{c} principal components, got {k}")
    if k == 0:
        return h.clone()
    drop = comps[:, c - k:] if order == "lowest" else comps[:, :k]
    r = to_rows(h).double() - mean
    r = r - (r @ drop) @ drop.T
    return from_rows((r + mean).to(h.dtype), h)


def index_similarity(name: str, samples: int | None = 2000, mode: str = "rows", seed: int = 0) -> SimilarityFn:
    """A similarity function ``f(X, Y)`` from :mod:`stitch.similarity` on two activations of the same images.

    ``mode`` as in the study (``rows``: one row per position when the layouts match,
    else pooled). At most ``samples`` rows (random, seeded) keep the CCA family and
    CKA cheap.
    """
    from . import similarity
    from .evaluation import representation_pair

    index = similarity.get(name)

    def fn(x: torch.Tensor, y: torch.Tensor) -> float:
        X, Y = representation_pair(x.float(), y.float(), mode)
        if samples is not None and len(X) > samples:
            idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:samples]
            X, Y = X[idx], Y[idx]
        return float(index(X, Y))

    fn.__name__ = name
    return fn


def direct_matching_accuracy(src_train: torch.Tensor, tgt_train: torch.Tensor, src_test: torch.Tensor,
                             y_test: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Accuracy of a DM stitch: least squares (with bias) from source to target rows on the
    training activations, applied per position to the test source, then ``head`` (model 2's
    task map from the target layer). Source and target must share the spatial layout."""
    from .matching import direct

    if src_train.shape[2:] != tgt_train.shape[2:]:
        raise ValueError(f"direct_matching_accuracy needs matching spatial layouts, got {tuple(src_train.shape)} "
                         f"and {tuple(tgt_train.shape)}")
    W, b = direct(to_rows(src_train).double(), to_rows(tgt_train).double())
    out_rows = to_rows(src_test).double() @ W + b
    like = torch.empty((src_test.shape[0], W.shape[1], *src_test.shape[2:])) if src_test.dim() == 4 else \
        torch.empty((*src_test.shape[:-1], W.shape[1]))
    with torch.no_grad():
        logits = head(from_rows(out_rows.float(), like))
    return float((logits.argmax(1).cpu() == y_test.cpu()).float().mean())


def sensitivity_test(train_acts: torch.Tensor, test_acts: torch.Tensor, y_train, y_test, ks: Iterable[int],
                     similarities: Mapping[str, SimilarityFn], *, order: str = "lowest",
                     higher_is_similar: Mapping[str, bool] | None = None, tokens: str = "cls",
                     C: float = 1.0, max_iter: int = 500,
                     extra: Mapping[str, Callable[[torch.Tensor, torch.Tensor], float]] | None = None) -> dict:
    """Ding et al.'s sensitivity test by principal-component deletion.

    For each ``k`` in ``ks``: delete k components of the representation (basis fitted on
    ``train_acts``), train a linear probe on the pooled, modified training activations
    and test it; compute every similarity ``f(modified_test, original_test)``.
    ``extra`` functions take ``(modified_train, modified_test)`` and add columns (e.g. a
    DM-stitch accuracy via :func:`direct_matching_accuracy`, treated as a similarity).

    Returns ``{"curve": DataFrame(k, kept, probe_acc, acc_drop, <similarity names>...),
    "correlations": {name: rank_correlation(dissimilarity, acc_drop)}}``: positive means
    the index drops as the probe accuracy drops.
    """
    basis = pca_basis(train_acts)
    c = basis[1].shape[1]
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 0 or ks[-1] > c:
        raise ValueError(f"ks must be a non-empty set of component counts in 0..{c}, got {ks}")
    higher = dict(higher_is_similar or {})
    rows = []
    base_acc = None
    for k in ([0] if ks[0] != 0 else []) + ks:
        tr = delete_principal_components(train_acts, k, order, basis)
        te = delete_principal_components(test_acts, k, order, basis)
        acc = linear_probe_accuracy(pool_activations(tr, tokens), y_train, pool_activations(te, tokens), y_test,
                                    C=C, max_iter=max_iter)
        if k == 0:
            base_acc = acc
        row = {"k": k, "kept": c - k, "probe_acc": acc}
        for name, fn in similarities.items():
            row[name] = fn(te, test_acts)
        for name, fn in (extra or {}).items():
            row[name] = fn(tr, te)
        rows.append(row)
    curve = pd.DataFrame(rows).drop_duplicates("k").reset_index(drop=True)
    curve["acc_drop"] = (base_acc - curve["probe_acc"]).abs()
    cols = list(similarities) + list(extra or {})
    correlations = {}
    for name in cols:
        d = _dissimilarity(curve[name].to_numpy(float), higher.get(name, _default_higher(name)))
        correlations[name] = rank_correlation(d, curve["acc_drop"].to_numpy(float))
    return {"curve": curve[curve["k"].isin(ks)].reset_index(drop=True), "correlations": correlations,
            "base_probe_acc": base_acc, "order": order}


def _default_higher(name: str) -> bool:
    """Similarity indices are "higher = more similar" except the distances (OPD)."""
    from . import similarity

    try:
        return similarity.get(name).kind != "distance"
    except ValueError:
        return True


def specificity_for_matrices(mats: Mapping[str, pd.DataFrame], probe_acc: Mapping[str, float],
                             probe_acc_target: Mapping[str, float] | None = None, **kwargs) -> pd.DataFrame:
    """:func:`specificity_test` for every matrix of :func:`stitch.matrices.similarity_matrices` that has a
    direction (relative accuracy, DM structural score, CKA, PWCCA, OPD; not OOD AUROC).

    Returns one row per matrix: ``matrix, n, spearman, spearman_p, kendall, kendall_p`` (plus
    ``mean_spearman, mean_kendall`` over target layers with ``by_reference=True``); positive = the
    index ranks layer pairs like the probes do.
    """
    from .matrices import better

    rows = []
    for name, m in mats.items():
        direction = better(name)
        if direction is None:
            continue
        r = specificity_test(m, probe_acc, probe_acc_target, higher_is_similar=direction, **kwargs)
        keys = ["n", "spearman", "spearman_p", "kendall", "kendall_p"] + (
            ["mean_spearman", "mean_kendall"] if kwargs.get("by_reference") else [])
        rows.append({"matrix": name, **{k: r[k] for k in keys}})
    return pd.DataFrame(rows)
