"""Direct matching: closed-form stitching layers fitted from activations alone.

A stitching layer is the affine map ``S(a) = a @ W + b`` from source activations ``A``
(rows = samples, ``n x C1``) to target activations ``B`` (``n x C2``).  For conv layers every
spatial position is a row (``N x C x H x W -> (N*H*W) x C``), for transformers every token.

All solvers depend on the data only through sufficient statistics (row count, means, centred
scatter matrices), so the whole training set can be streamed once, batch by batch, without ever
materialising the activations:

>>> stats = MatchingStatistics()
>>> for a, b in batches:                 # a: N x C1 x H x W, b: N x C2 x H x W (any float dtype)
...     stats.update(a, b)
>>> W, b = solve(stats, kind="ls")       # float64, W: C1 x C2, b: C2

Numerical design
----------------
* Statistics are accumulated in float64 with Chan et al.'s pairwise update: every chunk is
  centred on its own mean before the matmuls and chunks are merged with a rank-one correction.
  Plain uncentred sums would lose most significant digits on activations with a large mean
  (post-ReLU features), because ``A^T A - n m m^T`` cancels catastrophically.
* Normal equations are solved by an eigendecomposition of the Jacobi-scaled (unit-diagonal)
  centred Gram matrix.  The scaling makes the rank decision independent of per-channel units;
  eigenvalues below ``rcond * lambda_max`` are treated as zero (pseudo-inverse), and in the
  rank-deficient case the solution is projected onto the minimum-norm one of the *augmented*
  problem, so ``least_squares`` equals ``pinv([A, 1]) @ B`` exactly as in the papers.
* The Gram approach squares the condition number: directions whose singular value is below
  about ``sqrt(rcond)`` times the largest (after per-channel scaling) cannot be resolved from
  sufficient statistics and are dropped.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Mapping

import numpy as np
import torch

from ..errors import StitchError
from ..method_names import DIRECT_MATCHING_KINDS

__all__ = [
    "MatchingError",
    "MatchingStatistics",
    "least_squares",
    "procrustes",
    "reduced_rank",
    "lasso",
    "residual",
    "r2",
    "relative_squared_error",
    "solve",
    "KINDS",
]

_F64 = torch.float64
KINDS = DIRECT_MATCHING_KINDS  # declared torch-free for the settings layer

# Default number of rows cast to float64 at once is chosen so a chunk holds about this many
# elements (128 MiB in float64), which bounds peak memory independently of the batch size.
_CHUNK_ELEMENTS = 1 << 24


class MatchingError(StitchError, ValueError):
    """Invalid input to direct matching (a ``ValueError``, and a ``StitchError`` for the CLI)."""


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------

def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise MatchingError(f"{name} must be a numeric array or tensor, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise MatchingError(f"{name} must be real-valued, got {t.dtype}")
    if t.ndim < 2:
        raise MatchingError(
            f"{name} must have at least 2 dimensions (rows x channels), got shape {tuple(t.shape)}")
    return t


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """View with channels on the last axis: rows x C, N x T x D (tokens) or N x C x H x W."""
    if x.ndim <= 3:
        return x  # 2-D rows x C, or tokens N x T x D: already channels-last
    return x.movedim(1, -1)  # N x C x H x W (x D) -> N x H x W (x D) x C, a view


def _rows_of(x: torch.Tensor) -> int:
    return math.prod(x.shape[:-1])


def _paired_row_chunks(a: torch.Tensor, b: torch.Tensor,
                       chunk_rows: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield matching (rows x C1, rows x C2) chunks of two channels-last tensors.

    When both share the leading (batch) axis the split is along it, so that only one chunk at a
    time is copied into row layout (reshaping a permuted conv tensor needs a copy).
    """
    per_a, per_b = _rows_of(a[:1]) if a.ndim > 2 else 1, _rows_of(b[:1]) if b.ndim > 2 else 1
    if a.shape[0] == b.shape[0] and per_a == per_b:
        step = max(1, chunk_rows // per_a)
        for i in range(0, a.shape[0], step):
            yield a[i:i + step].reshape(-1, a.shape[-1]), b[i:i + step].reshape(-1, b.shape[-1])
    else:  # e.g. 2-D rows against a 4-D tensor: flatten fully, then split rows
        ra, rb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        for i in range(0, ra.shape[0], chunk_rows):
            yield ra[i:i + chunk_rows], rb[i:i + chunk_rows]


# --------------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------------

class MatchingStatistics:
    """Streaming float64 sufficient statistics of paired activations ``(A, B)``.

    Stored state (all float64 on ``device``, except the integer row count):

    * ``n``: number of rows seen;
    * ``mean_a`` (C1), ``mean_b`` (C2): column means;
    * ``scatter_aa`` (C1 x C1), ``scatter_ab`` (C1 x C2), ``scatter_bb`` (C2 x C2): *centred*
      sums of outer products, e.g. ``(A - 1 mean_a)^T (B - 1 mean_b)`` (not divided by n);
    * ``min_a``, ``max_a`` (C1): column ranges, used to detect exactly constant channels (dead
      ReLUs), whose centred variance is pure rounding noise and must not be rescaled to 1.

    The uncentred quantities of the papers are available as properties: ``sum_a``, ``sum_b``,
    ``AtA``, ``AtB``, ``BtB``.

    Args:
        dim_a, dim_b: channel counts; inferred from the first ``update`` when omitted (give them
            when ranks that may see no data take part in ``all_reduce``).
        device: where the statistics live; default: the device of the first ``A`` passed.
        chunk_rows: rows cast to float64 and multiplied at once (default: about 2**24 elements
            per chunk); bounds the extra memory of ``update``.
    """

    def __init__(self, dim_a: int | None = None, dim_b: int | None = None,
                 device: torch.device | str | None = None, chunk_rows: int | None = None):
        if chunk_rows is not None and chunk_rows < 1:
            raise MatchingError(f"chunk_rows must be positive, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.n = 0
        self._device = torch.device(device) if device is not None else None
        self.dim_a: int | None = None
        self.dim_b: int | None = None
        if (dim_a is None) != (dim_b is None):
            raise MatchingError("give both dim_a and dim_b, or neither")
        if dim_a is not None:
            self._allocate(int(dim_a), int(dim_b), self._device or torch.device("cpu"))

    # -- state ------------------------------------------------------------------------------

    def _allocate(self, dim_a: int, dim_b: int, device: torch.device) -> None:
        self.dim_a, self.dim_b, self._device = dim_a, dim_b, device
        z = lambda *s: torch.zeros(*s, dtype=_F64, device=device)  # noqa: E731
        self.mean_a, self.mean_b = z(dim_a), z(dim_b)
        self.scatter_aa, self.scatter_ab, self.scatter_bb = z(dim_a, dim_a), z(dim_a, dim_b), z(dim_b, dim_b)
        self.min_a = torch.full((dim_a,), math.inf, dtype=_F64, device=device)
        self.max_a = torch.full((dim_a,), -math.inf, dtype=_F64, device=device)

    @property
    def device(self) -> torch.device | None:
        return self._device

    _TENSORS = ("mean_a", "mean_b", "scatter_aa", "scatter_ab", "scatter_bb", "min_a", "max_a")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (``n`` as a 0-d int64 tensor); suitable for ``torch.save``."""
        if self.dim_a is None:
            raise MatchingError("MatchingStatistics is empty and has no dimensions yet")
        sd = {"n": torch.tensor(self.n, dtype=torch.int64, device=self._device)}
        sd.update({k: getattr(self, k) for k in self._TENSORS})
        return sd

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor],
                        device: torch.device | str | None = None) -> "MatchingStatistics":
        missing = {"n", *cls._TENSORS} - set(state)
        if missing:
            raise MatchingError(f"state dict lacks {sorted(missing)}")
        dev = torch.device(device) if device is not None else state["mean_a"].device
        self = cls(int(state["mean_a"].numel()), int(state["mean_b"].numel()), device=dev)
        self.n = int(state["n"])
        for k in cls._TENSORS:
            expected = getattr(self, k).shape
            t = torch.as_tensor(state[k]).to(device=dev, dtype=_F64)
            if t.shape != expected:
                raise MatchingError(f"state '{k}' has shape {tuple(t.shape)}, expected {tuple(expected)}")
            setattr(self, k, t.clone())
        return self

    def to(self, device: torch.device | str) -> "MatchingStatistics":
        """Move the statistics to ``device`` in place (like ``nn.Module.to``); returns self."""
        self._device = torch.device(device)
        if self.dim_a is not None:
            for k in self._TENSORS:
                setattr(self, k, getattr(self, k).to(self._device))
        return self

    def copy(self) -> "MatchingStatistics":
        if self.dim_a is None:
            return MatchingStatistics(device=self._device, chunk_rows=self.chunk_rows)
        other = MatchingStatistics.from_state_dict(self.state_dict())
        other.chunk_rows = self.chunk_rows
        return other

    def __repr__(self) -> str:
        return (f"MatchingStatistics(n={self.n}, dim_a={self.dim_a}, dim_b={self.dim_b}, "
                f"device={self._device})")

    # -- uncentred views ----------------------------------------------------------------------

    @property
    def sum_a(self) -> torch.Tensor:
        return self.mean_a * self.n

    @property
    def sum_b(self) -> torch.Tensor:
        return self.mean_b * self.n

    @property
    def AtA(self) -> torch.Tensor:  # noqa: N802 (the papers' notation)
        return self.scatter_aa + self.n * torch.outer(self.mean_a, self.mean_a)

    @property
    def AtB(self) -> torch.Tensor:  # noqa: N802
        return self.scatter_ab + self.n * torch.outer(self.mean_a, self.mean_b)

    @property
    def BtB(self) -> torch.Tensor:  # noqa: N802
        return self.scatter_bb + self.n * torch.outer(self.mean_b, self.mean_b)

    # -- accumulation -------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, A, B, check_finite: bool = True) -> "MatchingStatistics":
        """Add a batch of paired activations; returns self.

        Accepted layouts (numpy arrays or tensors of any real dtype, e.g. float16/bfloat16):
        ``rows x C``; tokens ``N x T x D`` (channels last); conv ``N x C x H x W`` (channels at
        axis 1, as in PyTorch; also ``N x C x D x H x W``).  ``A`` and ``B`` must yield the same
        number of rows in the same order: resize the source spatially beforehand if needed.
        ``check_finite`` rejects NaN/Inf in the batch (one device sync per batch).
        """
        a, b = _as_tensor(A, "A"), _as_tensor(B, "B")
        shape_a, shape_b = tuple(a.shape), tuple(b.shape)
        ca, cb = a.shape[-1] if a.ndim <= 3 else a.shape[1], b.shape[-1] if b.ndim <= 3 else b.shape[1]
        a, b = _channels_last(a), _channels_last(b)
        ra, rb = _rows_of(a), _rows_of(b)
        if ra != rb:
            raise MatchingError(
                f"A and B must have the same number of rows (samples x positions): A {shape_a} "
                f"gives {ra} rows of {ca} channels, B {shape_b} gives {rb} rows of {cb} channels")
        if self.dim_a is None:
            self._allocate(ca, cb, self._device or a.device)
        elif (ca, cb) != (self.dim_a, self.dim_b):
            raise MatchingError(
                f"channel mismatch: statistics hold C1={self.dim_a}, C2={self.dim_b}, batch has C1={ca}, C2={cb}")
        if ra == 0:
            return self
        if check_finite:
            for t, name in ((a, "A"), (b, "B")):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise MatchingError(f"{name} contains NaN or Inf values")
        chunk = self.chunk_rows or max(256, _CHUNK_ELEMENTS // max(ca, cb))
        for ac, bc in _paired_row_chunks(a, b, chunk):
            self._add_chunk(ac, bc)
        return self

    def _add_chunk(self, a: torch.Tensor, b: torch.Tensor) -> None:
        # Move in the source precision (cheaper transfer), then widen.  Blocking copies: a
        # non-blocking device-to-host copy could be read before it lands.
        a = a.to(self._device).to(_F64)
        b = b.to(self._device).to(_F64)
        k = a.shape[0]
        mn, mx = a.amin(0), a.amax(0)
        ma, mb = a.mean(0), b.mean(0)
        a = a - ma  # centre on the chunk mean before multiplying (Chan et al.)
        b = b - mb
        self._combine(k, ma, mb, a.T @ a, a.T @ b, b.T @ b, mn, mx)

    def _combine(self, n2: int, ma2, mb2, saa2, sab2, sbb2, mn2, mx2) -> None:
        """Chan et al.'s pairwise merge of (n, means, centred scatters)."""
        if n2 == 0:
            return
        n1 = self.n
        if n1 == 0:
            self.n = n2
            self.mean_a, self.mean_b = ma2.clone(), mb2.clone()
            self.scatter_aa, self.scatter_ab, self.scatter_bb = saa2.clone(), sab2.clone(), sbb2.clone()
            self.min_a, self.max_a = mn2.clone(), mx2.clone()
            return
        n = n1 + n2
        da, db = ma2 - self.mean_a, mb2 - self.mean_b
        f = n1 * n2 / n  # Python ints: exact before the single rounding
        self.scatter_aa = self.scatter_aa + saa2 + f * torch.outer(da, da)
        self.scatter_ab = self.scatter_ab + sab2 + f * torch.outer(da, db)
        self.scatter_bb = self.scatter_bb + sbb2 + f * torch.outer(db, db)
        self.mean_a = self.mean_a + da * (n2 / n)
        self.mean_b = self.mean_b + db * (n2 / n)
        self.min_a, self.max_a = torch.minimum(self.min_a, mn2), torch.maximum(self.max_a, mx2)
        self.n = n

    def merge(self, other: "MatchingStatistics") -> "MatchingStatistics":
        """Add another accumulator's rows to this one (in place); returns self.

        Exact up to rounding: the result equals accumulating both row sets in one object.
        """
        if other.dim_a is None:
            return self
        if self.dim_a is None:
            self._allocate(other.dim_a, other.dim_b, self._device or other.device)
        elif (other.dim_a, other.dim_b) != (self.dim_a, self.dim_b):
            raise MatchingError(
                f"cannot merge statistics of shape C1={other.dim_a}, C2={other.dim_b} "
                f"into C1={self.dim_a}, C2={self.dim_b}")
        dev = self._device
        self._combine(other.n, *(getattr(other, k).to(dev) for k in self._TENSORS))
        return self

    def all_reduce(self, group=None) -> "MatchingStatistics":
        """Merge the statistics of all ranks of a ``torch.distributed`` group, in place.

        Gathers every rank's state (a few C x C matrices) and merges in rank order, so all ranks
        end with bit-identical results.  Every rank must know the dimensions (pass ``dim_a``/
        ``dim_b`` to the constructor if a rank may see no data).  With NCCL the statistics must
        be on this rank's GPU.
        """
        import torch.distributed as dist

        world = dist.get_world_size(group)
        state = self.state_dict()
        gathered = {}
        for k, v in state.items():
            bufs = [torch.empty_like(v) for _ in range(world)]
            dist.all_gather(bufs, v.contiguous(), group=group)
            gathered[k] = bufs
        merged = MatchingStatistics(self.dim_a, self.dim_b, device=self._device)
        for r in range(world):
            merged.merge(MatchingStatistics.from_state_dict({k: v[r] for k, v in gathered.items()}))
        for k in ("n", *self._TENSORS):
            setattr(self, k, getattr(merged, k))
        return self


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------

def _check_ready(stats: MatchingStatistics, min_rows: int = 2) -> None:
    if not isinstance(stats, MatchingStatistics):
        raise MatchingError(f"expected MatchingStatistics, got {type(stats).__name__}")
    if stats.n < min_rows:
        raise MatchingError(f"too few rows: direct matching needs at least {min_rows} rows, got {stats.n}")
    for k in MatchingStatistics._TENSORS[:5]:
        if not bool(torch.isfinite(getattr(stats, k)).all()):
            raise MatchingError(
                f"statistics contain NaN/Inf ({k}): an input batch had non-finite values or overflowed")


def _default_rcond(p: int) -> float:
    # Eigenvalue cut-off relative to lambda_max of the unit-diagonal Gram: rounding in the
    # accumulated Gram and in eigh is O(p * eps * lambda_max); stay an order above it.
    return 10.0 * max(p, 1) * torch.finfo(_F64).eps


def _psd_solve(G: torch.Tensor, R: torch.Tensor, null_cols: torch.Tensor,
               rcond: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Solve the normal equations ``G X = R`` (G symmetric PSD) by a truncated eigensolve.

    ``null_cols`` marks coordinates known to lie in the null space (constant/zero channels).
    Returns ``(X0, Q)``: a solution (the minimum-norm one in Jacobi-scaled coordinates) and an
    orthonormal basis ``Q`` of null(G) in original coordinates (None when G is nonsingular).
    The caller projects out null(G) to get the minimum-norm solution in original units.
    """
    p = G.shape[0]
    rcond = _default_rcond(p) if rcond is None else float(rcond)
    d = G.diagonal()
    null = null_cols | (d <= 0)
    s = torch.where(null, torch.ones_like(d), d.clamp_min(0).sqrt())
    keep_col = (~null).to(_F64)
    Gs = G / torch.outer(s, s) * torch.outer(keep_col, keep_col)  # zero out known-null channels
    Gs = 0.5 * (Gs + Gs.T)
    lam, V = torch.linalg.eigh(Gs)
    lam_max = float(lam[-1]) if p else 0.0
    keep = lam > rcond * lam_max if lam_max > 0 else torch.zeros_like(lam, dtype=torch.bool)
    Vk = V[:, keep]
    Rs = (R / s[:, None]) * keep_col[:, None]
    X0 = (Vk @ ((Vk.T @ Rs) / lam[keep][:, None])) / s[:, None]
    if bool(keep.all()):
        return X0, None
    Q, _ = torch.linalg.qr(V[:, ~keep] / s[:, None])
    return X0, Q


def least_squares(stats: MatchingStatistics, bias: bool = True,
                  rcond: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares stitching ``W, b = argmin ||A W + 1 b - B||_F^2`` over all accumulated rows.

    Equals ``pinv([A, 1]) @ B`` (``pinv(A) @ B`` with ``bias=False``), including the
    minimum-norm choice when A is rank deficient (e.g. dead or duplicated channels).  With a
    bias, the centred system ``Cov_aa W = Cov_ab`` is solved and ``b = mean_b - mean_a W``.
    ``rcond``: relative eigenvalue cut-off of the unit-diagonal Gram (default ``10 p eps``).
    Returns float64 ``W`` (C1 x C2) and ``b`` (C2; zeros without bias) on ``stats.device``.
    """
    _check_ready(stats)
    if bias:
        const = stats.max_a <= stats.min_a  # channel constant over all rows
        W, Q = _psd_solve(stats.scatter_aa, stats.scatter_ab, const, rcond)
        b = stats.mean_b - stats.mean_a @ W
        if Q is not None:
            # Rank deficient: the solutions are theta0 + null([A, 1]); null([A, 1]) is spanned by
            # [z; -mean_a.z] for z in null(Cov_aa).  Projecting it out gives pinv([A, 1]) B.
            theta = torch.cat([W, b[None]], 0)
            Qa, _ = torch.linalg.qr(torch.cat([Q, -(stats.mean_a @ Q)[None]], 0))
            theta = theta - Qa @ (Qa.T @ theta)
            W, b = theta[:-1].contiguous(), theta[-1].contiguous()
        return W, b
    zero = (stats.max_a == 0) & (stats.min_a == 0)
    W, Q = _psd_solve(stats.AtA, stats.AtB, zero, rcond)
    if Q is not None:
        W = W - Q @ (Q.T @ W)
    return W, torch.zeros(stats.dim_b, dtype=_F64, device=stats.device)


def procrustes(stats: MatchingStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal Procrustes: ``A^T B = U S V^T`` (uncentred, thin SVD), ``W = U V^T``, no bias.

    When C1 != C2, W is semi-orthogonal: ``W^T W = I`` if C1 >= C2, ``W W^T = I`` otherwise.
    W maximises ``tr(W^T A^T B)`` over such maps; this minimises ``||A W - B||`` when
    ``C1 <= C2`` (then ``||A W|| = ||A||``), but for ``C1 > C2`` it is the usual formula rather
    than the exact least-squares optimum over semi-orthogonal maps (which has no closed form).
    """
    _check_ready(stats)
    U, _, Vh = torch.linalg.svd(stats.AtB, full_matrices=False)
    return U @ Vh, torch.zeros(stats.dim_b, dtype=_F64, device=stats.device)


def reduced_rank(stats: MatchingStatistics, rank: int, bias: bool = True,
                 rcond: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced-rank regression (paper 1 Sec. 4): ``W_k = W_ls V_k V_k^T``.

    ``V_k`` are the top-k right singular vectors of the fitted values, obtained as eigenvectors
    of their C2 x C2 Gram matrix computed from sufficient statistics.  With ``bias=True`` the
    fitted values are centred, ``(A - 1 mean_a) W_ls`` with Gram ``W_ls^T Cov_aa W_ls``, and the
    bias is refitted: ``b_k = mean_b - mean_a W_k``.  This is the optimal rank-k affine map with
    a free (full-rank) bias; the offset is not forced into the rank-k subspace.  With
    ``bias=False`` the uncentred ``A W_ls`` (Gram ``W_ls^T A^T A W_ls``) is used and b = 0.
    ``rank`` must be in 1..min(C1, C2); ``rank = min(C1, C2)`` reproduces least squares.
    """
    _check_ready(stats)
    kmax = min(stats.dim_a, stats.dim_b)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= kmax:
        raise MatchingError(
            f"rank must be an integer in [1, min(C1, C2)] = [1, {kmax}] (C1={stats.dim_a}, "
            f"C2={stats.dim_b}), got {rank!r}")
    W, _ = least_squares(stats, bias=bias, rcond=rcond)
    gram = W.T @ (stats.scatter_aa if bias else stats.AtA) @ W
    _, V = torch.linalg.eigh(0.5 * (gram + gram.T))  # ascending eigenvalues
    Vk = V[:, -int(rank):]
    Wk = (W @ Vk) @ Vk.T
    if bias:
        return Wk, stats.mean_b - stats.mean_a @ Wk
    return Wk, torch.zeros(stats.dim_b, dtype=_F64, device=stats.device)


def _soft(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(x) * (x.abs() - t).clamp_min(0)


def lasso(stats: MatchingStatistics, alpha: float, bias: bool = True, tol: float = 1e-6,
          max_iter: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """L1-penalised least squares with sklearn's normalisation:

        minimise  1/(2n) ||A W + 1 b - B||_F^2 + alpha ||W||_1      (b unpenalised)

    Each output column is an independent Lasso (identical to ``sklearn.linear_model.Lasso``
    with ``fit_intercept=bias``).  Solved by cyclic coordinate descent on the Gram matrix,
    vectorised over all output columns (one row of W per step).  The bias is eliminated by
    centring.  Stops when every column's duality gap is below ``tol * ||B_j - mean||^2`` (the
    sklearn criterion); warns if ``max_iter`` sweeps are not enough.  Coordinate descent is
    latency-bound (C1 small steps per sweep), so it runs on the CPU; results are returned on
    ``stats.device``.
    """
    _check_ready(stats)
    if alpha is None or not math.isfinite(float(alpha)) or float(alpha) < 0:
        raise MatchingError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if max_iter < 1 or not tol > 0:
        raise MatchingError(f"need max_iter >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    cpu = torch.device("cpu")
    G = (stats.scatter_aa if bias else stats.AtA).to(cpu)
    q = (stats.scatter_ab if bias else stats.AtB).to(cpu)
    y2 = (stats.scatter_bb if bias else stats.BtB).to(cpu).diagonal()
    lam = float(alpha) * stats.n  # sklearn scales the L1 weight by n_samples
    p, m = q.shape
    W = torch.zeros(p, m, dtype=_F64)
    H = torch.zeros(p, m, dtype=_F64)  # G @ W, kept up to date by rank-one updates
    diag = G.diagonal().tolist()
    active = [i for i in range(p) if diag[i] > 0]  # zero-variance channels keep w = 0
    thresh = tol * y2
    converged = False
    for _ in range(max_iter):
        for i in active:
            rho = q[i] - H[i] + diag[i] * W[i]
            new = _soft(rho, lam) / diag[i]
            delta = new - W[i]
            H.addr_(G[:, i], delta)
            W[i] = new
        H = G @ W  # refresh to stop rounding drift of the incremental updates
        if bool((_lasso_gap(W, H, q, y2, lam) <= thresh).all()):
            converged = True
            break
    if not converged:
        warnings.warn(f"lasso: coordinate descent did not reach tol={tol} in {max_iter} sweeps; "
                      "increase max_iter", RuntimeWarning, stacklevel=2)
    dev = stats.device
    W = W.to(dev)
    if bias:
        return W, stats.mean_b - stats.mean_a @ W
    return W, torch.zeros(stats.dim_b, dtype=_F64, device=dev)


def _lasso_gap(W, H, q, y2, lam) -> torch.Tensor:
    """Per-column duality gap of 0.5||y - Xw||^2 + lam ||w||_1 from Gram quantities (sklearn)."""
    XtR = q - H
    dual_norm = XtR.abs().amax(0)
    qw = (q * W).sum(0)
    r2_ = (y2 + (W * H).sum(0) - 2 * qw).clamp_min(0)
    const = torch.where(dual_norm > lam, lam / dual_norm.clamp_min(1e-300), torch.ones_like(dual_norm))
    gap = 0.5 * r2_ * (1 + const ** 2)
    return gap + lam * W.abs().sum(0) - const * y2 + const * qw


def _as_params(stats: MatchingStatistics, W, b) -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.as_tensor(W).to(device=stats.device, dtype=_F64)
    if W.shape != (stats.dim_a, stats.dim_b):
        raise MatchingError(f"W must have shape ({stats.dim_a}, {stats.dim_b}), got {tuple(W.shape)}")
    if b is None:
        b = torch.zeros(stats.dim_b, dtype=_F64, device=stats.device)
    b = torch.as_tensor(b).to(device=stats.device, dtype=_F64).reshape(-1)
    if b.shape != (stats.dim_b,):
        raise MatchingError(f"b must have {stats.dim_b} entries, got {tuple(b.shape)}")
    return W, b


def residual(stats: MatchingStatistics, W, b=None) -> torch.Tensor:
    """``||A W + 1 b - B||_F^2`` over all accumulated rows (0-d float64 tensor).

    Evaluated in centred form, ``tr(W^T C_aa W) - 2 tr(W^T C_ab) + tr(C_bb)
    + n ||mean_a W + b - mean_b||^2`` (the cross terms vanish), which avoids cancelling the
    large uncentred sums of offset activations.
    """
    _check_ready(stats, min_rows=1)
    W, b = _as_params(stats, W, b)
    centred = ((W * (stats.scatter_aa @ W)).sum() - 2 * (W * stats.scatter_ab).sum()
               + stats.scatter_bb.trace())
    offset = stats.mean_a @ W + b - stats.mean_b
    return (centred + stats.n * (offset @ offset)).clamp_min(0)


def relative_squared_error(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||S - B||_F^2 / ||B||_F^2`` over the rows given (float32 at least; a 0-d tensor): how far a stitched
    representation S = S(A) is from model 2's own B. The one formula behind three reported numbers: paper 1's
    R² is ``1 - `` it (``r2`` below, over every row, from the statistics; TLM's tracked ``r2`` over its probe
    batch), and paper 2's "DM structural score" (``dm_structural`` in records) is its mean over the test
    batches, as paper 2 defines it (``stitch/evaluation.py``)."""
    s, b = s.float(), b.float()
    return (s - b).pow(2).sum() / b.pow(2).sum().clamp_min(1e-30)


def r2(stats: MatchingStatistics, W, b=None) -> torch.Tensor:
    """``1 - ||A W + b - B||_F^2 / ||B||_F^2`` with the *uncentred* ``||B||_F^2 = tr(B^T B)``
    (paper 1, Def. 6.1): ``1 - relative_squared_error(A W + b, B)`` over every row, computed from the
    statistics without the rows.  Returns a 0-d float64 tensor."""
    res = residual(stats, W, b)
    total = stats.scatter_bb.trace() + stats.n * (stats.mean_b @ stats.mean_b)
    if float(total) == 0:
        raise MatchingError("r2 is undefined: B is identically zero")
    return 1 - res / total


def solve(stats: MatchingStatistics, kind: str = "ls", rank: int | None = None,
          alpha: float | None = None, bias: bool = True, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to a solver by name; returns float64 ``(W, b)`` on ``stats.device``.

    kind: ``"ls"`` (least squares), ``"procrustes"`` (orthogonal, never has a bias; ``bias`` is
    ignored), ``"rank"`` (needs ``rank``), ``"lasso"`` (needs ``alpha``).  Arguments that a kind
    does not use are ignored.  ``options`` go to the solver (``rcond`` for ls/rank,
    ``tol``/``max_iter`` for lasso).
    """
    if kind not in _SOLVERS:
        raise MatchingError(f"unknown direct matching kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if kind == "rank" and rank is None:
        raise MatchingError("kind='rank' needs rank=k (1 <= k <= min(C1, C2))")
    if kind == "lasso" and alpha is None:
        raise MatchingError("kind='lasso' needs alpha (the L1 weight, sklearn normalisation)")
    return _SOLVERS[kind](stats, rank=rank, alpha=alpha, bias=bias, **options)


# one entry per name of stitch.method_names.DIRECT_MATCHING_KINDS (the settings layer checks spellings there)
_SOLVERS = {
    "ls": lambda stats, rank, alpha, bias, **o: least_squares(stats, bias=bias, **o),
    "procrustes": lambda stats, rank, alpha, bias, **o: procrustes(stats, **o),  # never has a bias
    "rank": lambda stats, rank, alpha, bias, **o: reduced_rank(stats, rank, bias=bias, **o),
    "lasso": lambda stats, rank, alpha, bias, **o: lasso(stats, alpha, bias=bias, **o),
}
if tuple(_SOLVERS) != KINDS:
    raise ImportError(f"stitch.method_names.DIRECT_MATCHING_KINDS {KINDS} != implemented {tuple(_SOLVERS)}")
