"""Direct matching: sufficient statistics and closed-form solvers against float64 references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stitch.matching import (
    KINDS,
    MatchingStatistics,
    direct,
    lasso,
    least_squares,
    procrustes,
    r2,
    reduced_rank,
    residual,
    solve,
)


def _rel(x, ref) -> float:
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-300))


def _lstsq_ref(A, B, bias=True):
    X = np.c_[A, np.ones(len(A))] if bias else A
    M = np.linalg.lstsq(X, B, rcond=None)[0]
    return (M[:-1], M[-1]) if bias else (M, np.zeros(B.shape[1]))


def _data(n=2000, c1=12, c2=7, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, c1)) + offset
    B = A @ rng.standard_normal((c1, c2)) + 3.0 + 0.5 * rng.standard_normal((n, c2))
    return A, B


def _stats(A, B, **kw) -> MatchingStatistics:
    return MatchingStatistics(**kw).update(torch.as_tensor(A), torch.as_tensor(B))


# ---------------------------------------------------------------------------------------------
# Least squares
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_least_squares_matches_lstsq(bias):
    A, B = _data()
    W, b = direct(A, B, bias=bias)
    W_ref, b_ref = _lstsq_ref(A, B, bias)
    assert isinstance(W, np.ndarray) and W.dtype == np.float64 and W.shape == (12, 7)
    assert b.shape == (7,) and b.dtype == np.float64
    assert _rel(W, W_ref) < 1e-6 and _rel(b, b_ref) < 1e-6
    if not bias:
        assert np.all(b == 0)


def test_least_squares_offset_and_badly_scaled_channels():
    # Post-ReLU-like features with a large common offset and channel scales over 6 decades:
    # uncentred normal equations lose most digits here; the centred solve must not.
    rng = np.random.default_rng(1)
    n, c1, c2 = 4000, 10, 5
    Z = np.maximum(rng.standard_normal((n, c1)), 0)
    A = Z * np.logspace(-3, 3, c1) + 1e3
    B = np.maximum(rng.standard_normal((n, c2)), 0) + A @ rng.standard_normal((c1, c2)) * 1e-2 + 50
    W, b = direct(A, B)
    W_ref, b_ref = _lstsq_ref(A, B)
    assert _rel(W, W_ref) < 1e-6 and _rel(b, b_ref) < 1e-6
    # The naive uncentred float64 normal equations are visibly worse on the same data.
    X = np.c_[A, np.ones(n)]
    naive = np.linalg.solve(X.T @ X, X.T @ B)
    assert _rel(naive[:-1], W_ref) > 100 * _rel(W, W_ref)


@pytest.mark.parametrize("bias", [True, False])
def test_least_squares_rank_deficient_is_min_norm(bias):
    A, B = _data(n=1500, c1=10, c2=4, seed=2, offset=2.0)
    A[:, 1] = A[:, 0]                 # duplicated channel
    A[:, 2] = 3.5                     # constant (nonzero) channel: collinear with the bias
    A[:, 3] = A[:, 4] - 2.0 * A[:, 5]  # linear combination
    A[:, 6] = 0.0                     # dead channel
    W, b = direct(A, B, bias=bias)
    W_ref, b_ref = _lstsq_ref(A, B, bias)
    assert _rel(W, W_ref) < 1e-6 and _rel(b, b_ref) < 1e-6
    # Same as the explicit pseudo-inverse, the definition used in the papers.
    X = np.c_[A, np.ones(len(A))] if bias else A
    M = np.linalg.pinv(X) @ B
    assert _rel(W, M[:A.shape[1]]) < 1e-6
    if bias:
        assert _rel(b, M[-1]) < 1e-6


def test_least_squares_underdetermined_is_min_norm():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((8, 20)), rng.standard_normal((8, 3))
    W, b = direct(A, B)
    W_ref, b_ref = _lstsq_ref(A, B)
    assert _rel(W, W_ref) < 1e-6 and _rel(b, b_ref) < 1e-6
    assert np.allclose(A @ W + b, B, atol=1e-9)  # interpolates


def test_torch_in_torch_out_float32():
    A, B = _data(seed=4)
    At, Bt = torch.tensor(A, dtype=torch.float32), torch.tensor(B, dtype=torch.float32)
    W, b = direct(At, Bt)
    assert isinstance(W, torch.Tensor) and W.dtype == torch.float64 and b.dtype == torch.float64
    W_ref, b_ref = _lstsq_ref(At.double().numpy(), Bt.double().numpy())
    assert _rel(W.numpy(), W_ref) < 1e-6 and _rel(b.numpy(), b_ref) < 1e-6


# ---------------------------------------------------------------------------------------------
# Streaming, merging, layouts, dtypes, state
# ---------------------------------------------------------------------------------------------

def _assert_stats_close(s1: MatchingStatistics, s2: MatchingStatistics, rtol=1e-10):
    assert s1.n == s2.n
    for k in ("mean_a", "mean_b", "scatter_aa", "scatter_ab", "scatter_bb", "min_a", "max_a"):
        x, y = getattr(s1, k), getattr(s2, k)
        assert torch.allclose(x, y, rtol=rtol, atol=rtol * float(y.abs().max())), k


def test_streaming_many_chunks_equals_one_shot():
    A, B = _data(n=3001, offset=5.0, seed=5)
    one = _stats(A, B)
    many = MatchingStatistics(chunk_rows=7)  # tiny internal chunks, uneven batches
    edges = [0, 1, 2, 50, 999, 1000, 2500, 3001]
    for i, j in zip(edges[:-1], edges[1:]):
        many.update(torch.as_tensor(A[i:j]), torch.as_tensor(B[i:j]))
    _assert_stats_close(many, one)
    W1, b1 = least_squares(one)
    W2, b2 = least_squares(many)
    assert _rel(W2, W1) < 1e-9 and _rel(b2, b1) < 1e-9
    # The uncentred views agree with direct sums.
    assert np.allclose(many.AtA.numpy(), A.T @ A, rtol=1e-10)
    assert np.allclose(many.AtB.numpy(), A.T @ B, rtol=1e-10)
    assert np.allclose(many.BtB.numpy(), B.T @ B, rtol=1e-10)
    assert np.allclose(many.sum_a.numpy(), A.sum(0)) and np.allclose(many.sum_b.numpy(), B.sum(0))


def test_merge_equals_single_accumulation():
    A, B = _data(n=900, offset=-3.0, seed=6)
    single = _stats(A, B)
    parts = [_stats(A[i:j], B[i:j]) for i, j in [(0, 100), (100, 101), (101, 900)]]
    merged = MatchingStatistics()
    merged.merge(MatchingStatistics())  # merging an empty accumulator is a no-op
    for p in parts[::-1]:
        merged.merge(p)
    _assert_stats_close(merged, single)


def test_state_dict_roundtrip_and_to():
    A, B = _data(n=300, seed=7)
    s = _stats(A, B)
    sd = s.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values()) and int(sd["n"]) == 300
    s2 = MatchingStatistics.from_state_dict(sd)
    _assert_stats_close(s2, s, rtol=0)
    assert s2.to("cpu") is s2 and s2.device == torch.device("cpu")


def test_all_reduce_single_process(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    A, B = _data(n=200, seed=8)
    s = _stats(A, B)
    ref = s.copy()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        s.all_reduce()
    finally:
        dist.destroy_process_group()
    _assert_stats_close(s, ref, rtol=0)


def test_conv_and_token_layouts_equal_manual_rows():
    rng = np.random.default_rng(9)
    a = torch.tensor(rng.standard_normal((6, 5, 4, 3)))  # N x C1 x H x W
    b = torch.tensor(rng.standard_normal((6, 3, 4, 3)))  # N x C2 x H x W
    conv = MatchingStatistics(chunk_rows=10).update(a, b)
    rows = _stats(a.permute(0, 2, 3, 1).reshape(-1, 5), b.permute(0, 2, 3, 1).reshape(-1, 3))
    assert conv.n == 6 * 4 * 3
    _assert_stats_close(conv, rows)
    t_a, t_b = torch.tensor(rng.standard_normal((4, 7, 5))), torch.tensor(rng.standard_normal((4, 7, 2)))
    tok = MatchingStatistics().update(t_a, t_b)
    _assert_stats_close(tok, _stats(t_a.reshape(-1, 5), t_b.reshape(-1, 2)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input(dtype):
    A, B = _data(n=500, seed=10)
    a, b = torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype)
    s = MatchingStatistics().update(a, b)
    _assert_stats_close(s, _stats(a.double(), b.double()))
    W, bias = least_squares(s)
    W_ref, b_ref = _lstsq_ref(a.double().numpy(), b.double().numpy())
    assert W.dtype == torch.float64 and _rel(W, W_ref) < 1e-6 and _rel(bias, b_ref) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_statistics_match_cpu():
    A, B = _data(n=3000, seed=21, offset=10.0)
    a, b = torch.tensor(A, dtype=torch.float16), torch.tensor(B, dtype=torch.float16)
    gpu = MatchingStatistics(device="cuda", chunk_rows=1000).update(a.cuda(), b.cuda())
    cpu = MatchingStatistics().update(a, b)
    _assert_stats_close(gpu.copy().to("cpu"), cpu, rtol=1e-9)
    for kind, kw in [("ls", {}), ("procrustes", {}), ("rank", {"rank": 3}), ("lasso", {"alpha": 0.05})]:
        W, bias = solve(gpu, kind, **kw)
        assert W.device.type == "cuda" and bias.device.type == "cuda"
        W_cpu, _ = solve(cpu, kind, **kw)
        assert _rel(W.cpu(), W_cpu) < 1e-6
    # Statistics on the CPU fed from GPU tensors.
    mixed = MatchingStatistics(device="cpu").update(a.cuda(), b.cuda())
    _assert_stats_close(mixed, cpu, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Procrustes, reduced rank, lasso
# ---------------------------------------------------------------------------------------------

def test_procrustes_recovers_rotation():
    rng = np.random.default_rng(11)
    A = rng.standard_normal((400, 6))
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    W, b = direct(A, A @ Q, kind="procrustes")
    assert np.allclose(W, Q, atol=1e-10) and np.all(b == 0)
    assert np.allclose(W.T @ W, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("c1,c2", [(8, 5), (5, 8)])
def test_procrustes_semi_orthogonal(c1, c2):
    from scipy.linalg import orthogonal_procrustes

    rng = np.random.default_rng(12)
    A, B = rng.standard_normal((300, c1)) + 1.0, rng.standard_normal((300, c2))
    W, b = direct(A, B, kind="procrustes")
    assert W.shape == (c1, c2)
    k = min(c1, c2)
    assert np.allclose(W.T @ W if c1 >= c2 else W @ W.T, np.eye(k), atol=1e-12)
    if c1 == c2:
        assert np.allclose(W, orthogonal_procrustes(A, B)[0])
    # Maximises <A W, B> = tr(W^T A^T B) over semi-orthogonal maps (for C1 <= C2, where
    # ||A W|| = ||A|| is fixed, this is also the least-squares optimum).
    best_ip, best_res = np.sum((A @ W) * B), np.linalg.norm(A @ W - B)
    for _ in range(5):
        U, _, Vt = np.linalg.svd(rng.standard_normal((c1, c2)), full_matrices=False)
        assert best_ip >= np.sum((A @ (U @ Vt)) * B)
        if c1 <= c2:
            assert best_res <= np.linalg.norm(A @ (U @ Vt) - B)


def test_reduced_rank_full_equals_least_squares():
    A, B = _data(c1=9, c2=6, seed=13, offset=1.0)
    s = _stats(A, B)
    W, b = least_squares(s)
    Wk, bk = reduced_rank(s, 6)
    assert _rel(Wk, W) < 1e-8 and _rel(bk, b) < 1e-8


@pytest.mark.parametrize("bias", [True, False])
def test_reduced_rank_is_best_rank_k_fit(bias):
    A, B = _data(n=1200, c1=9, c2=6, seed=14, offset=2.0)
    k = 3
    Wk, bk = direct(A, B, kind="rank", rank=k, bias=bias)
    assert np.linalg.matrix_rank(Wk, tol=1e-8) == k
    W_ls, b_ls = _lstsq_ref(A, B, bias)
    # Reference: truncated SVD of the materialised fitted values (centred when there is a bias).
    Ac = A - A.mean(0) if bias else A
    U, S, Vt = np.linalg.svd(Ac @ W_ls, full_matrices=False)
    best = (U[:, :k] * S[:k]) @ Vt[:k]
    assert np.allclose(Ac @ Wk, best, atol=1e-8 * np.abs(best).max())
    assert _rel(Wk, W_ls @ Vt[:k].T @ Vt[:k]) < 1e-6
    if bias:
        assert np.allclose(bk, B.mean(0) - A.mean(0) @ Wk)
    else:
        assert np.all(bk == 0)
    # And it fits worse than full least squares but better than rank k - 1.
    res = lambda W, b: np.linalg.norm(A @ W + b - B) ** 2  # noqa: E731
    Wk1, bk1 = direct(A, B, kind="rank", rank=k - 1, bias=bias)
    assert res(W_ls, b_ls) <= res(Wk, bk) <= res(Wk1, bk1)


def test_lasso_matches_sklearn():
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(15)
    n, c1, c2 = 400, 10, 4
    A = np.maximum(rng.standard_normal((n, c1)), 0) * rng.uniform(0.5, 3, c1) + 2
    M = rng.standard_normal((c1, c2)) * (rng.random((c1, c2)) < 0.4)
    B = A @ M + 1 + 0.3 * rng.standard_normal((n, c2))
    for alpha in (0.01, 0.1):
        W, b = direct(A, B, kind="lasso", alpha=alpha, tol=1e-10)
        ref = Lasso(alpha=alpha, tol=1e-10, max_iter=100_000).fit(A, B)
        assert np.abs(W - ref.coef_.T).max() < 1e-4
        assert np.abs(b - ref.intercept_).max() < 1e-4
    assert (W == 0).sum() > 0  # sparse


def test_lasso_large_alpha_gives_zero():
    A, B = _data(n=300, seed=16)
    s = _stats(A, B)
    alpha_max = float(s.scatter_ab.abs().max()) / s.n  # smallest alpha with an all-zero solution
    W, b = lasso(s, 1.01 * alpha_max)
    assert torch.all(W == 0)
    assert torch.allclose(b, torch.tensor(B.mean(0)))
    W, _ = lasso(s, 0.9 * alpha_max)
    assert torch.any(W != 0)


# ---------------------------------------------------------------------------------------------
# Residual, R^2, dispatcher, errors
# ---------------------------------------------------------------------------------------------

def test_residual_and_r2_match_direct_computation():
    A, B = _data(n=700, seed=17, offset=4.0)
    s = _stats(A, B)
    rng = np.random.default_rng(18)
    for W, b in [least_squares(s), (rng.standard_normal((12, 7)), rng.standard_normal(7))]:
        W, b = np.asarray(W), np.asarray(b)
        res = np.linalg.norm(A @ W + b - B) ** 2
        assert abs(float(residual(s, W, b)) - res) <= 1e-9 * res
        assert abs(float(r2(s, W, b)) - (1 - res / np.linalg.norm(B) ** 2)) < 1e-10
    # No bias given means b = 0.
    W = rng.standard_normal((12, 7))
    assert np.isclose(float(residual(s, W)), np.linalg.norm(A @ W - B) ** 2, rtol=1e-10)


def test_solve_dispatch():
    A, B = _data(n=300, seed=19)
    s = _stats(A, B)
    assert KINDS == ("ls", "procrustes", "rank", "lasso")
    for (W1, b1), (W2, b2) in [
        (solve(s), least_squares(s)),
        (solve(s, "procrustes"), procrustes(s)),
        (solve(s, "rank", rank=2), reduced_rank(s, 2)),
        (solve(s, "lasso", alpha=0.1), lasso(s, 0.1)),
    ]:
        assert torch.equal(W1, W2) and torch.equal(b1, b2)


def test_errors():
    A, B = _data(n=50, seed=20)
    s = _stats(A, B)
    with pytest.raises(ValueError, match="unknown direct matching kind 'svd'.*ls, procrustes, rank, lasso"):
        solve(s, kind="svd")
    with pytest.raises(ValueError, match="kind='rank' needs rank"):
        solve(s, kind="rank")
    with pytest.raises(ValueError, match="kind='lasso' needs alpha"):
        solve(s, kind="lasso")
    for bad in (0, 8, 2.5):
        with pytest.raises(ValueError, match=r"rank must be an integer in \[1, min\(C1, C2\)\] = \[1, 7\]"):
            reduced_rank(s, bad)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        lasso(s, -1.0)
    with pytest.raises(ValueError, match="same number of rows"):
        direct(A, B[:-1])
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        A2 = A.copy()
        A2[3, 2] = np.nan
        direct(A2, B)
    with pytest.raises(ValueError, match="B contains NaN or Inf"):
        direct(torch.tensor(A), torch.tensor(B).index_fill(0, torch.tensor([0]), float("inf")))
    with pytest.raises(ValueError, match="too few rows.*at least 2 rows, got 1"):
        direct(A[:1], B[:1])
    with pytest.raises(ValueError, match="too few rows"):
        least_squares(MatchingStatistics(3, 2))
    with pytest.raises(ValueError, match="channel mismatch"):
        s.update(torch.zeros(4, 11), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="cannot merge"):
        s.merge(MatchingStatistics(3, 2))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        direct(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="W must have shape"):
        residual(s, np.zeros((7, 12)))


def test_r2_and_the_structural_score_share_one_formula():
    """Paper 1's R² (from the statistics, over every row) is 1 - relative_squared_error of the fitted S(A) and B,
    and relative_squared_error is ||S - B||² / ||B||² by hand."""
    import torch

    from stitch.matching import MatchingStatistics, r2, relative_squared_error, solve

    g = torch.Generator().manual_seed(3)
    A = torch.randn(200, 6, generator=g, dtype=torch.float64)
    B = A @ torch.randn(6, 4, generator=g, dtype=torch.float64) + 0.3 * torch.randn(200, 4, generator=g,
                                                                                     dtype=torch.float64) + 1.0
    stats = MatchingStatistics(6, 4).update(A, B)
    W, b = solve(stats, "ls")
    S = A @ W + b
    by_hand = float(((S - B) ** 2).sum() / (B ** 2).sum())
    assert float(relative_squared_error(S, B)) == pytest.approx(by_hand, rel=1e-5)
    assert float(r2(stats, W, b)) == pytest.approx(1 - by_hand, rel=1e-6)
