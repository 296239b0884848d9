"""The full four-point vertex V of N ≥ 3 inputs (components with three and four distinct
samples) on the batched route: the conditional rule for products of one-variable factors
against the plain nested rule it replaces, against an independent Gauss–Hermite quadrature of
one layer step, and the symmetric storage against the dense array."""
import numpy as np
import pytest

import derive
from derive.activations import gaussian
from derive.base.errors import DeriveError
from derive.numeric.evaluate import SymmetricTensor, orbits, iterate_mlp
from derive.numeric.prediction import plan_work


def _inputs(N, n0=3, seed=0):
    return np.random.default_rng(seed).standard_normal((N, n0))


def _both_routes(spec, X, monkeypatch):
    """V of every layer by the conditional rule and by the plain nested rule (the slow route).
    ReLU's averages are exact by orthant moments (tests/test_moments_exact.py); here they are
    sent to the quadrature, whose two rules are compared (other kinked σ use them)."""
    with monkeypatch.context() as m:
        m.setattr(gaussian, "_ORTHANT", False)
        fast = iterate_mlp(spec, X, 1, targets=("K", "V"))
        m.setattr(gaussian, "_CONDITIONAL", False)
        slow = iterate_mlp(spec, X, 1, targets=("K", "V"))
    return fast, slow


def _agree(fast, slow, depth):
    # each route states the largest error of an average relative to max(1, |average|); V is
    # C_W² times sums of such averages (and of V of the layer before, times O(1) factors)
    err = max(fast["error"], slow["error"], 1e-9)
    for l in range(2, depth + 1):
        a, b = fast["V"][l], slow["V"][l]
        scale = max(1.0, float(np.max(np.abs(b))))
        assert np.max(np.abs(a - b)) <= 50 * err * scale, (l, np.max(np.abs(a - b)), err)


@pytest.mark.parametrize("N", [3, 4])
def test_tanh_full_vertex_agrees_with_the_nested_rule(N, monkeypatch):
    spec = derive.MLP(3, 64, "tanh", 0.1, 1.0)
    fast, slow = _both_routes(spec, _inputs(N), monkeypatch)
    _agree(fast, slow, 3)
    assert np.max(np.abs(fast["V"][3])) > 1e-3  # not a comparison of zeros


def test_relu_full_vertex_agrees_with_the_nested_rule_three_inputs(monkeypatch):
    spec = derive.MLP(3, 64, "relu", 0.0, 2.0)
    fast, slow = _both_routes(spec, _inputs(3), monkeypatch)
    _agree(fast, slow, 3)


@pytest.mark.slow
def test_relu_full_vertex_agrees_with_the_nested_rule_four_inputs(monkeypatch):
    spec = derive.MLP(3, 64, "relu", 0.0, 2.0)
    fast, slow = _both_routes(spec, _inputs(4), monkeypatch)
    _agree(fast, slow, 3)


def _erf_product(K, idx, points=100):
    """⟨Π_k erf(z_{idx_k})⟩ for z ~ N(0, K), written here independently of derive's quadrature:
    the last distinct sample (which must occur once in idx) given the others is Gaussian with
    mean b·z and variance s², and ⟨erf(m + s η)⟩ = erf(m / √(1 + 2 s²)); the others by a
    tensor-product Gauss–Hermite rule in the eigenbasis of their covariance."""
    from scipy.special import erf

    distinct = list(dict.fromkeys(idx))
    last, outer = distinct[-1], distinct[:-1]
    assert list(idx).count(last) == 1
    Ko = K[np.ix_(outer, outer)]
    b = np.linalg.solve(Ko, K[outer, last])
    s2 = K[last, last] - K[outer, last] @ b
    x, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / np.sqrt(2 * np.pi)
    m = len(outer)
    lam, U = np.linalg.eigh(Ko)
    A = U * np.sqrt(lam)
    T = np.stack(np.meshgrid(*([x] * m), indexing="ij")).reshape(m, -1)
    W = np.prod(np.stack(np.meshgrid(*([w] * m), indexing="ij")).reshape(m, -1), axis=0)
    Z = A @ T
    vals = erf((b @ Z) / np.sqrt(1 + 2 * s2))
    for k, a in enumerate(outer):
        vals = vals * erf(Z[k]) ** list(idx).count(a)
    return float(np.sum(W * vals))


@pytest.mark.parametrize("tol", [None, 1e-10])
def test_one_layer_step_against_an_independent_gauss_hermite_quadrature(tol):
    """V^{(2)} from K^{(1)} (V^{(1)} = 0): C_W² [⟨σσσσ⟩ − ⟨σσ⟩⟨σσ⟩] (THEORY §4, written here
    for checking) for erf at components with four and with three distinct samples; by default
    within the route's stated error, with tol=1e-10 to 1e-9."""
    Cb, Cw = 0.1, 1.0
    X = _inputs(4, n0=5, seed=3)
    spec = derive.MLP(2, 64, "erf", Cb, Cw)
    res = iterate_mlp(spec, X, 1, targets=("K", "V"), tol=tol)
    K1 = Cb + Cw * X @ X.T / X.shape[1]
    np.testing.assert_allclose(res["K"][1], K1, rtol=1e-14)
    bound = 1e-9 if tol else 2 * max(res["error"], 1e-12)
    for comp in [(0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2), (0, 0, 1, 2), (1, 2, 0, 0), (0, 1, 0, 2)]:
        a, b, c, d = comp
        four = _erf_product(K1, _once_last(comp))
        two = _erf_pair(K1, a, b) * _erf_pair(K1, c, d)
        want = Cw ** 2 * (four - two)
        got = res["V"][2][comp]
        assert abs(got - want) <= bound * max(1.0, abs(want)), (comp, got, want, bound)
    assert abs(res["V"][2][0, 1, 2, 3]) > 1e-3  # not a comparison of zeros


def _once_last(comp):
    """comp reordered so that a sample occurring once comes last (the product is symmetric)."""
    once = [a for a in comp if list(comp).count(a) == 1]
    rest = list(comp)
    rest.remove(once[-1])
    return tuple(rest) + (once[-1],)


def _erf_pair(K, u, v):
    """⟨erf(z_u) erf(z_v)⟩ (u = v: ⟨erf²⟩) by a 1-D Gauss–Hermite rule."""
    from scipy.special import erf

    if u != v:
        return _erf_product(K, (u, v), 200)
    x, w = np.polynomial.hermite_e.hermegauss(200)
    return float(np.sum(w / np.sqrt(2 * np.pi) * erf(np.sqrt(K[u, u]) * x) ** 2))


@pytest.fixture(scope="module")
def both_storages():
    spec = derive.MLP(3, 64, "tanh", 0.1, 1.0)
    X = _inputs(5, seed=1)
    dense = derive.predict(spec, X, targets=["K", "V"])
    sym = derive.predict(spec, X, targets=["K", "V"], dense=False)
    return dense, sym


def test_symmetric_storage_indexes_like_the_dense_array(both_storages):
    dense, sym = both_storages
    for l in (2, 3):
        D, S = dense.V[l], sym.V[l]
        assert isinstance(S, SymmetricTensor) and isinstance(D, np.ndarray)
        assert S.shape == D.shape == (5, 5, 5, 5)
        np.testing.assert_array_equal(np.asarray(S), D)
        np.testing.assert_array_equal(S.dense(), D)
        for idx in [(1, 2, 3, 4), (4, 3, 2, 1), (0, Ellipsis), (slice(None), 2, 3, 4),
                    (slice(1, 4), slice(None, None, 2), 1, -1), (..., 0),
                    (np.arange(5), np.arange(5), np.arange(5), np.arange(5)),
                    (np.array([[0], [1]]), np.array([2, 3, 4]), 1 + np.zeros(3, int), np.array([4, 4, 4])),
                    (np.arange(3), slice(None), 1, 2)]:
            np.testing.assert_array_equal(S[idx], D[idx])
        assert S.nbytes < D.nbytes / 2
    assert sym.expansion == dense.expansion


def test_symmetric_storage_refuses_bad_indices(both_storages):
    _, sym = both_storages
    S = sym.V[3]
    with pytest.raises(DeriveError, match="out of range"):
        S[5, 0, 0, 0]
    with pytest.raises(DeriveError, match="too many"):
        S[0, 0, 0, 0, 0]
    with pytest.raises(DeriveError, match="integers"):
        S[np.array([0.5]), np.array([0]), np.array([0]), np.array([0])]


def test_symmetric_tensor_refuses_components_not_computed():
    N = 4
    C = orbits(N, "pairs", "pairs")
    t = SymmetricTensor(N, "pairs", C, np.arange(len(C), dtype=float))
    assert t[0, 1, 1, 0] == t[1, 0, 0, 1]
    with pytest.raises(DeriveError, match="not computed"):
        t[0, 1, 2, 3]
    assert np.isnan(t.dense()[0, 1, 2, 3])


def test_dense_must_be_a_bool():
    spec = derive.MLP(2, 64, "tanh", 0.1, 1.0)
    with pytest.raises(DeriveError, match="dense must be True or False"):
        derive.predict(spec, _inputs(3), targets=["K", "V"], dense="no")


def test_plan_work_estimates_and_refusals():
    spec = derive.MLP(5, 64, "tanh", 0.1, 1.0)
    said = []
    assert plan_work(spec, 10, ("K", "V"), said.append) == "batched"
    assert "4-D averages" in said[0]
    with pytest.raises(DeriveError, match="not practical"):
        plan_work(spec, 140, ("K", "V"), dense=False)    # about 15 million 4-D averages a layer
    # N⁴ memory: dense refused sooner than the symmetric storage, which the advice names
    deep = derive.MLP(2, 64, "tanh", 0.1, 1.0)
    with pytest.raises(DeriveError, match="dense=False"):
        plan_work(deep, 200, ("K", "V"))
