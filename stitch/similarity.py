"""Representation similarity indices.

Every index compares two activation matrices ``X`` (n x p1) and ``Y`` (n x p2) whose rows
are the same n samples (images, spatial positions, tokens) and whose columns are features
(neurons, channels). The column counts may differ. Inputs may be torch tensors (any float
dtype, any device) or numpy arrays / array-likes; everything is computed in float64 -- on
the tensor's device, so on the GPU when the inputs are there (if X and Y live on different
devices, the non-CPU one is used) -- and the result is a Python ``float``.

Indices (functional API, and as :class:`SimilarityIndex` objects in :data:`INDICES`):

=================  ==========  =========  ==========================================
name               kind        identical  invariant to (O=orthogonal, S=isotropic
                                          scaling, T=translation, P=permutation,
                                          L=invertible linear)
=================  ==========  =========  ==========================================
``cka``            similarity  1          O S T P      (symmetric)
``cka_debiased``   similarity  1          O S T P      (symmetric, range [-1, 1])
``cca``            similarity  1          O S T P L    (symmetric)
``svcca``          similarity  1          O S T P      (symmetric)
``pwcca``          similarity  1          S T P        (weighted by X: not symmetric)
``r2``             similarity  1          O S P        (not symmetric, no centring)
``opd``            distance    0          O S T P      (symmetric, range [0, 2])
=================  ==========  =========  ==========================================

An invariance flag means: the value does not change when *either* argument alone is
transformed by any map of that class (a p x p orthogonal matrix applied to the columns, a
positive scalar factor, adding a constant row vector, a column permutation, a p x p
invertible matrix). For asymmetric indices this is stricter than invariance on one side:
PWCCA, for example, is invariant to invertible linear maps of Y but not of X.

Conventions every caller should know
------------------------------------
* Malformed input (not 2-D, no rows/columns, different row counts, NaN/inf, complex) and
  undefined cases raise ``ValueError`` with a message saying why; no index ever returns NaN.
* Indices that centre the columns (all except ``r2``) drop constant (zero-variance) columns
  first -- they carry no information after centring -- and raise ``ValueError`` when every
  column of a matrix is constant.
* The CCA family (``cca``, ``svcca``, ``pwcca``) needs more samples than features: after
  centring the sample space has n - 1 dimensions, so with p >= n - 1 (non-constant) columns
  every canonical correlation is trivially 1. Instead of silently reporting 1, or applying a
  ridge that changes the index, these raise ``ValueError`` naming n and p. For conv layers
  use :func:`conv_to_rows` (one row per spatial position) or spatially pool to N x C.
* CKA and OPD have no such restriction; CKA uses the feature-space form when p1 + p2 <= n
  and the n x n Gram form otherwise (flattened conv activations), both exact.
* Numerical rank uses a relative tolerance: singular values below
  ``max(n, p) * eps * s_max`` count as zero (the numpy ``matrix_rank`` default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from .activations import ArrayLike, to_rows
from .method_names import SIMILARITY_INDICES, similarity_index_key

__all__ = [
    "SimilarityIndex",
    "INDICES",
    "get",
    "compute_all",
    "cka",
    "linear_cka_torch",
    "cca",
    "svcca",
    "pwcca",
    "r2",
    "opd",
    "canonical_correlations",
    "conv_to_rows",
    "flatten",
]

_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------------------
# Reshaping helpers for callers
# --------------------------------------------------------------------------------------
# one row per spatial position / token: the layout that gives the CCA family enough samples (n > p)
conv_to_rows = to_rows


def flatten(act: ArrayLike) -> ArrayLike:
    """Flatten everything but the first (sample) axis: ``N x ...`` -> ``N x prod(rest)``.

    The usual input to CKA for conv layers (``N x (C*H*W)``). Returns the same type as given.
    """
    a = act if isinstance(act, torch.Tensor) else np.asarray(act)
    if a.ndim < 2:
        raise ValueError(f"flatten expects at least 2-D activations (N x ...); got shape {tuple(a.shape)}")
    return a.reshape(a.shape[0], -1)


# --------------------------------------------------------------------------------------
# Validation and shared numerics
# --------------------------------------------------------------------------------------
def _as_float64(a: ArrayLike, name: str) -> torch.Tensor:
    """Convert to a float64 torch tensor (keeping the device) and validate shape/values."""
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise ValueError(f"{name} is complex; similarity indices need real activations")
        t = a.detach().to(torch.float64)
    else:
        arr = np.asarray(a)
        if np.iscomplexobj(arr):
            raise ValueError(f"{name} is complex; similarity indices need real activations")
        try:
            arr = np.ascontiguousarray(arr, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} cannot be converted to a float array: {exc}") from exc
        # from_numpy shares memory; we never modify inputs in place. Copy read-only arrays
        # because torch warns about (and cannot guarantee safety for) non-writable buffers.
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix (samples x features); got shape {tuple(t.shape)}. "
            "Use flatten() or conv_to_rows() for conv / token activations."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): need at least one row and one column")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def _pair(X: ArrayLike, Y: ArrayLike, index: str, min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair of activation matrices; return float64 tensors on a common device."""
    Xt = _as_float64(X, "X")
    Yt = _as_float64(Y, "Y")
    if Xt.shape[0] != Yt.shape[0]:
        raise ValueError(
            f"{index}: X and Y must have the same number of rows (samples); "
            f"got X {tuple(Xt.shape)} and Y {tuple(Yt.shape)}"
        )
    if Xt.device != Yt.device:
        # Prefer the accelerator: moving the CPU operand there is the cheap direction.
        if Xt.device.type == "cpu":
            Xt = Xt.to(Yt.device)
        else:
            Yt = Yt.to(Xt.device)
    n = Xt.shape[0]
    if n < min_n:
        raise ValueError(f"{index} needs at least {min_n} samples (rows); got n={n}")
    return Xt, Yt


def _centre(X: torch.Tensor, name: str, index: str) -> torch.Tensor:
    """Centre columns, drop constant ones, and rescale to max |entry| = 1.

    Constant columns are detected exactly on the raw values (max == min) so that rounding
    residue from the mean subtraction can never masquerade as signal. The rescaling keeps
    squared norms away from under/overflow; every centring index is scale invariant.
    """
    constant = X.amax(dim=0) == X.amin(dim=0)
    if bool(constant.all()):
        raise ValueError(
            f"{index}: all {X.shape[1]} columns of {name} are constant (zero variance); "
            "the index is undefined after centring"
        )
    if bool(constant.any()):
        X = X[:, ~constant]
    Xc = X - X.mean(dim=0, keepdim=True)
    return Xc / Xc.abs().amax()


def _rank(s: torch.Tensor, shape: tuple[int, ...]) -> int:
    """Numerical rank from descending singular values with a relative tolerance."""
    if s.numel() == 0 or float(s[0]) <= 0.0:
        return 0
    tol = float(s[0]) * max(shape) * _EPS
    return int((s > tol).sum())


def _basis(Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis (n x r) of the column space and its r nonzero singular values."""
    U, s, _ = torch.linalg.svd(Xc, full_matrices=False)
    r = _rank(s, tuple(Xc.shape))
    return U[:, :r], s[:r]


def _check_enough_samples(Xc: torch.Tensor, name: str, index: str) -> None:
    n, p = Xc.shape
    if p >= n - 1:
        raise ValueError(
            f"{index} needs more samples than features: {name} has n={n} samples and p={p} "
            f"non-constant features, so its centred columns can span the whole (n-1)-dimensional "
            f"sample space and every canonical correlation would be trivially 1 (need p <= n-2). "
            f"Use more samples, conv_to_rows() (one row per spatial position), or spatial pooling."
        )


def _cca_prepare(X: ArrayLike, Y: ArrayLike, index: str) -> tuple[torch.Tensor, torch.Tensor]:
    Xt, Yt = _pair(X, Y, index)
    Xc = _centre(Xt, "X", index)
    Yc = _centre(Yt, "Y", index)
    _check_enough_samples(Xc, "X", index)
    _check_enough_samples(Yc, "Y", index)
    return Xc, Yc


def _clamp(value: float, lo: float, hi: float) -> float:
    # Rounding can push a bounded quantity a few ulps outside its range.
    return float(min(max(value, lo), hi))


# --------------------------------------------------------------------------------------
# CKA
# --------------------------------------------------------------------------------------
def _unbiased_hsic(tr_kl: torch.Tensor, k: torch.Tensor, l: torch.Tensor, n: int) -> torch.Tensor:
    """n(n-3) * unbiased HSIC (Song et al. 2012) of linear kernels on *centred* features.

    With K = Xc Xc^T (so K 1 = 0) and k = diag(K), the Song et al. estimator
    tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1  (K~ = K with zero diagonal)
    simplifies to the expression below. The common factor 1/(n(n-3)) cancels in CKA.
    """
    return tr_kl - (n / (n - 2.0)) * (k @ l) + k.sum() * l.sum() / ((n - 1.0) * (n - 2.0))


def cka(X: ArrayLike, Y: ArrayLike, debiased: bool = False, *, method: str = "auto") -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019; Cortes et al. 2012).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc;
    equivalently the alignment of the centred Gram matrices ``<K, L>_F / (||K||_F ||L||_F)``.
    In [0, 1], 1 for identical inputs. Symmetric. Invariant to orthogonal maps, isotropic
    scaling, translation and permutation of either argument; *not* to general invertible
    linear maps.

    Args:
        debiased: use the unbiased HSIC estimator (Song et al. 2012, as in Kornblith's
            debiased CKA) in numerator and denominator. It corrects the positive bias of
            CKA at small n; it needs n >= 4 and may be slightly negative (range [-1, 1]).
        method: ``"feature"`` (p x p products, O(n (p1+p2)^2)), ``"gram"`` (n x n Gram
            matrices, O(n^2 (p1+p2))) or ``"auto"`` (default): feature form when
            p1 + p2 <= n, Gram form otherwise. Both are exact; only cost differs.
    """
    index = "debiased CKA" if debiased else "CKA"
    Xt, Yt = _pair(X, Y, index, min_n=4 if debiased else 2)
    Xc = _centre(Xt, "X", index)
    Yc = _centre(Yt, "Y", index)
    n = Xc.shape[0]
    if method == "auto":
        method = "feature" if Xc.shape[1] + Yc.shape[1] <= n else "gram"
    if method == "feature":
        xy = (Yc.T @ Xc).square().sum()
        xx = (Xc.T @ Xc).square().sum()
        yy = (Yc.T @ Yc).square().sum()
        k = Xc.square().sum(dim=1)
        l = Yc.square().sum(dim=1)
    elif method == "gram":
        K = Xc @ Xc.T
        L = Yc @ Yc.T
        xy = (K * L).sum()
        xx = K.square().sum()
        yy = L.square().sum()
        k = torch.diagonal(K)
        l = torch.diagonal(L)
    else:
        raise ValueError(f"cka: method must be 'auto', 'feature' or 'gram'; got {method!r}")
    if debiased:
        xy = _unbiased_hsic(xy, k, l, n)
        xx = _unbiased_hsic(xx, k, k, n)
        yy = _unbiased_hsic(yy, l, l, n)
        # The unbiased HSIC of a matrix with itself is a squared norm (U-centred inner
        # product) and therefore >= 0; exactly 0 happens only in degenerate tiny samples.
        if float(xx) <= 0.0 or float(yy) <= 0.0:
            raise ValueError(
                f"debiased CKA is undefined here: the unbiased HSIC of "
                f"{'X' if float(xx) <= 0.0 else 'Y'} with itself is not positive (n={n}); use more samples"
            )
        return _clamp(float(xy / torch.sqrt(xx * yy)), -1.0, 1.0)
    return _clamp(float(xy / torch.sqrt(xx * yy)), 0.0, 1.0)


def linear_cka_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable linear CKA of two batches (flattened per sample), Gram form, as a tensor.

    The autograd-friendly form of :func:`cka` (no validation, float32, no constant-column
    handling) for training penalties and cheap tracking: TLM's CKA penalty and its history.
    """
    x = x.reshape(len(x), -1).float()
    y = y.reshape(len(y), -1).float()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    kx, ky = x @ x.T, y @ y.T
    return (kx * ky).sum() / (kx.norm() * ky.norm() + 1e-12)


# --------------------------------------------------------------------------------------
# CCA family
# --------------------------------------------------------------------------------------
def canonical_correlations(X: ArrayLike, Y: ArrayLike) -> torch.Tensor:
    """All min(rank X, rank Y) canonical correlations of centred X and Y, descending.

    Cosines of the principal angles between the column spaces of the centred matrices:
    singular values of Q1^T Q2 with Q1, Q2 orthonormal bases (from the SVD). Returned as a
    float64 tensor on the input device. Same input rules as :func:`cca`.
    """
    Xc, Yc = _cca_prepare(X, Y, "CCA")
    Q1, _ = _basis(Xc)
    Q2, _ = _basis(Yc)
    return torch.linalg.svdvals(Q1.T @ Q2).clamp(0.0, 1.0)


def cca(X: ArrayLike, Y: ArrayLike) -> float:
    """Mean canonical correlation (Hotelling 1936; as used by Raghu et al. 2017).

    Centres the columns, takes orthonormal bases Q1, Q2 of the column spaces and averages
    the singular values of Q1^T Q2 over the min(rank X, rank Y) canonical correlations.
    In [0, 1], 1 for identical inputs (and for Y = X A, A invertible). Symmetric. Invariant
    to every invertible linear map (hence orthogonal maps, scaling, permutation) and to
    translation of either argument.

    Needs p <= n - 2 non-constant columns in each matrix, else ``ValueError`` (the value
    would be trivially 1). Constant columns are dropped.
    """
    return float(canonical_correlations(X, Y).mean())


def _svd_truncate(Xc: torch.Tensor, variance: float) -> torch.Tensor:
    """Orthonormal basis of the top-k principal directions of centred Xc (sample space).

    k is the smallest number of components whose cumulative explained variance reaches
    ``variance`` (never fewer than needed: some implementations keep one component only).
    """
    Q, s = _basis(Xc)
    ratio = torch.cumsum(s.square(), 0) / s.square().sum()
    # A 1e-12 slack stops rounding (e.g. cumsum 0.98999999999 for exactly 99%) adding a component.
    k = int((ratio < variance - 1e-12).sum()) + 1
    return Q[:, : min(k, Q.shape[1])]


def svcca(X: ArrayLike, Y: ArrayLike, variance: float = 0.99) -> float:
    """Singular vector CCA (Raghu et al. 2017): PCA-truncate each side, then mean CCA.

    For each of X and Y (centred, constant columns dropped) keeps the smallest number k of
    top principal directions whose cumulative explained variance is >= ``variance``, then
    returns the mean canonical correlation of the two truncated representations. In [0, 1],
    1 for identical inputs. Symmetric. Invariant to orthogonal maps, isotropic scaling,
    translation and permutation; *not* to general invertible linear maps (they change which
    directions carry the variance). ``variance=1`` keeps every direction holding more than
    1e-12 of the variance, i.e. it equals :func:`cca` up to numerically negligible directions.

    Needs p <= n - 2 non-constant columns in each matrix (checked before truncation, as for
    CCA), else ``ValueError``.
    """
    if not 0.0 < float(variance) <= 1.0:
        raise ValueError(f"svcca: variance must be in (0, 1]; got {variance}")
    Xc, Yc = _cca_prepare(X, Y, "SVCCA")
    Q1 = _svd_truncate(Xc, float(variance))
    Q2 = _svd_truncate(Yc, float(variance))
    return float(torch.linalg.svdvals(Q1.T @ Q2).clamp(0.0, 1.0).mean())


def pwcca(X: ArrayLike, Y: ArrayLike) -> float:
    """Projection-weighted CCA (Morcos et al. 2018), weighted by X, as a similarity.

    With canonical correlations rho_i and the corresponding unit-norm canonical variates
    h_i of X (vectors in sample space), the weight of correlation i is
    ``alpha_i = sum_j |<h_i, x_j>|`` over the centred columns x_j of X, normalised to sum
    to 1; returns ``sum_i alpha_i rho_i``. In [0, 1], 1 for identical inputs (Morcos et al.
    report the distance 1 - value).

    Not symmetric: only X's columns set the weights (swap the arguments to weight by Y).
    Invariant to isotropic scaling, translation and permutation of either argument, and to
    any invertible linear map of Y; *not* to orthogonal or other linear maps of X, which
    change the projections <h_i, x_j>. Needs p <= n - 2 non-constant columns (as CCA).
    """
    Xc, Yc = _cca_prepare(X, Y, "PWCCA")
    Q1, _ = _basis(Xc)
    Q2, _ = _basis(Yc)
    U, rho, _ = torch.linalg.svd(Q1.T @ Q2, full_matrices=False)
    H = Q1 @ U  # n x m unit-norm canonical variates of X
    alpha = (H.T @ Xc).abs().sum(dim=1)
    # Each h_i lies in span(Xc), so it has a nonzero projection on some column: sum > 0.
    alpha = alpha / alpha.sum()
    return _clamp(float((alpha * rho.clamp(0.0, 1.0)).sum()), 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Linear regression fit and Procrustes distance
# --------------------------------------------------------------------------------------
def r2(X: ArrayLike, Y: ArrayLike) -> float:
    """Coefficient of determination of the least-squares fit of Y from X (paper 1, Def. 6.1).

    ``R^2 = 1 - ||X M - Y||_F^2 / ||Y||_F^2`` with ``M = pinv(X) Y``, i.e. the fraction of
    Y's squared norm inside the column space of X. As in the definition there is no centring
    and no bias column (append a ones column to X, or centre both, if you want them), so it is
    *not* translation invariant. The pseudo-inverse uses the relative rank tolerance of the
    module. In [0, 1], 1 for identical inputs (and whenever p1 >= n with X of full row rank:
    such fits are trivially exact). Not symmetric. Invariant to orthogonal maps, isotropic
    scaling and permutation of either argument, and to invertible linear maps of X (not Y).

    Raises ``ValueError`` if Y is all zeros (undefined); X all zeros gives 0.
    """
    Xt, Yt = _pair(X, Y, "R2")
    y_scale = Yt.abs().amax()
    if float(y_scale) == 0.0:
        raise ValueError("R2: Y is all zeros, so ||Y||_F = 0 and R^2 is undefined")
    Yt = Yt / y_scale
    x_scale = Xt.abs().amax()
    if float(x_scale) == 0.0:
        return 0.0
    Q, _ = _basis(Xt / x_scale)
    # X pinv(X) = Q Q^T (projector onto the column space of X).
    residual = Yt - Q @ (Q.T @ Yt)
    return _clamp(1.0 - float(residual.square().sum() / Yt.square().sum()), 0.0, 1.0)


def _reduce_wide(A: torch.Tensor) -> torch.Tensor:
    """Replace an n x p matrix with p > n by an n x n matrix with the same Gram A A^T.

    A^T = Q R gives A = R^T Q^T, so A^T B = Q R B: singular values of A^T B (and hence
    nuclear norms) are unchanged when A is replaced by R^T. Cost O(n^2 p).
    """
    if A.shape[1] <= A.shape[0]:
        return A
    R = torch.linalg.qr(A.T, mode="r")[1]
    return R.T


def opd(X: ArrayLike, Y: ArrayLike) -> float:
    """Orthogonal Procrustes distance (Ding et al. 2021; Schönemann 1966).

    Centres each column, scales each matrix to unit Frobenius norm and returns
    ``||X||_F^2 + ||Y||_F^2 - 2 ||X^T Y||_* = 2 - 2 ||X^T Y||_*`` (nuclear norm), the squared
    residual of the best orthogonal alignment min_Q ||X Q - Y||_F^2 (columns zero-padded to a
    common width). A distance: 0 for identical inputs, at most 2. Symmetric. Invariant to
    orthogonal maps, isotropic scaling, translation and permutation; *not* to general
    invertible linear maps. Works for any p (wide matrices are first reduced to n x n).
    """
    Xt, Yt = _pair(X, Y, "OPD")
    Xc = _centre(Xt, "X", "OPD")
    Yc = _centre(Yt, "Y", "OPD")
    Xc = _reduce_wide(Xc / torch.linalg.norm(Xc))
    Yc = _reduce_wide(Yc / torch.linalg.norm(Yc))
    nuclear = torch.linalg.svdvals(Xc.T @ Yc).sum()
    return _clamp(2.0 - 2.0 * float(nuclear), 0.0, 2.0)


# --------------------------------------------------------------------------------------
# Declarations and registry
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimilarityIndex:
    """A similarity index with its declared properties.

    Invariance flags mean: the value is unchanged when either argument alone is transformed
    by any map of the class (see the module docstring). ``value_range`` is the closed
    interval the value always lies in; ``identical_value`` is the value of ``fn(X, X)``.
    """

    name: str
    fn: Callable[[ArrayLike, ArrayLike], float]
    kind: str  # "similarity" (higher = more similar) or "distance" (lower = more similar)
    identical_value: float
    symmetric: bool
    invariant_orthogonal: bool
    invariant_isotropic_scaling: bool
    invariant_translation: bool
    invariant_permutation: bool
    invariant_invertible_linear: bool
    value_range: tuple[float, float] = (0.0, 1.0)
    needs_n_greater_than_p: bool = False  # CCA family: raises ValueError when p >= n - 1
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("similarity", "distance"):
            raise ValueError(f"kind must be 'similarity' or 'distance'; got {self.kind!r}")

    @property
    def higher_is_more_similar(self) -> bool:
        return self.kind == "similarity"

    def __call__(self, X: ArrayLike, Y: ArrayLike) -> float:
        return self.fn(X, Y)


def _cka_debiased(X: ArrayLike, Y: ArrayLike) -> float:
    return cka(X, Y, debiased=True)


def _make_indices() -> dict[str, SimilarityIndex]:
    O_S_T_P = dict(
        invariant_orthogonal=True,
        invariant_isotropic_scaling=True,
        invariant_translation=True,
        invariant_permutation=True,
    )
    specs = [
        SimilarityIndex("cka", cka, "similarity", 1.0, True, **O_S_T_P, invariant_invertible_linear=False,
                        description="linear CKA (Kornblith et al. 2019)"),
        SimilarityIndex("cka_debiased", _cka_debiased, "similarity", 1.0, True, **O_S_T_P,
                        invariant_invertible_linear=False, value_range=(-1.0, 1.0),
                        description="linear CKA with the unbiased HSIC estimator (n >= 4)"),
        SimilarityIndex("cca", cca, "similarity", 1.0, True, **O_S_T_P, invariant_invertible_linear=True,
                        needs_n_greater_than_p=True, description="mean canonical correlation"),
        SimilarityIndex("svcca", svcca, "similarity", 1.0, True, **O_S_T_P, invariant_invertible_linear=False,
                        needs_n_greater_than_p=True,
                        description="SVCCA, 99% variance kept on each side (Raghu et al. 2017)"),
        SimilarityIndex("pwcca", pwcca, "similarity", 1.0, False, invariant_orthogonal=False,
                        invariant_isotropic_scaling=True, invariant_translation=True, invariant_permutation=True,
                        invariant_invertible_linear=False, needs_n_greater_than_p=True,
                        description="projection-weighted CCA, weights from X (Morcos et al. 2018)"),
        SimilarityIndex("r2", r2, "similarity", 1.0, False, invariant_orthogonal=True,
                        invariant_isotropic_scaling=True, invariant_translation=False, invariant_permutation=True,
                        invariant_invertible_linear=False,
                        description="R^2 of the least-squares fit of Y from X, no bias (paper 1 Def. 6.1)"),
        SimilarityIndex("opd", opd, "distance", 0.0, True, **O_S_T_P, invariant_invertible_linear=False,
                        value_range=(0.0, 2.0), description="orthogonal Procrustes distance (Ding et al. 2021)"),
    ]
    indices = {s.name: s for s in specs}
    if tuple(indices) != SIMILARITY_INDICES:  # the settings layer checks names against that list, torch-free
        raise ImportError(f"stitch.method_names.SIMILARITY_INDICES {SIMILARITY_INDICES} != implemented {tuple(indices)}")
    return indices


INDICES: dict[str, SimilarityIndex] = _make_indices()


def get(name: str) -> SimilarityIndex:
    """Look up an index by name (case-insensitive; '-' and '_' are interchangeable)."""
    try:
        return INDICES[similarity_index_key(name)]
    except KeyError:
        raise ValueError(
            f"unknown similarity index {name!r}; valid names: {', '.join(sorted(INDICES))}"
        ) from None


def compute_all(X: ArrayLike, Y: ArrayLike, names: Iterable[str] | None = None) -> dict[str, float]:
    """Evaluate several indices on the same pair; returns ``{name: value}``.

    ``names=None`` evaluates every registered index. Errors are not swallowed: e.g. the CCA
    family raises ``ValueError`` when p >= n - 1, so pass ``names`` to skip them for wide
    activations.
    """
    selected = [get(nm) for nm in (INDICES if names is None else names)]
    # Convert once (validation included) so numpy inputs are not re-copied per index.
    Xt, Yt = _pair(X, Y, "compute_all", min_n=1)
    return {idx.name: idx(Xt, Yt) for idx in selected}
