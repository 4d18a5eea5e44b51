"""Tests for stitch.similarity.

The first part is one generic suite driven by the declarations in ``INDICES``: every declared
invariance must hold, every undeclared one must visibly fail on suitable data, and the
declared identical value / symmetry / range must hold. The second part checks values against
hand computations and independent numpy/scipy references, and the error handling.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import scipy.linalg
import torch

from stitch import similarity as sim
from stitch.similarity import INDICES

NAMES = sorted(INDICES)
INVARIANCES = ("orthogonal", "isotropic_scaling", "translation", "permutation", "invertible_linear")
CENTRING = [n for n in NAMES if INDICES[n].invariant_translation]  # indices that centre columns
CCA_FAMILY = [n for n in NAMES if INDICES[n].needs_n_greater_than_p]
INVARIANCE_TOL = 1e-8
CHANGE_MIN = 1e-3  # an undeclared invariance must move the value at least this much


# --------------------------------------------------------------------------------------
# Data and transforms
# --------------------------------------------------------------------------------------
def random_orthogonal(p: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(p, p)))
    return q * np.sign(np.diag(r))  # sign fix: Haar-distributed


def random_invertible(p: int, rng: np.random.Generator) -> np.ndarray:
    """Well-conditioned (cond = 30) but strongly anisotropic invertible map."""
    return random_orthogonal(p, rng) @ np.diag(np.logspace(-0.75, 0.75, p)) @ random_orthogonal(p, rng)


def transform(kind: str, A: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = A.shape[1]
    if kind == "orthogonal":
        return A @ random_orthogonal(p, rng)
    if kind == "isotropic_scaling":
        return 3.7 * A
    if kind == "translation":
        return A + rng.normal(scale=3.0, size=(1, p))
    if kind == "permutation":
        return A[:, rng.permutation(p)]
    if kind == "invertible_linear":
        return A @ random_invertible(p, rng)
    raise AssertionError(kind)


def related_pair(seed: int = 0, n: int = 300, p1: int = 10, p2: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Two noisy views of a shared latent, with decaying spectra and uneven column scales.

    Uneven spectra make the undeclared invariances visible (e.g. SVCCA's truncation and
    PWCCA's weights react to anisotropic maps), and partial correlation keeps every index
    away from its extreme values.
    """
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 5))
    X = (Z @ rng.normal(size=(5, p1)) + 0.6 * rng.normal(size=(n, p1))) * np.logspace(0, -1.2, p1)
    Y = (Z[:, :4] @ rng.normal(size=(4, p2)) + 0.8 * rng.normal(size=(n, p2))) * np.logspace(0, -1.0, p2)
    return X + 0.5, Y - 1.0  # non-zero means, so translation matters for r2


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return related_pair()


# --------------------------------------------------------------------------------------
# Declaration-driven generic suite
# --------------------------------------------------------------------------------------
def test_registry_declarations_are_complete():
    assert set(NAMES) >= {"cka", "cka_debiased", "cca", "svcca", "pwcca", "r2", "opd"}
    for name, idx in INDICES.items():
        assert idx.name == name
        assert idx.kind in ("similarity", "distance")
        assert idx.identical_value == (1.0 if idx.kind == "similarity" else 0.0)
        lo, hi = idx.value_range
        assert lo <= idx.identical_value <= hi
        for inv in INVARIANCES:
            assert isinstance(getattr(idx, f"invariant_{inv}"), bool)
        # frozen dataclass
        with pytest.raises(Exception):
            idx.symmetric = not idx.symmetric  # type: ignore[misc]


@pytest.mark.parametrize("invariance", INVARIANCES)
@pytest.mark.parametrize("name", NAMES)
def test_declared_invariances(name, invariance, pair):
    """Invariant: unchanged when either side alone is transformed. Not invariant: changes."""
    idx = INDICES[name]
    X, Y = pair
    base = idx(X, Y)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{invariance}".encode()))
    changes = []
    for trial in range(2):  # two random draws of the transform
        changes.append(abs(idx(X, transform(invariance, Y, rng)) - base))
        changes.append(abs(idx(transform(invariance, X, rng), Y) - base))
    if getattr(idx, f"invariant_{invariance}"):
        assert max(changes) < INVARIANCE_TOL, (name, invariance, changes)
    else:
        assert max(changes) > CHANGE_MIN, (name, invariance, changes)


def test_pwcca_invariance_is_one_sided(pair):
    """PWCCA is invariant to invertible linear maps of Y, not of X (weights come from X)."""
    X, Y = pair
    rng = np.random.default_rng(5)
    base = sim.pwcca(X, Y)
    assert sim.pwcca(X, Y @ random_invertible(Y.shape[1], rng)) == pytest.approx(base, abs=INVARIANCE_TOL)
    assert abs(sim.pwcca(X @ random_invertible(X.shape[1], rng), Y) - base) > CHANGE_MIN
    assert abs(sim.pwcca(X @ random_orthogonal(X.shape[1], rng), Y) - base) > CHANGE_MIN


def test_r2_invariant_to_invertible_maps_of_x_only(pair):
    X, Y = pair
    rng = np.random.default_rng(6)
    base = sim.r2(X, Y)
    assert sim.r2(X @ random_invertible(X.shape[1], rng), Y) == pytest.approx(base, abs=INVARIANCE_TOL)
    assert abs(sim.r2(X, Y @ random_invertible(Y.shape[1], rng)) - base) > CHANGE_MIN


@pytest.mark.parametrize("name", NAMES)
def test_self_similarity_is_identical_value(name, pair):
    idx = INDICES[name]
    for A in pair:
        assert idx(A, A) == pytest.approx(idx.identical_value, abs=1e-10)
        assert idx(A, A.copy()) == pytest.approx(idx.identical_value, abs=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_symmetry_as_declared(name, pair):
    idx = INDICES[name]
    X, Y = pair
    if idx.symmetric:
        assert idx(X, Y) == pytest.approx(idx(Y, X), abs=1e-10)
    else:
        assert abs(idx(X, Y) - idx(Y, X)) > CHANGE_MIN


@pytest.mark.parametrize("name", NAMES)
def test_values_within_declared_range(name):
    idx = INDICES[name]
    lo, hi = idx.value_range
    rng = np.random.default_rng(7)
    n = 60
    cases = [related_pair(seed=s, n=n) for s in range(3)]
    cases += [(rng.normal(size=(n, 5)), rng.normal(size=(n, 3))) for _ in range(3)]  # independent
    cases += [(rng.normal(size=(n, 4)), -rng.normal(size=(n, 4)) ** 3)]
    X = rng.normal(size=(n, 6))
    cases += [(X, X[:, :2]), (X[:, :1], X)]  # nested subspaces
    for X, Y in cases:
        for v in (idx(X, Y), idx(Y, X)):
            assert isinstance(v, float)
            assert math.isfinite(v)
            assert lo <= v <= hi, (name, v)
    # within the range, the value carries information: every related pair is rated more similar than every
    # independent one (a constant, or an index with its direction declared the wrong way, fails here)
    related = [idx(X, Y) for X, Y in cases[:3]]
    independent = [idx(X, Y) for X, Y in cases[3:6]]
    if idx.higher_is_more_similar:
        assert min(related) > max(independent), (name, related, independent)
    else:
        assert max(related) < min(independent), (name, related, independent)


@pytest.mark.parametrize("name", NAMES)
def test_torch_numpy_and_float32_agree(name, pair):
    """Torch/numpy inputs give the same value; float32 inputs are computed in float64."""
    idx = INDICES[name]
    X, Y = (a.astype(np.float32) for a in pair)
    expected = idx(X.astype(np.float64), Y.astype(np.float64))  # float64 on the float32 values
    assert idx(torch.from_numpy(X), torch.from_numpy(Y)) == pytest.approx(expected, abs=1e-12)
    assert idx(X, Y) == pytest.approx(expected, abs=1e-12)
    assert idx(torch.from_numpy(X), Y) == pytest.approx(expected, abs=1e-12)
    assert idx(torch.from_numpy(X).requires_grad_(), Y.tolist()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_extreme_scales_are_finite_and_consistent(name, pair):
    """Huge/tiny magnitudes must not under/overflow into NaN or a different value."""
    idx = INDICES[name]
    X, Y = pair
    base = idx(X, Y)
    for scale in (1e-150, 1e150):
        assert idx(X * scale, Y * scale) == pytest.approx(base, abs=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_rank_deficient_inputs_give_finite_values(name, pair):
    idx = INDICES[name]
    X, Y = pair
    Xd = np.hstack([X, X[:, :3], X[:, :2] @ np.ones((2, 1))])  # duplicated / dependent columns
    v = idx(Xd, Y)
    assert math.isfinite(v)
    if idx.invariant_invertible_linear or name == "r2":
        # Only the column space matters for these: redundancy changes nothing.
        assert v == pytest.approx(idx(X, Y), abs=1e-8)
    Xi = np.round(X * 3).astype(np.int64)  # integer input
    assert math.isfinite(idx(Xi, Y))


# --------------------------------------------------------------------------------------
# Degenerate inputs: clear ValueError, never NaN
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_malformed_inputs_raise(name):
    idx = INDICES[name]
    rng = np.random.default_rng(8)
    X = rng.normal(size=(40, 3))
    Y = rng.normal(size=(40, 2))
    cases = [
        ((X, Y[:39]), "same number of rows"),
        ((X[:, 0], Y), "2-D"),
        ((X, Y.reshape(40, 2, 1)), "2-D"),
        ((np.zeros((40, 0)), Y), "empty"),
        ((np.where(np.arange(120).reshape(40, 3) == 5, np.nan, X), Y), "NaN or inf"),
        ((X, np.where(np.arange(80).reshape(40, 2) == 7, np.inf, Y)), "NaN or inf"),
        ((torch.full((40, 3), float("nan")), Y), "NaN or inf"),
        ((X[:1], Y[:1]), "samples"),
        ((X + 1j, Y), "complex"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            idx(*args)


@pytest.mark.parametrize("name", NAMES)
def test_constant_columns(name):
    """Centring indices drop constant columns, and raise if all are constant."""
    idx = INDICES[name]
    rng = np.random.default_rng(9)
    X = rng.normal(size=(50, 3))
    Y = X @ rng.normal(size=(3, 4)) + rng.normal(size=(50, 4))
    Xk = np.hstack([X, np.full((50, 1), 0.1), np.full((50, 1), 7.0)])
    if name in CENTRING:
        assert idx(Xk, Y) == pytest.approx(idx(X, Y), abs=1e-12)
        for args, which in (((np.full((50, 3), 2.5), Y), "X"), ((X, np.ones((50, 4))), "Y")):
            with pytest.raises(ValueError, match=f"columns of {which} are constant"):
                idx(*args)
    else:  # no centring: constants are ordinary data (a constant column acts as a bias)
        assert math.isfinite(idx(Xk, Y))
        assert math.isfinite(idx(np.full((50, 3), 2.5), Y))


@pytest.mark.parametrize("name", CCA_FAMILY)
def test_cca_family_rejects_too_few_samples(name):
    rng = np.random.default_rng(10)
    X = rng.normal(size=(20, 19))
    Y = rng.normal(size=(20, 3))
    for args in ((X, Y), (Y, X)):
        with pytest.raises(ValueError, match=r"n=20 samples and p=19"):
            INDICES[name](*args)
    # p = n - 2 is the widest accepted shape
    assert math.isfinite(INDICES[name](X[:, :18], Y))
    # constant columns do not count towards p
    Xk = np.hstack([X[:, :5], np.ones((20, 30))])
    assert math.isfinite(INDICES[name](Xk, Y))


@pytest.mark.parametrize("name", [n for n in NAMES if not INDICES[n].needs_n_greater_than_p])
def test_wide_inputs_accepted(name):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(15, 40))
    v = INDICES[name](X, X @ rng.normal(size=(40, 60)))
    assert math.isfinite(v)


def test_specific_error_messages():
    rng = np.random.default_rng(12)
    X = rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match="at least 4 samples"):
        sim.cka(X, X, debiased=True)
    assert math.isfinite(sim.cka(X, X))
    with pytest.raises(ValueError, match="Y is all zeros"):
        sim.r2(rng.normal(size=(10, 2)), np.zeros((10, 3)))
    assert sim.r2(np.zeros((10, 2)), rng.normal(size=(10, 3))) == 0.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"variance must be in \(0, 1\]"):
            sim.svcca(rng.normal(size=(30, 3)), rng.normal(size=(30, 3)), variance=bad)
    with pytest.raises(ValueError, match="method must be"):
        sim.cka(X, X, method="kernel")


def test_registry_lookup_and_compute_all(pair):
    X, Y = pair
    assert sim.get("cka") is INDICES["cka"]
    assert sim.get("CKA-Debiased") is INDICES["cka_debiased"]
    with pytest.raises(ValueError, match="valid names: .*cka.*opd"):
        sim.get("mutual_information")
    allv = sim.compute_all(X, Y)
    assert set(allv) == set(NAMES)
    for name, v in allv.items():
        assert v == pytest.approx(INDICES[name](X, Y), abs=1e-12)
    assert set(sim.compute_all(torch.from_numpy(X), Y, names=["opd", "cka"])) == {"opd", "cka"}
    with pytest.raises(ValueError, match="unknown similarity index"):
        sim.compute_all(X, Y, names=["nope"])
    with pytest.raises(ValueError, match="n=15 samples"):  # errors propagate, no NaN entries
        sim.compute_all(np.random.default_rng(0).normal(size=(15, 40)), Y[:15])


# --------------------------------------------------------------------------------------
# Hand-computed values and independent references
# --------------------------------------------------------------------------------------
def test_hand_computed_single_columns():
    """x = [1,2,3,4], y = [1,3,2,4]: centred dot 4, centred norms^2 5 -> Pearson r = 0.8."""
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [3.0], [2.0], [4.0]])
    assert sim.cka(x, y) == pytest.approx(0.64, abs=1e-12)  # r^2
    for fn in (sim.cca, sim.svcca, sim.pwcca):
        assert fn(x, y) == pytest.approx(0.8, abs=1e-12)  # |r|
    assert sim.opd(x, y) == pytest.approx(2 - 2 * 0.8, abs=1e-12)
    # No centring: <x,y> = 29, ||x||^2 = ||y||^2 = 30 -> R^2 = 29^2 / (30 * 30).
    assert sim.r2(x, y) == pytest.approx(841 / 900, abs=1e-12)
    assert sim.r2(y, x) == pytest.approx(841 / 900, abs=1e-12)


def _centre(A):
    return A - A.mean(axis=0)


def _ref_cka_gram(X, Y):
    K = _centre(X) @ _centre(X).T
    L = _centre(Y) @ _centre(Y).T
    return np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))


def _ref_cka_feature(X, Y):
    Xc, Yc = _centre(X), _centre(Y)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


def _ref_hsic_unbiased(K, L):
    """Song et al. (2012) estimator, literally, on *uncentred* linear kernels."""
    n = K.shape[0]
    K = K - np.diag(np.diag(K))
    L = L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ K @ L @ one
    ) / (n * (n - 3))


def _ref_cka_debiased(X, Y):
    K, L = X @ X.T, Y @ Y.T
    return _ref_hsic_unbiased(K, L) / np.sqrt(_ref_hsic_unbiased(K, K) * _ref_hsic_unbiased(L, L))


def test_cka_matches_references_in_both_forms(pair):
    X, Y = pair  # n = 300 > p: feature-space path
    assert sim.cka(X, Y) == pytest.approx(_ref_cka_gram(X, Y), abs=1e-12)
    assert sim.cka(X, Y, method="gram") == pytest.approx(sim.cka(X, Y, method="feature"), abs=1e-12)
    rng = np.random.default_rng(13)
    W = rng.normal(size=(20, 120))  # n = 20 < p: Gram path (flattened conv layers)
    Xw = rng.normal(size=(20, 80))
    Yw = Xw @ rng.normal(size=(80, 120)) * 0.1 + rng.normal(size=(20, 120)) + W[0]
    assert sim.cka(Xw, Yw) == pytest.approx(_ref_cka_feature(Xw, Yw), abs=1e-12)
    assert sim.cka(Xw, Yw, method="feature") == pytest.approx(sim.cka(Xw, Yw, method="gram"), abs=1e-12)


def test_differentiable_cka_equals_cka_and_has_gradients():
    """linear_cka_torch (TLM's penalty and tracking) is the same index as cka, in float32 and with autograd."""
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [3.0], [2.0], [4.0]])
    assert float(sim.linear_cka_torch(torch.tensor(x), torch.tensor(y))) == pytest.approx(0.64, abs=1e-6)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(16, 4, 3, 3, generator=g, requires_grad=True)  # flattened per sample, as CKA on conv maps
    b = torch.randn(16, 6, 3, 3, generator=g) + a.detach()[:, :1]
    value = sim.linear_cka_torch(a, b)
    assert float(value.detach()) == pytest.approx(sim.cka(sim.flatten(a), sim.flatten(b)), abs=1e-5)
    value.backward()
    assert a.grad is not None and bool(torch.isfinite(a.grad).all()) and float(a.grad.abs().sum()) > 0


def test_debiased_cka_matches_song_estimator(pair):
    X, Y = pair
    X, Y = X[:40], Y[:40]
    expected = _ref_cka_debiased(X, Y)  # also checks translation invariance of the estimator
    assert sim.cka(X, Y, debiased=True) == pytest.approx(expected, abs=1e-10)
    assert sim.cka(X, Y, debiased=True, method="gram") == pytest.approx(expected, abs=1e-10)
    x = np.array([[1.0], [2.0], [3.0], [4.0], [6.0]])
    y = np.array([[1.0], [3.0], [2.0], [4.0], [5.0]])
    assert sim.cka(x, y, debiased=True) == pytest.approx(_ref_cka_debiased(x, y), abs=1e-12)


def test_cka_of_independent_data_is_near_zero():
    rng = np.random.default_rng(14)
    X = rng.normal(size=(4000, 5))
    Y = rng.normal(size=(4000, 4))
    assert sim.cka(X, Y) < 0.01
    assert abs(sim.cka(X, Y, debiased=True)) < 0.01
    assert sim.cca(X, Y) < 0.05
    assert sim.opd(X, Y) > 1.8


def _ref_canonical_correlations(X, Y):
    return np.sort(np.cos(scipy.linalg.subspace_angles(_centre(X), _centre(Y))))[::-1]


def test_cca_matches_subspace_angles(pair):
    X, Y = pair
    expected = _ref_canonical_correlations(X, Y)
    got = sim.canonical_correlations(X, Y).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)
    assert sim.cca(X, Y) == pytest.approx(expected.mean(), abs=1e-10)


def test_cca_of_invertible_linear_image_is_one(pair):
    X, _ = pair
    rng = np.random.default_rng(15)
    A = rng.normal(size=(X.shape[1], X.shape[1]))
    assert sim.cca(X, X @ A + 4.0) == pytest.approx(1.0, abs=1e-10)
    # Y spans a 3-D subspace of span(X): the 3 canonical correlations are all 1.
    assert sim.cca(X, X @ rng.normal(size=(X.shape[1], 3))) == pytest.approx(1.0, abs=1e-10)


def _ref_pwcca(X, Y):
    """Textbook CCA via whitening (Sxx^-1/2 Sxy Syy^-1/2), then Morcos et al. weights."""
    Xc, Yc = _centre(X), _centre(Y)
    Sxx, Syy, Sxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    Wx = np.linalg.inv(scipy.linalg.sqrtm(Sxx).real)
    Wy = np.linalg.inv(scipy.linalg.sqrtm(Syy).real)
    u, rho, _ = np.linalg.svd(Wx @ Sxy @ Wy, full_matrices=False)
    H = Xc @ (Wx @ u)  # canonical variates of X, unit norm by construction
    H /= np.linalg.norm(H, axis=0)
    alpha = np.abs(H.T @ Xc).sum(axis=1)
    return float(np.sum(alpha / alpha.sum() * rho))


def test_pwcca_matches_reference(pair):
    X, Y = pair
    assert sim.pwcca(X, Y) == pytest.approx(_ref_pwcca(X, Y), abs=1e-8)
    assert sim.pwcca(Y, X) == pytest.approx(_ref_pwcca(Y, X), abs=1e-8)
    # weighted by X and using only min(p1, p2) correlations, it differs from plain CCA
    assert abs(sim.pwcca(X, Y) - sim.cca(X, Y)) > CHANGE_MIN


def _ref_svcca(X, Y, variance):
    bases = []
    for A in (X, Y):
        u, s, _ = np.linalg.svd(_centre(A), full_matrices=False)
        ratio = np.cumsum(s**2) / np.sum(s**2)
        k = next(i + 1 for i, r in enumerate(ratio) if r >= variance - 1e-12)
        bases.append(u[:, :k])
    return float(np.mean(np.cos(scipy.linalg.subspace_angles(*bases))))


def test_svcca_keeps_enough_components():
    """Known spectra. X: variances 100, 10, 1, 0.01 (cumulative 0.9008, 0.9909, 0.99991, 1);
    Y: variances 50, 5, 0.001 (cumulative 0.9091, 0.99998, 1).

    At 99% X must keep two components (not one, the known benchmark bug), at 99.99% three.
    """
    rng = np.random.default_rng(16)
    n = 400
    sx = np.linalg.qr(_centre(rng.normal(size=(n, 4))))[0]  # orthonormal, centred scores
    sy = np.linalg.qr(_centre(sx[:, :3] @ rng.normal(size=(3, 3)) + 0.1 * rng.normal(size=(n, 3))))[0]
    X = sx * np.sqrt([100.0, 10.0, 1.0, 0.01]) @ random_orthogonal(4, rng)
    Y = sy * np.sqrt([50.0, 5.0, 0.001]) @ random_orthogonal(3, rng) + 2.0
    for variance, kx, ky in ((0.5, 1, 1), (0.99, 2, 2), (0.9999, 3, 2), (1.0, 4, 3)):
        expected = float(np.mean(np.cos(scipy.linalg.subspace_angles(sx[:, :kx], sy[:, :ky]))))
        assert sim.svcca(X, Y, variance=variance) == pytest.approx(expected, abs=1e-10), variance
    assert sim.svcca(X, Y, variance=1.0) == pytest.approx(sim.cca(X, Y), abs=1e-10)


def test_svcca_matches_reference(pair):
    X, Y = pair
    for variance in (0.9, 0.99):
        assert sim.svcca(X, Y, variance=variance) == pytest.approx(_ref_svcca(X, Y, variance), abs=1e-10)


def test_r2_matches_lstsq(pair):
    X, Y = pair
    M = np.linalg.pinv(X) @ Y
    expected = 1 - np.linalg.norm(X @ M - Y) ** 2 / np.linalg.norm(Y) ** 2
    assert sim.r2(X, Y) == pytest.approx(expected, abs=1e-12)


def _ref_opd(X, Y):
    Xc, Yc = _centre(X), _centre(Y)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    nuc = scipy.linalg.svd(Xc.T @ Yc, compute_uv=False).sum()
    return np.linalg.norm(Xc) ** 2 + np.linalg.norm(Yc) ** 2 - 2 * nuc


def test_opd_matches_reference_and_procrustes(pair):
    X, Y = pair
    assert sim.opd(X, Y) == pytest.approx(_ref_opd(X, Y), abs=1e-12)
    # equals the residual of the best orthogonal alignment (Y zero-padded to X's width)
    Xc, Yc = _centre(X), _centre(Y)
    Xc, Yc = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    Yp = np.hstack([Yc, np.zeros((Yc.shape[0], Xc.shape[1] - Yc.shape[1]))])
    R, _ = scipy.linalg.orthogonal_procrustes(Xc, Yp)
    assert sim.opd(X, Y) == pytest.approx(np.linalg.norm(Xc @ R - Yp) ** 2, abs=1e-10)
    # wide inputs go through the QR reduction
    rng = np.random.default_rng(17)
    Xw, Yw = rng.normal(size=(12, 50)), rng.normal(size=(12, 70))
    assert sim.opd(Xw, Yw) == pytest.approx(_ref_opd(Xw, Yw), abs=1e-12)
    assert sim.opd(Xw, Xw[:, :30]) == pytest.approx(_ref_opd(Xw, Xw[:, :30]), abs=1e-12)


# --------------------------------------------------------------------------------------
# Reshaping helpers and devices
# --------------------------------------------------------------------------------------
def test_conv_to_rows_and_flatten():
    act = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    rows = sim.conv_to_rows(act)
    assert rows.shape == (2 * 4 * 5, 3)
    n, h, w = 1, 2, 3
    assert torch.equal(rows[n * 20 + h * 5 + w], act[n, :, h, w])
    np.testing.assert_array_equal(sim.conv_to_rows(act.numpy()), rows.numpy())
    tokens = np.arange(2 * 6 * 4).reshape(2, 6, 4)
    trows = sim.conv_to_rows(tokens)
    assert trows.shape == (12, 4) and np.array_equal(trows[1 * 6 + 2], tokens[1, 2])
    assert sim.conv_to_rows(rows) is rows
    assert sim.flatten(act).shape == (2, 60)
    assert torch.equal(sim.flatten(act)[1], act[1].reshape(-1))
    assert sim.flatten(act.numpy()).shape == (2, 60)
    for bad in (torch.zeros(3), torch.zeros(1, 2, 3, 4, 5)):
        with pytest.raises(ValueError, match="expects N x C x H x W, N x T x D or N x D"):
            sim.conv_to_rows(bad)
    with pytest.raises(ValueError, match="at least 2-D"):
        sim.flatten(np.zeros(4))


def test_rows_round_trip():
    """from_rows undoes to_rows for conv maps, tokens and plain rows, torch and numpy alike."""
    from stitch.activations import from_rows, to_rows

    for shape in ((2, 3, 4, 5), (2, 6, 4), (7, 3)):
        act = torch.randn(*shape)
        back = from_rows(to_rows(act), act)
        assert torch.equal(back, act) and back.is_contiguous()
        np.testing.assert_array_equal(from_rows(to_rows(act.numpy()), act.numpy()), act.numpy())
    act = torch.randn(2, 3, 4, 5)
    mapped = from_rows(to_rows(act) * 2, act)  # rows edited (e.g. a 1x1 map) come back in place
    assert torch.equal(mapped, act * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_inputs_match_cpu(name, pair):
    X, Y = pair
    expected = INDICES[name](X, Y)
    Xg = torch.from_numpy(X).float().cuda()
    Yg = torch.from_numpy(Y).float().cuda()
    assert INDICES[name](Xg, Yg) == pytest.approx(INDICES[name](Xg.cpu(), Yg.cpu()), abs=1e-9)
    assert INDICES[name](Xg, Y) == pytest.approx(expected, abs=1e-5)
